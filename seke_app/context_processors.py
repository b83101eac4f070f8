from __future__ import annotations

from django.http import HttpRequest

from seke_app.roles import is_admin, is_annotator


def roles(request: HttpRequest) -> dict[str, bool]:
    return {"is_admin": is_admin(request.user), "is_annotator": is_annotator(request.user)}
