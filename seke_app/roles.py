"""The two roles: annotators review; admins also import, run, export and configure.

Users are created in one of them with ``user_create``; ``lockout_response`` is the
login page shown after too many wrong passwords.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render

ANNOTATORS = "annotators"
ADMINS = "admins"
ROLES = {"admin": ADMINS, "annotator": ANNOTATORS}

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


@transaction.atomic
def user_create(*, username: str, password: str, role: str, email: str = "") -> User:
    """A new user in ``role`` ("admin" or "annotator"); admins may use the Django admin.

    The password must pass the validators configured in ``AUTH_PASSWORD_VALIDATORS``
    (``create_user`` alone does not run them); a refusal names every reason.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if User.objects.filter(username=username).exists():
        raise ValueError(f"a user called {username!r} already exists")
    try:
        # An unsaved user, so that the similarity check compares against the name and e-mail.
        validate_password(password, user=User(username=username, email=email))
    except ValidationError as exc:
        raise ValueError("password refused: " + " ".join(exc.messages)) from None
    user = User.objects.create_user(username, email, password, is_staff=role == "admin")
    # get_or_create: the data migration makes the groups, but a flushed test
    # database (transactional tests) has lost them.
    user.groups.add(Group.objects.get_or_create(name=ROLES[role])[0])
    return user


# django-axes calls this (AXES_LOCKOUT_CALLABLE) in place of its own plain-text
# reply, so that a person who is locked out after too many wrong passwords sees
# the login page again, saying why and for how long, with the status 429 (Too
# Many Requests) that scripts and proxies understand.
def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """The login page with the lockout message, for a request axes has refused."""
    cooloff: timedelta = settings.AXES_COOLOFF_TIME
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    context = {
        "form": AuthenticationForm(request, initial={"username": username}),
        "locked_out": True,
        "cooloff_minutes": math.ceil(cooloff.total_seconds() / 60),
        "next": request.POST.get("next") or request.GET.get("next", ""),
    }
    return render(request, "registration/login.html", context, status=429)
