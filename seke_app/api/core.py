"""The NinjaAPI instance: authentication, roles, JSON errors, and where routers mount.

Every answer, errors included, is JSON. An error is ``{"detail": "..."}``, a
sentence a person can act on; a request that fails validation also lists each
problem under ``"errors"`` and writes nothing. Requests authenticate with a token
(``Authorization: Bearer seke_...``) or, for the interactive docs in a signed-in
browser, with the session (and its CSRF token on anything that writes).

Endpoints live beside each stage's views (``seke_app/datasets/api.py``, ...) as
ninja ``Router`` objects; ``ROUTERS`` below mounts them under ``/api/v1/``. The
schema is ``/api/openapi.json`` and the docs ``/api/docs``, served from the
installed django-ninja package (its Swagger UI files are static files here, so the
page works offline).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth

from seke_app.api.tokens import token_user
from seke_app.roles import ADMINS, ANNOTATORS, is_admin, is_annotator

logger = logging.getLogger("seke.api")

API_VERSION = "1"

NO_TOKEN = (
    "Sign in to the API with a token: send the header 'Authorization: Bearer seke_...'."
    " Make a token on your account page (/account/) or with"
    " 'python manage.py api_token create USERNAME --name NAME'."
)


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``, for a token made on the account page."""

    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        return token_user(token)


class BrowserSession(SessionAuth):
    """A signed-in browser's session (the docs page's "Try it out")."""

    def authenticate(self, request: HttpRequest, key: str | None) -> User | None:
        user = request.user
        if isinstance(user, User) and user.is_active:
            return user
        return None


api = NinjaAPI(
    title="SEKE API",
    version=API_VERSION,
    description=(
        "Datasets, images, generation runs, review, prompt versions, exports and"
        " quality certificates of a SEKE server. Authenticate with"
        " `Authorization: Bearer <token>`; make a token on your account page."
    ),
    auth=[TokenAuth(), BrowserSession()],
    urls_namespace="api",
    openapi_url="/openapi.json",
    docs_url="/docs",
)


class ErrorOut(Schema):
    detail: str


def api_user(request: HttpRequest) -> User:
    """The user an authenticated request acts for."""
    user = request.auth  # type: ignore[attr-defined]
    assert isinstance(user, User)
    return user


def require_admin(request: HttpRequest) -> User:
    """The request's user, who must be an admin (HTTP 403 otherwise)."""
    user = api_user(request)
    if not is_admin(user):
        raise HttpError(403, f"Only admins may do this; ask an admin to add you to {ADMINS!r}.")
    return user


def require_annotator(request: HttpRequest) -> User:
    """The request's user, who must be an annotator or an admin (HTTP 403 otherwise)."""
    user = api_user(request)
    if not is_annotator(user):
        raise HttpError(
            403,
            f"Your account has no role; ask an admin to add you to {ANNOTATORS!r} or"
            f" {ADMINS!r}.",
        )
    return user


def _problem(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "payload"))
    message = str(error.get("msg", "is not valid"))
    return f"{where}: {message}" if where else message


def _validation_error(request: HttpRequest, exc: Any) -> HttpResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors
    ]
    detail = "The request is not valid, and nothing was changed: " + "; ".join(
        _problem(e) for e in exc.errors
    )
    return api.create_response(request, {"detail": detail, "errors": errors}, status=422)


def _authentication_error(request: HttpRequest, exc: Any) -> HttpResponse:
    return api.create_response(request, {"detail": NO_TOKEN}, status=401)


def _http_error(request: HttpRequest, exc: Any) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc)}, status=exc.status_code)


def _not_found(request: HttpRequest, exc: Any) -> HttpResponse:
    detail = str(exc) if str(exc) and "matches the given query" not in str(exc) else ""
    return api.create_response(
        request, {"detail": detail or "No such object; check its code."}, status=404
    )


def _forbidden(request: HttpRequest, exc: Any) -> HttpResponse:
    return api.create_response(
        request, {"detail": str(exc) or "Your role does not allow this."}, status=403
    )


def _server_error(request: HttpRequest, exc: Any) -> HttpResponse:
    logger.exception("API request %s %s failed", request.method, request.path)
    return api.create_response(
        request,
        {"detail": "SEKE failed to answer this request; the error is in the server's log."},
        status=500,
    )


# ninja types a handler's exception as "the class or an instance"; each gets an instance.
api.add_exception_handler(ValidationError, _validation_error)
api.add_exception_handler(AuthenticationError, _authentication_error)
api.add_exception_handler(HttpError, _http_error)
api.add_exception_handler(Http404, _not_found)
api.add_exception_handler(PermissionDenied, _forbidden)
api.add_exception_handler(Exception, _server_error)


class MeOut(Schema):
    username: str
    roles: list[str]


@api.get("/v1/me", response=MeOut, tags=["account"], summary="Who the token belongs to")
def me(request: HttpRequest) -> dict[str, Any]:
    user = api_user(request)
    roles = [r for r, ok in (("admin", is_admin(user)), ("annotator", is_annotator(user))) if ok]
    return {"username": user.username, "roles": roles}


# (prefix, "module:attribute") of each stage's router, mounted under /api/v1/.
ROUTERS: list[tuple[str, str]] = []


def _mount() -> None:
    for prefix, target in ROUTERS:
        module, attribute = target.split(":")
        api.add_router(f"/v1/{prefix}", getattr(importlib.import_module(module), attribute))


_mount()


def not_found_view(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/: a JSON 404 rather than the HTML page."""
    return api.create_response(
        request,
        {"detail": f"There is no API endpoint at {request.path}; see /api/docs."},
        status=404,
    )
