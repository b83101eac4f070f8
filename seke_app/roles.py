"""The two roles: annotators review; admins also import, run, export and configure."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

ANNOTATORS = "annotators"
ADMINS = "admins"

View = TypeVar("View", bound=Callable[..., HttpResponse])


def _groups(user: AbstractBaseUser | AnonymousUser) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached: set[str] | None = getattr(user, "_seke_groups", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))  # type: ignore[union-attr]
        user._seke_groups = cached  # type: ignore[union-attr]
    return cached


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or ADMINS in _groups(user)))


def is_annotator(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Anyone who may review: annotators and admins."""
    return is_admin(user) or ANNOTATORS in _groups(user)


def _role_required(check: Callable[[Any], bool]) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not check(request.user):
                raise PermissionDenied("Your role does not allow this page.")
            return view(request, *args, **kwargs)

        return login_required(wrapped)  # type: ignore[return-value]

    return decorator


admin_required = _role_required(is_admin)
annotator_required = _role_required(is_annotator)
