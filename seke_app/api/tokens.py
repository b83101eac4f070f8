"""API tokens: make one (shown once), find the user a request's token belongs to, revoke.

A token reads ``seke_`` followed by 43 URL-safe characters (256 random bits).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from seke_app.models import ApiToken

TOKEN_PREFIX = "seke_"
# Shown in lists: "seke_" and the first 8 random characters.
SHOWN_CHARACTERS = len(TOKEN_PREFIX) + 8
# ``last_used_at`` is written at most this often per token, so that a script's
# stream of requests does not turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_TOKENS_PER_USER = 50


class TokenRefused(Exception):
    """A token cannot be made or revoked; the message says why."""


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    # The whole token, which SEKE never shows again.
    secret: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def token_create(*, user: User, name: str) -> NewToken:
    name = name.strip()
    if not name:
        raise TokenRefused("give the token a name that says what it is for")
    if len(name) > ApiToken._meta.get_field("name").max_length:  # type: ignore[operator]
        raise TokenRefused("a token's name has at most 100 characters")
    if not user.is_active:
        raise TokenRefused(f"user {user.username!r} is inactive")
    active = ApiToken.objects.filter(user=user, revoked_at__isnull=True).count()
    if active >= MAX_TOKENS_PER_USER:
        raise TokenRefused(
            f"{user.username!r} already has {active} active tokens; revoke one first"
        )
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=secret[:SHOWN_CHARACTERS], digest=digest(secret)
    )
    return NewToken(token=token, secret=secret)


def token_user(secret: str) -> User | None:
    """The active user whose active token ``secret`` is, noting when it was last used."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=digest(secret), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token.user


def token_revoke(*, token: ApiToken) -> None:
    """Revoke ``token`` from now on; revoking a revoked token changes nothing."""
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db(fields=["revoked_at"])
