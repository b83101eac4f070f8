"""API tokens: made and shown once, stored hashed, revocable, noted when used; JSON errors."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from seke_app.api.tokens import TokenRefused, digest, token_create, token_revoke
from seke_app.models import ApiToken
from tests.api_client import ApiClient
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_a_token_is_stored_only_as_its_digest(annotator: User) -> None:
    made = token_create(user=annotator, name="notebook")
    stored = ApiToken.objects.get()
    assert made.secret.startswith("seke_") and len(made.secret) > 40
    assert stored.digest == digest(made.secret) and made.secret not in stored.digest
    assert made.secret.startswith(stored.prefix) and len(stored.prefix) < len(made.secret) // 2


def test_a_token_signs_in_and_records_when_it_was_used(annotator: User) -> None:
    made = token_create(user=annotator, name="notebook")
    response = Client().get("/api/v1/me", headers={"Authorization": f"Bearer {made.secret}"})
    assert response.status_code == 200
    assert response.json() == {"username": "ann", "roles": ["annotator"]}
    assert ApiToken.objects.get().last_used_at is not None


def test_a_revoked_token_is_refused_with_a_message(annotator: User) -> None:
    made = token_create(user=annotator, name="notebook")
    token_revoke(token=made.token)
    response = Client().get("/api/v1/me", headers={"Authorization": f"Bearer {made.secret}"})
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("header", ["", "Bearer nonsense", "Bearer seke_wrong", "Token x"])
def test_anything_but_a_valid_token_is_refused(header: str, annotator: User) -> None:
    token_create(user=annotator, name="notebook")
    headers = {"Authorization": header} if header else {}
    response = Client().get("/api/v1/me", headers=headers)
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")


def test_an_inactive_users_token_is_refused(annotator: User) -> None:
    made = token_create(user=annotator, name="notebook")
    User.objects.filter(pk=annotator.pk).update(is_active=False)
    response = Client().get("/api/v1/me", headers={"Authorization": f"Bearer {made.secret}"})
    assert response.status_code == 401


def test_a_token_needs_a_name(annotator: User) -> None:
    with pytest.raises(TokenRefused, match="name"):
        token_create(user=annotator, name="  ")
    assert not ApiToken.objects.exists()


def test_unknown_api_paths_answer_json_404(annotator: User) -> None:
    response = ApiClient(annotator).get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert "/api/docs" in response.json()["detail"]


def test_the_schema_and_the_offline_docs_are_served(annotator: User) -> None:
    schema = Client().get("/api/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/me" in schema["paths"]
    docs = client_for(annotator).get("/api/docs")
    assert docs.status_code == 200
    html = docs.content.decode()
    # Swagger UI from the installed package, never from a CDN.
    assert "swagger-ui-bundle.js" in html and "cdn." not in html and "unpkg" not in html


def test_the_account_page_makes_shows_once_and_revokes(annotator: User) -> None:
    browser = client_for(annotator)
    page = browser.post("/account/", {"name": "training notebook"})
    assert page.status_code == 200
    token = ApiToken.objects.get()
    secret = page.context["secret"]
    assert secret.startswith(token.prefix) and digest(secret) == token.digest
    again = browser.get("/account/")
    assert secret not in again.content.decode() and token.prefix in again.content.decode()
    browser.post(f"/account/tokens/{token.pk}/revoke")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_nobody_revokes_another_users_token(annotator: User, teammate: User) -> None:
    made = token_create(user=annotator, name="notebook")
    response = client_for(teammate).post(f"/account/tokens/{made.token.pk}/revoke")
    assert response.status_code == 404
    made.token.refresh_from_db()
    assert made.token.revoked_at is None


def test_the_command_prints_the_token_once_and_revokes_it(annotator: User) -> None:
    out = io.StringIO()
    call_command(
        "api_token", "create", "ann", "--name", "pipeline", stdout=out, stderr=io.StringIO()
    )
    secret = out.getvalue().strip()
    assert digest(secret) == ApiToken.objects.get().digest
    listing = io.StringIO()
    call_command("api_token", "list", "ann", stdout=listing)
    assert "pipeline" in listing.getvalue() and secret not in listing.getvalue()
    call_command("api_token", "revoke", "ann", secret[:13], stdout=io.StringIO())
    assert ApiToken.objects.get().revoked_at is not None
    with pytest.raises(CommandError, match="no user"):
        call_command("api_token", "create", "nobody", "--name", "x")


def test_a_user_without_a_role_is_told_so_before_the_body_is_read(outsider: User) -> None:
    api = ApiClient(outsider)
    assert api.get("/api/v1/me").json() == {"username": "otto", "roles": []}


def test_each_models_statuses_are_documented_as_its_own() -> None:
    """Every model's ``Status`` is a class called Status; the schema must not merge them."""
    from review.models import ReviewTask
    from seke_app.models import Export, GenerationRun
    from seke_app.models.datasets import DatasetImport

    schema = Client().get("/api/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "Status" not in components and "Kind" not in components
    for name, model in [
        ("RunDetailOut", GenerationRun),
        ("ExportOut", Export),
        ("ImportOut", DatasetImport),
        ("TaskOut", ReviewTask),
    ]:
        assert components[name]["properties"]["status"]["enum"] == list(model.Status.values)
