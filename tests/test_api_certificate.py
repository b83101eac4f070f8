"""A run's quality certificate through the API, beside the runs' own endpoints."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from seke_app.insights.certificates import Targets, run_certify
from seke_app.models import RunCertificate
from seke_app.runs.threshold import run_threshold_set
from tests.api_client import ApiClient
from tests.test_certificates import EXPRESSION, audited_run

pytestmark = pytest.mark.django_db


def test_it_says_how_to_issue_a_certificate_when_the_run_has_none(
    admin_user: User, annotator: User
) -> None:
    run, _ = audited_run(annotator, n=20)
    response = ApiClient(admin_user).get(f"/api/v1/runs/{run.code}/certificate")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith(f"Run {run.label} has no certificate. Issue one on its dashboard")
    assert reverse("run_dashboard", args=[run.code]) + "#certificate" in detail
    missing = ApiClient(admin_user).get(
        "/api/v1/runs/00000000-0000-0000-0000-000000000000/certificate"
    )
    assert missing.status_code == 404 and "has no certificate" not in missing.json()["detail"]


def test_it_shows_the_latest_certificate_and_whether_it_is_in_force(
    admin_user: User, annotator: User
) -> None:
    run, _ = audited_run(annotator)
    certificate = run_certify(run=run, targets=EXPRESSION, user=admin_user)
    api = ApiClient(admin_user)
    found = api.get(f"/api/v1/runs/{run.code}/certificate").json()
    assert found["code"] == str(certificate.code) and found["run"] == str(run.code)
    assert found["sentence"] == certificate.sentence()
    assert (found["certified"], found["in_force"], found["threshold"]) == (
        True,
        True,
        certificate.threshold,
    )
    assert (found["grains"], found["alpha"], found["delta"]) == (["expression"], 0.1, 0.1)
    assert (found["n_references"], found["created_by"]) == (150, "ada")
    assert found["prompt_version"] == run.prompt_version.number
    run_threshold_set(run=run, threshold=0.9, user=admin_user)
    assert api.get(f"/api/v1/runs/{run.code}/certificate").json()["in_force"] is False


def test_it_shows_a_certificate_that_certified_nothing_with_the_audits_needed(
    admin_user: User, annotator: User
) -> None:
    run, _ = audited_run(annotator, n=40, every=4)
    strict = Targets(grains=("expression",), alpha=0.01, delta=0.05)
    run_certify(run=run, targets=strict, user=admin_user)
    found = ApiClient(admin_user).get(f"/api/v1/runs/{run.code}/certificate").json()
    certificate = RunCertificate.objects.get()
    assert (found["certified"], found["threshold"], found["in_force"]) == (False, None, False)
    assert found["more_needed"] == certificate.more_needed
    assert found["sentence"].startswith("Nothing certified")


def test_it_shares_the_runs_prefix_with_the_runs_own_endpoints(
    admin_user: User, annotator: User
) -> None:
    run, _ = audited_run(annotator, n=10)
    api = ApiClient(admin_user)
    assert api.get(f"/api/v1/runs/{run.code}").json()["code"] == str(run.code)
    assert api.get(f"/api/v1/runs/{run.code}/certificate").status_code == 404
    paths = api.get("/api/openapi.json").json()["paths"]
    assert {"/api/v1/runs/{code}", "/api/v1/runs/{code}/certificate"} <= set(paths)


def test_only_admins_see_a_certificate(annotator: User) -> None:
    run, _ = audited_run(annotator, n=10)
    response = ApiClient(annotator).get(f"/api/v1/runs/{run.code}/certificate")
    assert response.status_code == 403
