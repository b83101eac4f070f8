from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from seke_app.roles import is_admin, is_annotator


def roles(request: HttpRequest) -> dict[str, bool]:
    # A request refused before the authentication middleware ran (a CSRF failure
    # page, say) has no user yet.
    user = getattr(request, "user", None) or AnonymousUser()
    return {"is_admin": is_admin(user), "is_annotator": is_annotator(user)}
