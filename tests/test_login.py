"""Log-in throttling: wrong passwords in a row lock the log-in out for a while."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client
from django.test.client import RequestFactory
from django.urls import reverse

from seke_app.roles import lockout_response
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def log_in(client: Client, username: str, password: str) -> int:
    response = client.post(reverse("login"), {"username": username, "password": password})
    return response.status_code


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def lock_out(client: Client, username: str) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, username, "wrong password") == 200
    response = client.post(reverse("login"), {"username": username, "password": "wrong"})
    assert response.status_code == 429
    assert "Too many wrong passwords" in response.content.decode()


def move_back(delta: timedelta) -> None:
    """Move every recorded failure ``delta`` into the past, as time passing would."""
    for attempt in AccessAttempt.objects.all():
        attempt.attempt_time -= delta
        attempt.save(update_fields=["attempt_time"])


def let_the_cooloff_pass() -> None:
    move_back(settings.AXES_COOLOFF_TIME + timedelta(seconds=1))


def test_it_locks_out_at_the_failure_limit_even_with_the_right_password(
    annotator: User,
) -> None:
    client = Client()
    lock_out(client, annotator.username)
    response = client.post(reverse("login"), {"username": annotator.username, "password": PASSWORD})
    assert response.status_code == 429
    page = " ".join(response.content.decode().split())
    assert "blocked for 15 minutes after the last attempt" in page
    # The page is still the login form, ready for after the cool-off.
    assert 'name="password"' in page
    assert not signed_in(client)


def test_it_lets_the_right_password_in_after_the_cooloff(annotator: User) -> None:
    client = Client()
    lock_out(client, annotator.username)
    let_the_cooloff_pass()
    assert log_in(client, annotator.username, PASSWORD) == 302
    assert signed_in(client)


def test_it_starts_the_cooloff_again_on_an_attempt_during_it(annotator: User) -> None:
    client = Client()
    lock_out(client, annotator.username)
    move_back(settings.AXES_COOLOFF_TIME - timedelta(minutes=1))
    assert log_in(client, annotator.username, PASSWORD) == 429
    # The cool-off has passed since the first lockout, but not since the last attempt.
    move_back(timedelta(minutes=2))
    assert log_in(client, annotator.username, PASSWORD) == 429
    let_the_cooloff_pass()
    assert log_in(client, annotator.username, PASSWORD) == 302


def test_it_forgets_failures_after_a_successful_log_in(annotator: User) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, annotator.username, "wrong password") == 200
    assert log_in(client, annotator.username, PASSWORD) == 302
    other = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(other, annotator.username, "wrong password") == 200
    assert log_in(other, annotator.username, PASSWORD) == 302


def test_it_does_not_lock_out_another_user_from_the_same_address(
    annotator: User, teammate: User
) -> None:
    lock_out(Client(), annotator.username)
    client = Client()
    assert log_in(client, teammate.username, PASSWORD) == 302


def test_it_throttles_the_django_admin_log_in_too(admin_user: User) -> None:
    client = Client()
    url = reverse("admin:login")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(url, {"username": admin_user.username, "password": "wrong password"})
    response = client.post(url, {"username": admin_user.username, "password": PASSWORD})
    assert response.status_code == 429
    assert not signed_in(client)


def test_it_keeps_the_next_page_and_user_name_on_the_lockout_page() -> None:
    request = RequestFactory().post(
        "/login/", {"username": "<b>ann</b>", "next": "/review/", "password": "x"}
    )
    request.user = AnonymousUser()
    page = lockout_response(request, None, {"username": "<b>ann</b>"}).content.decode()
    assert 'value="/review/"' in page
    assert "&lt;b&gt;ann&lt;/b&gt;" in page
    assert "<b>ann</b>" not in page
