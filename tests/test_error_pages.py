"""Errors look like pages of the product: styled, with navigation and a reason; a
favicon; "AU vocabulary" spelled so."""

from __future__ import annotations

import uuid
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from seke_app.models import Dataset
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_a_missing_page_is_a_styled_page_with_navigation(admin_user: User) -> None:
    url = reverse("run_detail", args=[uuid.uuid4()])
    response = client_for(admin_user).get(url)
    assert response.status_code == 404
    page = response.content.decode()
    assert 'id="error-page"' in page and "There is no page here" in page
    assert f"Nothing lives at <code>{url}</code>" in page
    assert '<nav aria-label="Main">' in page and 'href="/static/css/seke.css"' in page


def test_a_refused_page_says_why_for_the_role_the_user_has(annotator: User, outsider: User) -> None:
    response = client_for(annotator).get(reverse("run_list"))
    assert response.status_code == 403
    page = response.content.decode()
    assert "This page is not open to you" in page and "Your role does not allow this page." in page
    assert "an annotator: annotators review faces" in page
    assert f'href="{reverse("review:queue")}"' in page and '<nav aria-label="Main">' in page
    page = client_for(outsider).get(reverse("run_list")).content.decode()
    assert "with no role yet: ask an admin" in page


def test_a_server_error_is_a_page_of_the_product(admin_user: User) -> None:
    client = client_for(admin_user)
    client.raise_request_exception = False
    with mock.patch("seke_app.datasets.views.home_overview", side_effect=RuntimeError("boom")):
        response = client.get(reverse("home"))
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong on the server" in page and "boom" not in page
    assert 'href="/static/css/seke.css"' in page


def test_a_form_without_its_token_is_refused_with_the_reason(admin_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(reverse("run_rename", args=[uuid.uuid4()]), {"name": "x"})
    assert response.status_code == 403
    page = response.content.decode()
    assert "The form could not be accepted" in page and "without a valid security token" in page


def test_every_page_links_the_favicon_which_is_served(admin_user: User) -> None:
    page = client_for(admin_user).get(reverse("home")).content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    icon = Client().get("/static/favicon.svg")
    assert icon.status_code == 200 and b"<svg" in b"".join(icon.streaming_content)  # type: ignore[attr-defined]
    redirect = Client().get("/favicon.ico")
    assert redirect.status_code == 302 and redirect["Location"] == "/static/favicon.svg"


def test_au_vocabulary_is_spelled_so(admin_user: User) -> None:
    Dataset.objects.create(name="faces")
    client = client_for(admin_user)
    for url in (reverse("dataset_upload"), reverse("admin:seke_app_dataset_changelist")):
        page = client.get(url).content.decode()
        assert "AU vocabulary" in page and "Au vocabulary" not in page, url
