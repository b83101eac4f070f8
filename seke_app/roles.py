"""The two roles: annotators review; admins also import, run, export and configure."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase

ANNOTATORS = "annotators"
ADMINS = "admins"

View = TypeVar("View", bound=Callable[..., HttpResponseBase])


def _groups(user: AbstractBaseUser | AnonymousUser) -> set[str]:
    if not isinstance(user, User):
        return set()
    # Cached on the user object: templates and views ask several times per request.
    cached: set[str] | None = getattr(user, "_seke_groups", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))
        user._seke_groups = cached  # type: ignore[attr-defined]
    return cached


def request_user(request: HttpRequest) -> User:
    """The signed-in user of a view behind ``login_required`` (typed for the views)."""
    assert isinstance(request.user, User)
    return request.user


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return isinstance(user, User) and (user.is_superuser or ADMINS in _groups(user))


def is_annotator(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Anyone who may review: annotators and admins."""
    return is_admin(user) or ANNOTATORS in _groups(user)


def _role_required(check: Callable[[Any], bool]) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not check(request.user):
                raise PermissionDenied("Your role does not allow this page.")
            return view(request, *args, **kwargs)

        return login_required(wrapped)  # type: ignore[return-value]

    return decorator


admin_required = _role_required(is_admin)
annotator_required = _role_required(is_annotator)
