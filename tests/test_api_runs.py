"""Runs through the API: the run form's rules and defaults, progress, actions, annotations."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from seke_app.engine.uamc import UAMCParams
from seke_app.models import (
    Annotation,
    AnnotationSample,
    Dataset,
    GenerationRun,
    PromptVersion,
    RunItem,
)
from seke_app.runs.backends import default_model
from seke_app.runs.forms import RunForm
from seke_app.runs.prompts import prompt_version_active
from seke_app.runs.services import run_create
from tests.api_client import ApiClient
from tests.conftest import client_for
from tests.factories import make_dataset, make_flagged_annotations
from tests.workers import WorkerProcess, wait_for_worker

RUNS = "/api/v1/runs"

# Every field of the run form, with a value other than its initial one.
EVERY_PARAMETER: dict[str, Any] = {
    "name": "  baseline   run ",
    "split": "train",
    "only_unconfident": True,
    "backend": "offline",
    "model_name": "",
    "strategy": "fixed",
    "k0": 2,
    "kmax": 4,
    "step": 1,
    "temperature": 0.5,
    "verify": False,
    "futility": False,
    "review_threshold": 0.8,
    "concurrency": 3,
    "double_review_share": 0.25,
    "audit_share": 0.5,
    "budget_usd": "1.25",
}

# What differs between two runs made from the same values.
UNIQUE = {"id", "code", "number", "created_at", "audit_seed", "job_id"}


def stored(run: GenerationRun) -> dict[str, Any]:
    values = {
        field.attname: getattr(run, field.attname)
        for field in GenerationRun._meta.concrete_fields
        if field.name not in UNIQUE
    }
    items = RunItem.objects.filter(run=run)
    values["images"] = sorted(items.values_list("image_id", flat=True))
    values["audited"] = items.filter(audit=True).count()
    return values


def as_page_data(values: dict[str, Any]) -> dict[str, str]:
    """The values as the page's form sends them, its initial values in the other fields:
    text, and ticked checkboxes only."""
    form = RunForm()
    data = {}
    for name, value in ({name: form[name].initial for name in form.fields} | values).items():
        if value is True:
            data[name] = "on"
        elif value is not False and value is not None:
            data[name] = str(value)
    return data


@pytest.fixture
def dataset(tmp_path: Path, settings: Any) -> Dataset:
    settings.OPENAI_API_KEY = ""
    return make_dataset(tmp_path)


@pytest.fixture
def candidate() -> PromptVersion:
    """A prompt version other than the active one."""
    active = prompt_version_active()
    return PromptVersion.objects.create(
        number=2, name="candidate", knowledge_text="Look closely.", fingerprint="x", parent=active
    )


def test_the_api_takes_every_field_of_the_run_form() -> None:
    schema = Client().get("/api/openapi.json").json()["components"]["schemas"]["RunIn"]
    assert set(schema["properties"]) == set(RunForm.base_fields)
    assert schema["required"] == ["dataset"]
    assert schema["properties"]["k0"]["default"] == RunForm.base_fields["k0"].initial


@pytest.mark.django_db
def test_it_starts_a_run_with_every_parameter_stored_as_the_page_stores_it(
    dataset: Dataset, candidate: PromptVersion, admin_user: User
) -> None:
    values = EVERY_PARAMETER | {"dataset": str(dataset.code), "prompt_version": str(candidate.code)}
    response = ApiClient(admin_user).post(RUNS, values)
    assert response.status_code == 201, response.json()
    body = response.json()
    by_api = GenerationRun.objects.get(code=body["code"])
    page = client_for(admin_user).post(reverse("run_new"), as_page_data(values))
    assert page.status_code == 302
    by_page = GenerationRun.objects.exclude(id=by_api.id).get()
    assert stored(by_api) == stored(by_page)

    assert (
        by_api.params
        == UAMCParams(
            strategy="fixed",
            k0=2,
            kmax=4,
            step=1,
            temperature=0.5,
            verify=False,
            futility=False,
            review_threshold=0.8,
        ).to_json()
    )
    assert by_api.name == "baseline run" and by_api.image_filter["split"] == "train"
    assert by_api.image_filter["only_unconfident"] is True
    assert (by_api.n_total, by_api.model_name) == (4, default_model("offline"))
    assert by_api.prompt_version == candidate and by_api.created_by == admin_user
    assert (by_api.concurrency, by_api.double_review_share, by_api.audit_share) == (3, 0.25, 0.5)
    assert by_api.budget_usd == Decimal("1.25")
    assert body["url"] == f"{RUNS}/{by_api.code}" and body["status"] == "queued"
    assert body["budget_usd"] == "1.2500" and body["n_total"] == 4
    assert body["label"] == by_api.label and body["prompt_version"] == str(candidate.code)


@pytest.mark.django_db
def test_a_field_left_out_takes_the_forms_initial_value(dataset: Dataset, admin_user: User) -> None:
    response = ApiClient(admin_user).post(RUNS, {"dataset": str(dataset.code)})
    assert response.status_code == 201, response.json()
    run = GenerationRun.objects.get()
    # Without OPENAI_API_KEY the form's backend is the offline annotator.
    assert run.backend == "offline" and run.prompt_version == prompt_version_active()
    assert run.params == UAMCParams().to_json() and run.n_total == 6
    initial = RunForm.base_fields
    assert run.concurrency == initial["concurrency"].initial
    assert run.audit_share == initial["audit_share"].initial
    assert run.double_review_share == initial["double_review_share"].initial
    assert run.budget_usd is None and run.name == ""


@pytest.mark.django_db
def test_null_shares_mean_what_empty_fields_mean_on_the_page(
    dataset: Dataset, admin_user: User
) -> None:
    body = {"dataset": str(dataset.code), "audit_share": None, "double_review_share": None}
    assert ApiClient(admin_user).post(RUNS, body).status_code == 201
    run = GenerationRun.objects.get()
    assert (run.audit_share, run.double_review_share) == (0.05, 0.0)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"k0": 0}, "k0", "Ensure this value is greater than or equal to 1."),
        ({"kmax": 41}, "kmax", "Ensure this value is less than or equal to 40."),
        ({"temperature": 0}, "temperature", "Ensure this value is greater than or equal to 0.01."),
        ({"concurrency": 65}, "concurrency", "Ensure this value is less than or equal to 64."),
        ({"audit_share": 1.5}, "audit_share", "Ensure this value is less than or equal to 1.0."),
        ({"budget_usd": "0"}, "budget_usd", "Ensure this value is greater than or equal to"),
        ({"strategy": "greedy"}, "strategy", "Select a valid choice. greedy is not one of"),
        ({"backend": "claude"}, "backend", "Select a valid choice. claude is not one of"),
        ({"prompt_version": "7d3f3c55-0f55-4f5e-9d43-7e0f2b1f0a9c"}, "prompt_version", "Select"),
        ({"name": "x" * 101}, "name", "Ensure this value has at most 100 characters"),
        ({"k0": 5, "kmax": 2}, None, "invalid SV-UAMC parameters: kmax (most samples) must"),
        ({"strong_model": "gpt-4o"}, "strong_model", "a strong model (a cascade) needs the Open"),
        (
            {"backend": "openai", "model_name": "gpt-4o", "strong_model": "gpt-4o"},
            "strong_model",
            "the strong model is the run's model (gpt-4o)",
        ),
    ],
)
def test_it_refuses_what_the_form_refuses_with_its_messages_and_writes_nothing(
    change: dict[str, Any], field: str | None, message: str, dataset: Dataset, admin_user: User
) -> None:
    values = {"dataset": str(dataset.code), "backend": "offline"} | change
    response = ApiClient(admin_user).post(RUNS, values)
    assert response.status_code == 422, response.json()
    body = response.json()
    errors = [e for e in body["errors"] if e["msg"].startswith(message)]
    assert errors, body
    where = ["body", "payload"] + ([field] if field else [])
    assert errors[0]["loc"] == where
    assert body["detail"].startswith("The request is not valid, and nothing was changed: ")
    assert message in body["detail"]
    # The page refuses the same values with the same message.
    page = client_for(admin_user).post(reverse("run_new"), as_page_data(values))
    form = page.context["form"]
    assert any(m.startswith(message) for m in form.errors[field or "__all__"])
    assert not GenerationRun.objects.exists() and not RunItem.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"kmx": 3}, ["body", "payload", "kmx"]),
        ({"k0": "three"}, ["body", "payload", "k0"]),
        ({"dataset": "not-a-code"}, ["body", "payload", "dataset"]),
    ],
)
def test_it_refuses_a_misspelt_or_mistyped_field(
    body: dict[str, Any], where: list[str], dataset: Dataset, admin_user: User
) -> None:
    values = {"dataset": str(dataset.code)} | body
    response = ApiClient(admin_user).post(RUNS, values)
    assert response.status_code == 422
    assert where in [e["loc"] for e in response.json()["errors"]]
    assert not GenerationRun.objects.exists()


@pytest.mark.django_db
def test_it_answers_a_service_refusal_with_its_message_and_writes_nothing(
    dataset: Dataset, admin_user: User
) -> None:
    api = ApiClient(admin_user)
    unknown = {"dataset": "7d3f3c55-0f55-4f5e-9d43-7e0f2b1f0a9c"}
    assert api.post(RUNS, unknown).json()["errors"][0]["loc"] == ["body", "payload", "dataset"]
    nothing = api.post(RUNS, {"dataset": str(dataset.code), "split": "nope"})
    assert nothing.status_code == 400
    assert nothing.json() == {"detail": "No image matches the selection."}
    openai = api.post(RUNS, {"dataset": str(dataset.code), "backend": "openai"})
    assert openai.status_code == 400 and "OPENAI_API_KEY" in openai.json()["detail"]
    assert not GenerationRun.objects.exists() and not RunItem.objects.exists()


@pytest.mark.django_db
def test_it_cancels_resumes_and_retries_through_the_pages_services(
    dataset: Dataset, admin_user: User
) -> None:
    api = ApiClient(admin_user)
    run = GenerationRun.objects.get(
        code=api.post(RUNS, {"dataset": str(dataset.code)}).json()["code"]
    )
    cancel, resume, retry = (f"{RUNS}/{run.code}/{act}" for act in ("cancel", "resume", "retry"))

    detail = api.get(f"{RUNS}/{run.code}").json()
    assert detail["progress"]["can_cancel"] and detail["progress"]["resume"] == "requeue"
    refused = api.post(retry)
    assert refused.status_code == 409
    assert refused.json()["detail"] == "Wait for the run to stop before retrying its failed images."

    cancelled = api.post(cancel)
    assert cancelled.status_code == 200
    assert cancelled.json()["detail"] == "Run cancelled: no new image is started."
    assert cancelled.json()["run"]["status"] == "cancelled"
    again = api.post(cancel)
    assert again.status_code == 409
    assert again.json() == {"detail": "A run that is cancelled cannot be cancelled."}
    detail = api.get(f"{RUNS}/{run.code}").json()
    assert detail["status"] == "cancelled" and detail["progress"]["resume"] == "resume"
    assert detail["progress"]["not_started"] == 6 and not detail["progress"]["can_cancel"]

    resumed = api.post(resume)
    assert resumed.status_code == 202
    assert resumed.json()["queued"] == 6 and resumed.json()["run"]["status"] == "queued"
    assert resumed.json()["detail"] == "Run resumed: 6 images queued."

    # Two images failed and the run completed: only a retry is offered.
    items = RunItem.objects.filter(run=run).order_by("id")
    failed = list(items.values_list("id", flat=True)[:2])
    RunItem.objects.filter(id__in=failed).update(status="failed", error="model call failed")
    items.exclude(id__in=failed).update(status="done")
    GenerationRun.objects.filter(id=run.id).update(
        status="completed", n_done=4, n_failed=2, finished_at=run.created_at
    )
    detail = api.get(f"{RUNS}/{run.code}").json()
    assert detail["progress"]["can_retry"] and detail["progress"]["resume"] is None
    assert [e["error"] for e in detail["progress"]["recent_errors"]] == ["model call failed"] * 2
    complete = api.post(resume)
    assert complete.status_code == 409
    assert complete.json()["detail"] == "The run is complete; retry its failed images instead."
    retried = api.post(retry)
    assert retried.status_code == 202 and retried.json()["queued"] == 2
    run.refresh_from_db()
    assert (run.status, run.n_failed) == ("queued", 0)
    assert RunItem.objects.filter(run=run, status="pending").count() == 2
    none_failed = api.post(retry)
    assert none_failed.status_code == 409


@pytest.mark.django_db
def test_it_answers_404_for_a_run_that_does_not_exist(admin_user: User) -> None:
    api = ApiClient(admin_user)
    missing = "7d3f3c55-0f55-4f5e-9d43-7e0f2b1f0a9c"
    for path in (f"{RUNS}/{missing}", f"{RUNS}/{missing}/annotations"):
        response = api.get(path)
        assert response.status_code == 404 and response.json()["detail"]
    assert api.post(f"{RUNS}/{missing}/cancel").status_code == 404


@pytest.mark.django_db
def test_it_lists_runs_newest_first_by_dataset_and_status(
    tmp_path: Path, dataset: Dataset, admin_user: User
) -> None:
    other = make_dataset(tmp_path, n=2, name="other")
    first = run_create(dataset=dataset, backend="offline", params=UAMCParams())
    second = run_create(dataset=other, backend="offline", params=UAMCParams())
    third = run_create(dataset=dataset, backend="offline", params=UAMCParams())
    GenerationRun.objects.filter(id=third.id).update(status="cancelled")
    api = ApiClient(admin_user)

    def codes(**params: Any) -> list[str]:
        return [r["code"] for r in api.get(RUNS, **params).json()["results"]]

    assert codes() == [str(third.code), str(second.code), str(first.code)]
    assert codes(dataset=str(dataset.code)) == [str(third.code), str(first.code)]
    assert codes(status="queued") == [str(second.code), str(first.code)]
    assert codes(dataset=str(dataset.code), status="cancelled") == [str(third.code)]
    bad = api.get(RUNS, status="paused")
    assert bad.status_code == 422 and "status" in bad.json()["detail"]
    page = api.get(RUNS, page_size=2).json()
    assert len(page["results"]) == 2 and page["next"]
    rest = api.client.get(page["next"], headers=api.headers).json()
    assert [r["code"] for r in rest["results"]] == [str(first.code)]


def page_queries(api: ApiClient, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    with CaptureQueriesContext(connection) as queries:
        response = api.get(path, **params)
    assert response.status_code == 200, response.json()
    return len(queries), response.json()


def add_samples(annotations: list[Annotation], per_annotation: int = 3) -> None:
    AnnotationSample.objects.bulk_create(
        AnnotationSample(
            annotation=annotation,
            index=index,
            kind="verification" if index == per_annotation - 1 else "sample",
            raw_text="{}",
            parsed={"expression": annotation.expression},
        )
        for annotation in annotations
        for index in range(per_annotation)
    )


@pytest.mark.django_db
def test_the_queries_per_annotation_page_do_not_grow_with_the_run(admin_user: User) -> None:
    api = ApiClient(admin_user)
    # The token's first use is noted once; count the pages after it.
    api.get("/api/v1/me")
    counts = []
    for n, name in ((4, "small"), (60, "large")):
        annotations = make_flagged_annotations(n, dataset_name=name)
        add_samples(annotations)
        path = f"{RUNS}/{annotations[0].run.code}/annotations"
        plain, body = page_queries(api, path)
        assert len(body["results"]) == n and all(a["samples"] is None for a in body["results"])
        with_samples, body = page_queries(api, path, samples="true", page_size=500)
        assert [len(a["samples"]) for a in body["results"]] == [3] * n
        counts.append((plain, with_samples))
    assert counts[0] == counts[1]
    assert counts[0][1] == counts[0][0] + 1


@pytest.mark.django_db
def test_the_queries_per_run_list_page_do_not_grow_with_the_runs(
    tmp_path: Path, dataset: Dataset, admin_user: User
) -> None:
    api = ApiClient(admin_user)
    api.get("/api/v1/me")
    run_create(dataset=dataset, backend="offline", params=UAMCParams(), user=admin_user)
    few, _ = page_queries(api, RUNS)
    for i in range(5):
        other = make_dataset(tmp_path, n=1, name=f"more{i}")
        run_create(dataset=other, backend="offline", params=UAMCParams(), user=admin_user)
    many, body = page_queries(api, RUNS)
    assert len(body["results"]) == 6 and few == many


@pytest.mark.django_db
def test_it_filters_annotations_and_pages_through_them_with_a_cursor(admin_user: User) -> None:
    annotations = make_flagged_annotations(12, dataset_name="filters")
    run = annotations[0].run
    # Three annotations confident under the run's threshold, never flagged.
    confident = annotations[:3]
    Annotation.objects.filter(id__in=[a.id for a in confident]).update(
        flagged=False, held=False, confidence=0.95
    )
    api = ApiClient(admin_user)
    path = f"{RUNS}/{run.code}/annotations"

    def codes(**params: Any) -> set[str]:
        body = api.get(path, **params).json()
        return {a["code"] for a in body["results"]}

    assert codes(flagged="false") == {str(a.code) for a in confident}
    assert codes(confident="true") == {str(a.code) for a in confident}
    assert len(codes(flagged="true")) == 9
    expected = set(
        Annotation.objects.filter(run=run, confidence__gte=0.05, confidence__lte=0.08).values_list(
            "code", flat=True
        )
    )
    assert codes(min_confidence=0.05, max_confidence=0.08) == {str(c) for c in expected}
    assert expected

    seen: list[str] = []
    url: str | None = f"{path}?page_size=5&flagged=true"
    while url:
        body = api.client.get(url, headers=api.headers).json()
        assert len(body["results"]) <= 5
        seen += [a["code"] for a in body["results"]]
        url = body["next"]
    in_order = Annotation.objects.filter(run=run, flagged=True).order_by("id")
    assert seen == [str(c) for c in in_order.values_list("code", flat=True)]


@pytest.mark.django_db(transaction=True)
def test_a_run_started_through_the_api_is_processed_and_its_annotations_listed(
    tmp_path: Path,
    settings: Any,
    admin_user: User,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings.OPENAI_API_KEY = ""
    dataset = make_dataset(tmp_path)
    api = ApiClient(admin_user)
    created = api.post(RUNS, {"dataset": str(dataset.code), "concurrency": 2})
    assert created.status_code == 201, created.json()
    url = created.json()["url"]
    waiting = api.get(url).json()
    assert waiting["status"] == "queued"
    assert waiting["progress"]["workers_note"].startswith("No worker is listening")

    wait_for_worker(start_worker(burst=True), timeout=180)

    detail = api.get(url).json()
    run = GenerationRun.objects.get(code=detail["code"])
    assert detail["status"] == "completed" and detail["n_done"] == 6
    assert detail["n_accepted"] + detail["n_flagged"] == 6
    progress = detail["progress"]
    assert progress["percent"] == 100.0 and progress["settled"] and progress["eta_seconds"] is None
    assert progress["throughput"] is not None and progress["throughput"] > 0
    assert progress["in_flight"] == 0 and progress["resume"] is None
    assert not progress["can_cancel"] and not progress["can_retry"]
    assert (
        progress["awaiting_review"]
        == Annotation.objects.filter(run=run, review_tasks__isnull=False).distinct().count()
    )

    listed = api.get(detail["annotations_url"], samples="true").json()
    assert listed["next"] is None and len(listed["results"]) == 6
    for item in listed["results"]:
        annotation = Annotation.objects.get(code=item["code"])
        assert item["image"] == str(annotation.image.code)
        assert item["expression"] == annotation.expression
        assert item["confidences"] == annotation.grain_confidences()
        assert item["provenance"] == annotation.grain_provenance()
        assert item["inferred_from"] == annotation.inferred_from
        assert item["flagged"] == annotation.flagged and item["held"] == annotation.held
        assert item["flag_reasons"] == annotation.flag_reasons
        assert len(item["samples"]) == annotation.n_samples
        assert [s["kind"] for s in item["samples"]][-1] == "verification"
        assert [s["index"] for s in item["samples"]] == sorted(s["index"] for s in item["samples"])
