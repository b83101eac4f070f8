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
from collections.abc import Callable
from typing import Any, Literal

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import TextChoices
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth
from pydantic import WithJsonSchema

from seke_app.api.tokens import token_user
from seke_app.roles import ADMINS, ANNOTATORS, is_admin, is_annotator

logger = logging.getLogger("seke.api")

API_VERSION = "1"

NO_TOKEN = (
    "Sign in to the API with a token: send the header 'Authorization: Bearer seke_...'."
    " Make a token on your account page (/account/) or with"
    " 'python manage.py api_token create USERNAME --name NAME'."
)


Role = Literal["any", "annotator", "admin"]

_ROLE_CHECKS: dict[str, tuple[Callable[[User], bool], str]] = {
    "annotator": (
        is_annotator,
        f"Your account has no role; ask an admin to add you to {ANNOTATORS!r} or {ADMINS!r}.",
    ),
    "admin": (is_admin, f"Only admins may do this; ask an admin to add you to {ADMINS!r}."),
}


def _with_role(user: User | None, role: Role) -> User | None:
    """``user`` if it may act in ``role``; HTTP 403 for a signed-in user who may not.

    Checked during authentication, so that a refusal comes before the request body is
    read: a caller without the role learns that, not what was wrong with the body.
    """
    if user is None or role == "any":
        return user
    check, refusal = _ROLE_CHECKS[role]
    if not check(user):
        raise HttpError(403, refusal)
    return user


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``, for a token made on the account page."""

    def __init__(self, role: Role) -> None:
        super().__init__()
        self.role: Role = role

    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        return _with_role(token_user(token), self.role)


class BrowserSession(SessionAuth):
    """A signed-in browser's session (the docs page's "Try it out"), CSRF-checked."""

    def __init__(self, role: Role) -> None:
        super().__init__()
        self.role: Role = role

    def authenticate(self, request: HttpRequest, key: str | None) -> User | None:
        user = request.user
        if isinstance(user, User) and user.is_active:
            return _with_role(user, self.role)
        return None


def signed_in(role: Role) -> list[Any]:
    """The ``auth`` of an endpoint or router that ``role`` may use: "any" signed-in
    user, every "annotator" (admins included), or "admin" only."""
    return [TokenAuth(role), BrowserSession(role)]


ANY_USER = signed_in("any")
ANNOTATORS_ONLY = signed_in("annotator")
ADMINS_ONLY = signed_in("admin")


api = NinjaAPI(
    title="SEKE API",
    version=API_VERSION,
    description=(
        "Datasets, images, generation runs, review, prompt versions, exports and"
        " quality certificates of a SEKE server. Authenticate with"
        " `Authorization: Bearer <token>`; make a token on your account page."
    ),
    # Every endpoint needs a role unless it says otherwise (``auth=ADMINS_ONLY``, ...).
    auth=ANNOTATORS_ONLY,
    urls_namespace="api",
    openapi_url="/openapi.json",
    docs_url="/docs",
)


def choices_schema(choices: type[TextChoices], title: str) -> WithJsonSchema:
    """The schema of a field typed with a model's choices, inline and titled.

    Without it every model's ``Status`` class would become one schema component
    called "Status", and the schema would document one model's values for all.
    Use as ``Annotated[GenerationRun.Status, choices_schema(GenerationRun.Status, ...)]``.
    """
    return WithJsonSchema({"type": "string", "enum": list(choices.values), "title": title})


class ErrorOut(Schema):
    detail: str


def api_user(request: HttpRequest) -> User:
    """The user an authenticated request acts for."""
    user = request.auth  # type: ignore[attr-defined]
    assert isinstance(user, User)
    return user


def require_admin(request: HttpRequest) -> User:
    """The request's user, who must be an admin (HTTP 403 otherwise); for an endpoint
    open to annotators where only some requests are for admins."""
    user = _with_role(api_user(request), "admin")
    assert user is not None
    return user


def refused(status: int, exc: Exception) -> HttpError:
    """A service's refusal (RunRefused, ExportRefused, ...) as an HTTP error whose detail
    is the service's message, written as a sentence."""
    message = str(exc).strip()
    message = message[:1].upper() + message[1:]
    return HttpError(status, message if message.endswith((".", "!", "?")) else f"{message}.")


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


@api.get("/v1/me", response=MeOut, auth=ANY_USER, tags=["account"], summary="Who the token is of")
def me(request: HttpRequest) -> dict[str, Any]:
    user = api_user(request)
    roles = [r for r, ok in (("admin", is_admin(user)), ("annotator", is_annotator(user))) if ok]
    return {"username": user.username, "roles": roles}


# (prefix, "module:attribute") of each stage's router, mounted under /api/v1/.
ROUTERS: list[tuple[str, str]] = [
    ("runs", "seke_app.runs.api:router"),
    ("prompt-versions", "review.feedback.api:router"),
    ("review", "review.tasks.api:router"),
    ("exports", "seke_app.exports.api:router"),
    ("datasets", "seke_app.datasets.api:router"),
    ("imports", "seke_app.datasets.api:imports_router"),
    ("images", "seke_app.datasets.images_api:router"),
    # Beside the runs' own router: ninja joins both at one prefix (their paths differ).
    ("runs", "seke_app.insights.api:router"),
    ("webhooks", "seke_app.webhooks.api:router"),
]


_mounted = False


def mounted_api() -> NinjaAPI:
    """``api`` with every router of ``ROUTERS`` added (once), for the URLconf.

    Mounting waits until the URLconf asks, so that a router module may import this
    one (for ``ADMINS_ONLY`` and the rest) in any order.
    """
    global _mounted
    if not _mounted:
        for prefix, target in ROUTERS:
            module, attribute = target.split(":")
            api.add_router(f"/v1/{prefix}", getattr(importlib.import_module(module), attribute))
        _mounted = True
    return api


def not_found_view(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/: a JSON 404 rather than the HTML page."""
    return api.create_response(
        request,
        {"detail": f"There is no API endpoint at {request.path}; see /api/docs."},
        status=404,
    )
