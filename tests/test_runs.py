"""Generation runs through the real queue: exactly once, faults, cancel, cost cap."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Q
from django.urls import reverse

from review.models import ReviewTask
from seke_app.engine.llm.client import VLLMClient
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, AnnotationSample, GenerationRun, RunItem
from seke_app.queue import get_queue
from seke_app.runs import backends
from seke_app.runs import services as runs
from seke_app.runs.services import ImageFilter, RunRefused, run_create
from tests.conftest import client_for
from tests.factories import make_dataset
from tests.fake_openai import FakeOpenAI
from tests.workers import emptied_queue, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)


_own_queue = emptied_queue("generation")


def work() -> None:
    work_in_process("generation")


def assert_consistent(run: GenerationRun) -> None:
    run.refresh_from_db()
    annotations = Annotation.objects.filter(run=run)
    assert run.n_done == annotations.count()
    assert run.n_flagged == annotations.filter(flagged=True).count()
    assert run.n_accepted == annotations.filter(flagged=False).count()
    assert run.n_failed == RunItem.objects.filter(run=run, status="failed").count()
    # One task per image that is unconfident or drawn for the audit (one, not two).
    audited = RunItem.objects.filter(run=run, audit=True).values("image_id")
    needing = annotations.filter(Q(flagged=True) | Q(image_id__in=audited)).count()
    assert ReviewTask.objects.filter(annotation__run=run).count() == needing
    assert run.n_done + run.n_failed == run.n_total


def test_it_annotates_every_image_exactly_once(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    run = run_create(dataset=dataset, backend="offline", params=UAMCParams(), concurrency=2)
    assert run.status == "queued" and run.n_total == 6
    work()
    run.refresh_from_db()
    assert run.status == "completed" and run.started_at and run.finished_at
    assert_consistent(run)
    annotation = Annotation.objects.filter(run=run).first()
    assert annotation is not None
    samples = AnnotationSample.objects.filter(annotation=annotation)
    assert samples.count() == annotation.n_samples
    assert samples.filter(kind="verification").count() == 1
    # Re-running every chunk (a duplicate delivery) changes nothing.
    ids = list(RunItem.objects.filter(run=run).values_list("id", flat=True))
    runs.run_process_chunk(run_id=run.id, item_ids=ids)
    assert Annotation.objects.filter(run=run).count() == 6


def test_it_restricts_a_run_to_a_split(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    run = run_create(
        dataset=dataset,
        backend="offline",
        params=UAMCParams(),
        image_filter=ImageFilter(split="test"),
    )
    assert run.n_total == 2


def test_it_skips_images_that_already_have_a_confident_label(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    # Without verification and with a zero threshold nothing is flagged: the two
    # "test" images get confident labels.
    first = run_create(
        dataset=dataset,
        backend="offline",
        params=UAMCParams(review_threshold=0.0, verify=False),
        image_filter=ImageFilter(split="test"),
    )
    work()
    first.refresh_from_db()
    assert (first.n_accepted, first.n_flagged) == (2, 0)
    second = run_create(
        dataset=dataset,
        backend="offline",
        params=UAMCParams(),
        image_filter=ImageFilter(only_unconfident=True),
    )
    assert second.n_total == 4


def test_it_refuses_bad_runs_and_writes_nothing(tmp_path: Path, settings: Any) -> None:
    dataset = make_dataset(tmp_path)
    settings.OPENAI_API_KEY = ""
    with pytest.raises(RunRefused, match="no OPENAI_API_KEY"):
        run_create(dataset=dataset, backend="openai", params=UAMCParams())
    with pytest.raises(RunRefused, match="no image matches"):
        run_create(
            dataset=dataset,
            backend="offline",
            params=UAMCParams(),
            image_filter=ImageFilter(split="nope"),
        )
    with pytest.raises(RunRefused, match="cost cap must be positive"):
        run_create(dataset=dataset, backend="offline", params=UAMCParams(), budget_usd=Decimal("0"))
    assert not GenerationRun.objects.exists()


def test_a_chunk_job_goes_on_with_the_runs_pending_images(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    run = run_create(dataset=dataset, backend="offline", params=UAMCParams(), concurrency=2)
    get_queue("generation").empty()  # the enqueued chunks are not used here
    ids = list(RunItem.objects.filter(run=run).order_by("id").values_list("id", flat=True))
    # One chunk job holding two of the six images annotates all six...
    runs.run_process_chunk(run_id=run.id, item_ids=ids[:2])
    run.refresh_from_db()
    assert run.status == "completed"
    assert_consistent(run)
    assert sorted(Annotation.objects.filter(run=run).values_list("image_id", flat=True)) == sorted(
        RunItem.objects.filter(run=run).values_list("image_id", flat=True)
    )
    # ...and the job for the other four finds them done and writes nothing.
    runs.run_process_chunk(run_id=run.id, item_ids=ids[2:])
    assert Annotation.objects.filter(run=run).count() == 6


def test_it_keeps_more_threads_than_requests_on_an_endpoint(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    offline = run_create(dataset=dataset, backend="offline", params=UAMCParams(), concurrency=4)
    assert runs.pool_threads(offline) == 4
    offline.backend, offline.concurrency = "openai", 16
    assert runs.pool_threads(offline) == 24
    offline.concurrency = 1
    assert runs.pool_threads(offline) == 1


def test_it_cancels_a_run_and_starts_no_new_image(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    run = run_create(dataset=dataset, backend="offline", params=UAMCParams())
    runs.run_cancel(run=run)
    work()
    run.refresh_from_db()
    assert run.status == "cancelled" and run.n_done == 0
    assert not Annotation.objects.filter(run=run).exists()
    with pytest.raises(RunRefused, match="cannot be cancelled"):
        runs.run_cancel(run=run)
    assert runs.run_resume(run=run) == 6
    work()
    run.refresh_from_db()
    assert run.status == "completed"
    assert_consistent(run)


def flaky_openai(settings: Any, server: FakeOpenAI) -> None:
    settings.OPENAI_API_KEY = "sk-test-key"
    settings.OPENAI_BASE_URL = server.base_url
    settings.OPENAI_TIMEOUT = 1.0
    settings.OPENAI_MAX_RETRIES = 1
    settings.OPENAI_RPM = 0
    settings.OPENAI_TPM = 0


def test_it_finishes_a_run_with_api_faults_losing_nothing(tmp_path: Path, settings: Any) -> None:
    dataset = make_dataset(tmp_path, n=5)
    with FakeOpenAI() as server:
        flaky_openai(settings, server)
        # Each fault is consumed by one request; single-shot makes one request per image.
        server.script("429", "500", "500", "malformed", "401", "refusal")
        run = run_create(
            dataset=dataset,
            backend="openai",
            model_name="gpt-4o",
            params=UAMCParams(strategy="single"),
            concurrency=1,
        )
        work()
    run.refresh_from_db()
    assert run.status == "completed"
    assert_consistent(run)
    failed = RunItem.objects.filter(run=run, status="failed")
    # 500 twice exhausts the one retry; 401 is not retried.
    assert failed.count() == 2
    reasons = sorted(failed.values_list("error", flat=True))
    assert any("a retry may help" in r for r in reasons)
    assert any("HTTP 401" in r and "a retry will not help" in r for r in reasons)
    assert all("sk-test-key" not in r for r in reasons)
    # Malformed and refused replies are kept as invalid samples of annotated images.
    errors = list(
        AnnotationSample.objects.filter(annotation__run=run)
        .exclude(parse_error="")
        .values_list("parse_error", flat=True)
    )
    assert len(errors) == 2
    assert run.cost_usd > 0 and run.prompt_tokens > 0
    # Retrying the failed images completes the run.
    with FakeOpenAI() as server:
        flaky_openai(settings, server)
        assert runs.run_retry_failed(run=run) == 2
        work()
    run.refresh_from_db()
    assert run.n_done == 5 and run.n_failed == 0
    assert_consistent(run)


def test_it_closes_the_vllm_clients_once_a_chunk_ends(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[VLLMClient] = []

    class RecordedClient(VLLMClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(backends, "VLLMClient", RecordedClient)
    dataset = make_dataset(tmp_path, n=3)
    with FakeOpenAI() as server:
        flaky_openai(settings, server)
        # Rate limits put the chunk's client behind the limiter, which must pass the close on.
        settings.OPENAI_RPM = 10_000
        run = run_create(
            dataset=dataset,
            backend="openai",
            model_name="gpt-4o",
            params=UAMCParams(strategy="single"),
            concurrency=2,
        )
        work()
    run.refresh_from_db()
    assert run.status == "completed" and run.n_done == 3
    # One client checked the configuration when the run was created, one served the chunk.
    assert len(built) == 2
    assert all(client.closed for client in built)


def test_it_stops_cleanly_at_the_cost_cap(tmp_path: Path, settings: Any) -> None:
    dataset = make_dataset(tmp_path, n=6)
    with FakeOpenAI() as server:
        flaky_openai(settings, server)
        run = run_create(
            dataset=dataset,
            backend="openai",
            model_name="gpt-4o",
            params=UAMCParams(strategy="single"),
            concurrency=1,
            budget_usd=Decimal("0.000001"),
        )
        work()
    run.refresh_from_db()
    assert run.status == "budget_exhausted"
    assert run.n_done == 1 and run.cost_usd >= run.budget_usd
    assert RunItem.objects.filter(run=run, status="pending").count() == 5
    assert run.get_status_display() == "Stopped: cost cap reached"


@pytest.mark.parametrize("page", ["run_list", "run_new"])
def test_it_shows_run_pages_to_admins_only(
    page: str, annotator: User, admin_user: User, outsider: User
) -> None:
    url = reverse(page)
    assert client_for(None).get(url).status_code == 302
    assert client_for(outsider).get(url).status_code == 403
    assert client_for(annotator).get(url).status_code == 403
    assert client_for(admin_user).get(url).status_code == 200


def test_it_guards_every_run_action(tmp_path: Path, annotator: User, admin_user: User) -> None:
    dataset = make_dataset(tmp_path, n=2)
    run = run_create(dataset=dataset, backend="offline", params=UAMCParams())
    for name in ("run_detail", "run_progress"):
        url = reverse(name, args=[run.code])
        assert client_for(annotator).get(url).status_code == 403
        assert client_for(admin_user).get(url).status_code == 200
    for name in ("run_cancel", "run_resume", "run_retry"):
        url = reverse(name, args=[run.code])
        assert client_for(admin_user).get(url).status_code == 405
        assert client_for(annotator).post(url).status_code == 403
    response = client_for(admin_user).post(reverse("run_cancel", args=[run.code]), follow=True)
    assert "Run cancelled" in response.content.decode()
    run.refresh_from_db()
    assert run.status == "cancelled"


def test_it_starts_a_run_from_the_form(tmp_path: Path, admin_user: User) -> None:
    dataset = make_dataset(tmp_path, n=3)
    response = client_for(admin_user).post(
        reverse("run_new"),
        {
            "dataset": str(dataset.code),
            "backend": "offline",
            "strategy": "uamc",
            "k0": 3,
            "kmax": 8,
            "step": 2,
            "temperature": 1.0,
            "verify": "on",
            "review_threshold": 0.7,
            "concurrency": 2,
        },
    )
    run = GenerationRun.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/runs/{run.code}/")
    assert run.params["kmax"] == 8 and run.n_total == 3
    bad = client_for(admin_user).post(
        reverse("run_new"),
        {
            "dataset": str(dataset.code),
            "backend": "offline",
            "strategy": "uamc",
            "k0": 5,
            "kmax": 2,
            "step": 1,
            "temperature": 1.0,
            "review_threshold": 0.7,
            "concurrency": 1,
        },
    )
    assert "kmax (most samples) must be at least k0" in bad.content.decode()
    assert GenerationRun.objects.count() == 1


def test_it_resumes_a_run_whose_worker_died_between_images(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, n=4)
    run = run_create(dataset=dataset, backend="offline", params=UAMCParams())
    # The worker took the chunk job and died before claiming anything: the run says
    # "running", no lease exists, and no job is left in the queue.
    get_queue("generation").empty()
    GenerationRun.objects.filter(id=run.id).update(status="running")
    run.refresh_from_db()
    assert runs.run_resumable(run)
    assert runs.run_resume(run=run) == 4
    work()
    run.refresh_from_db()
    assert run.status == "completed"
    assert_consistent(run)
    with pytest.raises(RunRefused, match="retry its failed images"):
        runs.run_resume(run=run)
