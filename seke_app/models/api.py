"""Per-user API tokens: what a script signs in to ``/api/`` with.

A token is shown once, when it is made; SEKE keeps only its SHA-256 digest and its
first characters (so that a list can tell tokens apart). A token is random enough
(256 bits) that a plain digest is as safe as a slow password hash, and it lets a
request find its token with one indexed lookup.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for, in a few words.")
    # The token's first characters ("seke_" and 8 more), shown in lists.
    prefix = models.CharField(max_length=20)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
