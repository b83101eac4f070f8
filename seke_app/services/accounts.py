"""Creating users in one of the two roles."""

from __future__ import annotations

from django.contrib.auth.models import Group, User
from django.db import transaction

from seke_app.roles import ADMINS, ANNOTATORS

ROLES = {"admin": ADMINS, "annotator": ANNOTATORS}


@transaction.atomic
def user_create(*, username: str, password: str, role: str, email: str = "") -> User:
    """A new user in ``role`` ("admin" or "annotator"); admins may use the Django admin."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if User.objects.filter(username=username).exists():
        raise ValueError(f"a user called {username!r} already exists")
    user = User.objects.create_user(username, email, password, is_staff=role == "admin")
    # get_or_create: the data migration makes the groups, but a flushed test
    # database (transactional tests) has lost them.
    user.groups.add(Group.objects.get_or_create(name=ROLES[role])[0])
    return user
