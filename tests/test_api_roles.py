"""Who may call each API endpoint: anonymous, a user without a role, annotator, admin.

``ENDPOINTS`` lists every operation of the schema with the role it needs; a test
fails when the schema has an operation the table lacks, so a new endpoint cannot
go untested. Paths name objects of ``world`` in braces. A refused request answers
401 (no valid token) or 403 (a role that may not) and writes nothing; an allowed one
is never refused for its role (it may still answer 404 or 422 for its body).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.test import Client

from seke_app.models.datasets import DatasetImport
from seke_app.models.exports import Export
from tests.api_client import ApiClient
from tests.factories import make_flagged_annotations
from tests.webhook_receiver import failed_delivery

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    # "any" signed-in user, "annotator" (admins too), or "admin".
    role: str
    body: Any = None


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/api/v1/me", "any"),
    # Runs, their annotations, prompt versions and exports: admins, as their pages.
    Endpoint("POST", "/api/v1/runs", "admin"),
    Endpoint("GET", "/api/v1/runs", "admin"),
    Endpoint("GET", "/api/v1/runs/{run}", "admin"),
    Endpoint("POST", "/api/v1/runs/{run}/cancel", "admin"),
    Endpoint("POST", "/api/v1/runs/{run}/resume", "admin"),
    Endpoint("POST", "/api/v1/runs/{run}/retry", "admin"),
    Endpoint("GET", "/api/v1/runs/{run}/annotations", "admin"),
    Endpoint("GET", "/api/v1/prompt-versions", "admin"),
    Endpoint("GET", "/api/v1/prompt-versions/{version}", "admin"),
    Endpoint("POST", "/api/v1/exports", "admin"),
    Endpoint("GET", "/api/v1/exports", "admin"),
    Endpoint("GET", "/api/v1/exports/{export}", "admin"),
    Endpoint("GET", "/api/v1/exports/{export}/download", "admin"),
    Endpoint("POST", "/api/v1/exports/{export}/cancel", "admin"),
    # Datasets, imports and the list of images: admins, as their pages; one image (and
    # its history): annotators too, as its page. A run's certificate: admins.
    Endpoint("GET", "/api/v1/datasets", "admin"),
    Endpoint("POST", "/api/v1/datasets", "admin"),
    Endpoint("GET", "/api/v1/datasets/{dataset}", "admin"),
    Endpoint("POST", "/api/v1/datasets/{dataset}/imports", "admin"),
    Endpoint("POST", "/api/v1/imports", "admin"),
    Endpoint("GET", "/api/v1/imports/{import}", "admin"),
    Endpoint("POST", "/api/v1/imports/{import}/cancel", "admin"),
    Endpoint("GET", "/api/v1/images", "admin"),
    Endpoint("GET", "/api/v1/images/{image}", "annotator"),
    Endpoint("GET", "/api/v1/images/{image}/file", "annotator"),
    Endpoint("GET", "/api/v1/runs/{run}/certificate", "admin"),
    # Review: annotators and admins, as the review pages.
    Endpoint("POST", "/api/v1/review/claim", "annotator"),
    Endpoint("GET", "/api/v1/review/tasks", "annotator"),
    Endpoint("GET", "/api/v1/review/tasks/{task}", "annotator"),
    Endpoint("POST", "/api/v1/review/tasks/{task}/decide", "annotator", {"action": "accept"}),
    Endpoint("POST", "/api/v1/review/tasks/{task}/skip", "annotator"),
    Endpoint("POST", "/api/v1/review/undo", "annotator"),
    Endpoint("POST", "/api/v1/review/release", "annotator"),
    Endpoint("GET", "/api/v1/review/decisions", "annotator"),
    # Webhooks: admins, as their pages.
    Endpoint("GET", "/api/v1/webhooks", "admin"),
    Endpoint(
        "POST",
        "/api/v1/webhooks",
        "admin",
        {"url": "https://example.org/seke-events", "events": ["run.finished"]},
    ),
    Endpoint("GET", "/api/v1/webhooks/{webhook}", "admin"),
    Endpoint("DELETE", "/api/v1/webhooks/{webhook}", "admin"),
    Endpoint("GET", "/api/v1/webhooks/{webhook}/deliveries", "admin"),
    Endpoint("POST", "/api/v1/webhooks/{webhook}/ping", "admin"),
    Endpoint("POST", "/api/v1/webhooks/deliveries/{delivery}/redeliver", "admin"),
]


@pytest.fixture
def world(db: None) -> dict[str, str]:
    """Objects the paths name, by placeholder."""
    annotations = make_flagged_annotations(3, dataset_name="matrix")
    annotation = annotations[0]
    task = annotation.review_tasks.first()
    assert task is not None
    delivery = failed_delivery()
    return {
        "webhook": str(delivery.hook.code),
        "delivery": str(delivery.code),
        "dataset": str(annotation.image.dataset.code),
        "image": str(annotation.image.code),
        "run": str(annotation.run.code),
        "annotation": str(annotation.code),
        "task": str(task.code),
        "version": str(annotation.prompt_version.code),
        "export": str(
            Export.objects.create(dataset=annotation.image.dataset, kind=Export.Kind.FEID).code
        ),
        "import": str(
            DatasetImport.objects.create(dataset_name="matrix", upload_name="faces.zip").code
        ),
    }


def _rows() -> dict[str, int]:
    return {
        model._meta.label: model._default_manager.count()
        for model in apps.get_models()
        if model._meta.app_label in {"seke_app", "review"} and model._meta.model_name != "apitoken"
    }


def _call(api: ApiClient, endpoint: Endpoint, world: dict[str, str]) -> Any:
    path = endpoint.path.format(**world)
    if endpoint.method == "GET":
        return api.get(path)
    if endpoint.method == "DELETE":
        return api.delete(path)
    if endpoint.method == "PATCH":
        return api.patch(path, endpoint.body or {})
    return api.post(path, endpoint.body)


def _operations(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }


def test_every_operation_of_the_schema_is_in_the_matrix() -> None:
    schema = Client().get("/api/openapi.json").json()
    # The schema names parameters ({code}, {run_code}, ...); the table names objects
    # of ``world``: compare the paths' shapes.
    assert {(m, _shape(p)) for m, p in _operations(schema)} == {
        (e.method, _shape(e.path)) for e in ENDPOINTS
    }


def _shape(path: str) -> str:
    return "/".join("{}" if part.startswith("{") else part for part in path.split("/"))


# From the least allowed to the most: every refusal is checked before an allowed
# request may change what the later ones find.
ROLES = ["anonymous", "no role", "annotator", "admin"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_each_role_is_let_in_or_refused(
    endpoint: Endpoint,
    world: dict[str, str],
    admin_user: User,
    annotator: User,
    outsider: User,
) -> None:
    users = {"anonymous": None, "no role": outsider, "annotator": annotator, "admin": admin_user}
    for who in ROLES:
        api = ApiClient(users[who])
        before = _rows()
        response = _call(api, endpoint, world)
        said = f"{who}: {response.status_code} {response.content[:300]!r}"
        assert response["Content-Type"].startswith("application/json"), said
        allowed = {
            "any": who != "anonymous",
            "annotator": who in {"annotator", "admin"},
            "admin": who == "admin",
        }[endpoint.role]
        if allowed:
            assert response.status_code not in (401, 403), said
            continue
        assert response.status_code == (401 if who == "anonymous" else 403), said
        assert response.json()["detail"], said
        assert _rows() == before, f"{who}: a refused request wrote something"
