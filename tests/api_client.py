"""Helpers for the API tests: a token for a user, and a client that sends it."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import User
from django.test import Client

from seke_app.api.tokens import token_create


class ApiClient:
    """Django's test client with a user's API token on every request (or none)."""

    def __init__(self, user: User | None) -> None:
        self.client = Client()
        self.headers: dict[str, str] = {}
        if user is not None:
            secret = token_create(user=user, name="tests").secret
            self.headers["Authorization"] = f"Bearer {secret}"

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params, headers=self.headers)

    def post(self, path: str, body: Any = None, **extra: Any) -> Any:
        return self.client.post(
            path,
            json.dumps(body if body is not None else {}),
            content_type="application/json",
            headers=self.headers,
            **extra,
        )

    def delete(self, path: str) -> Any:
        return self.client.delete(path, headers=self.headers)

    def patch(self, path: str, body: Any) -> Any:
        return self.client.patch(
            path, json.dumps(body), content_type="application/json", headers=self.headers
        )
