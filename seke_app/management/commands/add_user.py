"""``manage.py add_user NAME --role admin|annotator``.

The password comes from the first of: ``--password-stdin`` (one line read from a
pipe), ``--password``, ``$SEKE_NEW_PASSWORD``, or a prompt on the terminal. Without
a terminal there is nobody to prompt, so the command says how to pass the password
instead of failing on the end of its input. The password must pass the validators
in ``AUTH_PASSWORD_VALIDATORS``; a refused one is reported with their reasons and
no user is created.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from seke_app.roles import ROLES, user_create

NO_TERMINAL = (
    "no password given, and no terminal to ask for one on: pipe it in with"
    " --password-stdin (printf '%s\\n' \"$PASSWORD\" | python manage.py add_user NAME"
    " --role ROLE --password-stdin) or set SEKE_NEW_PASSWORD"
)


def _stdin_is_a_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # A closed standard input.
        return False


class Command(BaseCommand):
    help = "Create a user in one of SEKE's roles (admin or annotator)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=sorted(ROLES), required=True)
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input (for scripts)",
        )
        parser.add_argument(
            "--password",
            help="the password (other users of this machine can see it in the process"
            " list: prefer --password-stdin); default: $SEKE_NEW_PASSWORD, or asked for"
            " on the terminal",
        )
        parser.add_argument("--email", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        password = self._password(
            username=options["username"],
            given=options["password"],
            from_stdin=options["password_stdin"],
        )
        try:
            user = user_create(
                username=options["username"],
                password=password,
                role=options["role"],
                email=options["email"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"created {options['role']} {user.username}"))

    def _password(self, *, username: str, given: str | None, from_stdin: bool) -> str:
        if from_stdin:
            if given:
                raise CommandError("give the password one way: --password or --password-stdin")
            password = sys.stdin.readline().rstrip("\r\n") if sys.stdin else ""
            if not password:
                raise CommandError("--password-stdin read no password: standard input was empty")
            return password
        password = given or os.environ.get("SEKE_NEW_PASSWORD", "")
        if password:
            return password
        if not _stdin_is_a_terminal():
            raise CommandError(NO_TERMINAL)
        return self._ask(username)

    def _ask(self, username: str) -> str:
        try:
            password = getpass.getpass(f"Password for {username}: ")
            again = getpass.getpass("The same password again: ")
        except (EOFError, KeyboardInterrupt):
            raise CommandError("cancelled: no password was entered") from None
        if not password:
            raise CommandError("no password was entered")
        if password != again:
            raise CommandError("the two passwords differ; nothing was created")
        return password
