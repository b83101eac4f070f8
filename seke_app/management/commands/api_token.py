"""``manage.py api_token create|list|revoke``: API tokens from the command line.

``create USERNAME --name NAME`` prints the new token once, alone on standard output
(so that a script can capture it); ``list USERNAME`` shows a user's tokens;
``revoke USERNAME PREFIX`` revokes the token that starts with PREFIX.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from seke_app.api.tokens import TokenRefused, token_create, token_revoke
from seke_app.models import ApiToken


class Command(BaseCommand):
    help = "Make, list or revoke a user's API tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="make a token and print it once")
        create.add_argument("username")
        create.add_argument("--name", required=True, help="what the token is for")
        listing = actions.add_parser("list", help="list a user's tokens")
        listing.add_argument("username")
        revoke = actions.add_parser("revoke", help="revoke a token by its first characters")
        revoke.add_argument("username")
        revoke.add_argument("prefix", help="the token's first characters, as listed")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = User.objects.get(username=options["username"])
        except User.DoesNotExist:
            raise CommandError(f"no user called {options['username']!r}") from None
        action = options["action"]
        if action == "create":
            try:
                made = token_create(user=user, name=options["name"])
            except TokenRefused as exc:
                raise CommandError(str(exc)) from None
            self.stderr.write(
                f"Token {made.token.name!r} for {user.username}; it is shown only now:"
            )
            self.stdout.write(made.secret)
        elif action == "list":
            for token in ApiToken.objects.filter(user=user):
                revoked, used = token.revoked_at, token.last_used_at
                state = f"revoked {revoked:%Y-%m-%d %H:%M}" if revoked else "active"
                used_text = f"{used:%Y-%m-%d %H:%M}" if used else "never"
                self.stdout.write(f"{token.prefix}…  {token.name}  last used {used_text}  {state}")
        else:
            prefix = options["prefix"].rstrip("…")
            active = ApiToken.objects.filter(user=user, revoked_at__isnull=True)
            # The listed prefix, or the whole token.
            matches = [
                t for t in active if t.prefix.startswith(prefix) or prefix.startswith(t.prefix)
            ]
            if len(matches) != 1:
                raise CommandError(
                    f"{len(matches)} active tokens of {user.username} start with {prefix!r};"
                    " give the prefix that 'api_token list' shows"
                )
            token_revoke(token=matches[0])
            self.stdout.write(f"revoked {matches[0].prefix}… ({matches[0].name})")
