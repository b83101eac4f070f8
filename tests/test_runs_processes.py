"""Generation runs with rq workers in their own processes, killed mid-run.

With nobody pressing anything, a killed worker's images are finished by the run's
surviving jobs once their short leases run out, and the run's usage is what the
endpoint billed, except the calls the killed worker had in flight.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest
from django.db.models import Count, QuerySet
from django.test import override_settings
from django.utils import timezone

from review.models import ReviewTask
from seke_app.datasets.services import dataset_import
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, Dataset, GenerationRun, RunItem
from seke_app.runs.services import pool_threads, run_create, run_resume
from tests.conftest import draw_face
from tests.fake_openai import FakeOpenAI, Fault
from tests.workers import WorkerProcess, kill_worker_process, wait_for_worker

pytestmark = pytest.mark.django_db(transaction=True)

N_IMAGES = 30
LEASE_SECONDS = 5
# Twenty samples an image (fixed-N, twice the default kmax) make each image slow
# enough on the offline annotator for a kill to land while the worker holds one.
SLOW = UAMCParams(strategy="fixed", k0=20, kmax=20)
# The kill is sent this soon after the worker claims an image, well before it
# can finish it.
FRESH_CLAIM = timedelta(milliseconds=30)
# Long enough for the surviving worker to run out of other images before the
# killed worker's lease runs out, so that it must wait for it and take it over.
TAKEOVER_LEASE_SECONDS = 15


def drawn_dataset(tmp_path: Path, n: int) -> Dataset:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.png").write_bytes(draw_face(seed=i, smile=i % 2 == 0))
    report = dataset_import(path=src, dataset_name="drawn")
    assert report.imported == n, report.summary()
    return Dataset.objects.get(name="drawn")


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def test_it_finishes_a_run_exactly_once_after_its_worker_is_killed(
    tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    dataset = drawn_dataset(tmp_path, N_IMAGES)
    # No blind audit: the review tasks counted below are those of flagged images.
    run = run_create(
        dataset=dataset, backend="offline", params=SLOW, concurrency=1, audit_share=0.0
    )
    annotations = Annotation.objects.filter(run=run)
    held = RunItem.objects.filter(run=run, status=RunItem.Status.LEASED)
    worker = start_worker(lease_seconds=LEASE_SECONDS)

    def some_done_and_one_just_claimed() -> bool:
        assert worker.poll() is None, f"the worker exited early:\n{worker.output()}"
        if annotations.count() < 3:
            return False
        lease_until = held.values_list("lease_until", flat=True).first()
        claimed_at = lease_until - timedelta(seconds=LEASE_SECONDS) if lease_until else None
        return claimed_at is not None and timezone.now() - claimed_at < FRESH_CLAIM

    wait_until(
        some_done_and_one_just_claimed,
        timeout=120,
        every=0.005,
        what="a few annotations and a freshly claimed image",
    )
    # The worker and the work horse it forked for the job die without any clean-up.
    kill_worker_process(worker)
    done_at_kill = annotations.count()
    assert done_at_kill < N_IMAGES, "the run finished before the kill; make it slower"
    assert held.count() == 1, "the killed worker (concurrency 1) held one image"
    lease_until = held.get().lease_until
    assert lease_until is not None
    # The worker took its lease length from SEKE_RUN_LEASE_SECONDS (the default is 600).
    assert lease_until <= timezone.now() + timedelta(seconds=LEASE_SECONDS)

    # The dead worker's image can be taken over once its lease has expired.
    wait_until(
        lambda: timezone.now() > lease_until,
        timeout=LEASE_SECONDS + 5,
        what="the dead worker's lease to expire",
    )
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.RUNNING
    assert run_resume(run=run) == N_IMAGES - done_at_kill
    wait_for_worker(start_worker(burst=True), timeout=240)

    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED
    per_image = dict(annotations.values_list("image_id").annotate(n=Count("id")))
    assert sorted(per_image) == sorted(dataset.images.values_list("id", flat=True))
    assert set(per_image.values()) == {1}
    assert set(RunItem.objects.filter(run=run).values_list("status", flat=True)) == {"done"}
    assert run.n_done == N_IMAGES == annotations.count()
    assert run.n_failed == 0
    assert run.n_accepted + run.n_flagged == run.n_done
    assert run.n_flagged == annotations.filter(flagged=True).count()
    assert ReviewTask.objects.filter(annotation__run=run).count() == run.n_flagged
    assert run.requests == sum(annotations.values_list("requests", flat=True))


def held_by(worker: WorkerProcess) -> QuerySet[RunItem]:
    """The items that the worker's work horse holds now."""
    horses = [child.pid for child in psutil.Process(worker.pid).children(recursive=True)]
    names = [f"{socket.gethostname()}:{pid}" for pid in horses]
    return RunItem.objects.filter(status=RunItem.Status.LEASED, worker__in=names)


def test_it_finishes_a_killed_workers_images_with_nobody_pressing_anything(
    tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    dataset = drawn_dataset(tmp_path, N_IMAGES)
    # Two chunk jobs, one for each worker.
    run = run_create(dataset=dataset, backend="offline", params=SLOW, concurrency=1)
    annotations = Annotation.objects.filter(run=run)
    doomed = start_worker(lease_seconds=TAKEOVER_LEASE_SECONDS)
    survivor = start_worker(lease_seconds=TAKEOVER_LEASE_SECONDS)

    orphans: list[int] = []

    def both_at_work_and_the_doomed_one_holding_an_image() -> bool:
        for worker in (doomed, survivor):
            assert worker.poll() is None, f"a worker exited early:\n{worker.output()}"
        # Read once, where it is tested: a second look may come after the holding
        # work horse has moved on.
        orphans[:] = held_by(doomed).values_list("id", flat=True)
        return annotations.count() >= 2 and bool(orphans)

    wait_until(
        both_at_work_and_the_doomed_one_holding_an_image,
        timeout=120,
        every=0.01,
        what="both workers at work, the first holding an image",
    )
    kill_worker_process(doomed)
    assert annotations.count() < N_IMAGES, "the run finished before the kill; make it slower"
    lease_until = RunItem.objects.filter(id__in=orphans).latest("lease_until").lease_until

    # Nobody resumes anything: the surviving worker's job takes the orphan over
    # once its lease runs out, and the run completes.
    wait_until(
        lambda: GenerationRun.objects.get(id=run.id).is_finished(),
        timeout=240,
        what=f"the run to finish without a resume:\n{survivor.output()}",
    )
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED
    per_image = dict(annotations.values_list("image_id").annotate(n=Count("id")))
    assert sorted(per_image) == sorted(dataset.images.values_list("id", flat=True))
    assert set(per_image.values()) == {1}
    assert run.n_done == N_IMAGES and run.n_failed == 0
    for orphan in RunItem.objects.filter(id__in=orphans):
        assert orphan.status == "done" and orphan.attempts == 2
    # The survivor had run out of other images while the orphan's lease still ran.
    last_other = RunItem.objects.filter(run=run).exclude(id__in=orphans).latest("finished_at")
    assert last_other.finished_at is not None and lease_until is not None
    assert last_other.finished_at < lease_until, "make the lease longer"


def test_it_records_what_the_endpoint_billed_except_a_killed_workers_calls_in_flight(
    tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    dataset = drawn_dataset(tmp_path, N_IMAGES)
    with FakeOpenAI(latency_s=0.2) as server:
        endpoint = {
            "OPENAI_API_KEY": "sk-test-key",
            "OPENAI_BASE_URL": server.base_url,
            "SEKE_OPENAI_RPM": "0",
            "SEKE_OPENAI_TPM": "0",
            "SEKE_OPENAI_MAX_RETRIES": "1",
        }
        # Faults spread over the run: some images fail after calls that were billed.
        server.script(*[Fault("hang", hang_s=0)] * 7, "500", "500", *["malformed"] * 3)
        with override_settings(OPENAI_API_KEY="sk-test-key", OPENAI_BASE_URL=server.base_url):
            run = run_create(
                dataset=dataset,
                backend="openai",
                model_name="gpt-4o",
                params=UAMCParams(),
                concurrency=2,
            )
        doomed = start_worker(lease_seconds=LEASE_SECONDS, env=endpoint)
        survivor = start_worker(lease_seconds=LEASE_SECONDS, env=endpoint)
        wait_until(
            lambda: server.billed.requests >= 10 and held_by(doomed).exists(),
            timeout=120,
            every=0.01,
            what=f"the first worker at work:\n{doomed.output()}",
        )
        kill_worker_process(doomed)
        wait_until(
            lambda: GenerationRun.objects.get(id=run.id).is_finished(),
            timeout=240,
            what=f"the run to finish:\n{survivor.output()}",
        )
        billed = server.billed
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED
    assert run.n_done + run.n_failed == N_IMAGES
    assert run.n_done == Annotation.objects.filter(run=run).count()
    # Calls in flight in the killed worker (at most one per thread) were billed
    # and never recorded; every other call was.
    unrecorded = billed.requests - run.requests
    assert 0 <= unrecorded <= pool_threads(run), (billed, run.requests)
    unrecorded_tokens = billed.prompt_tokens + billed.completion_tokens
    unrecorded_tokens -= run.prompt_tokens + run.completion_tokens
    assert unrecorded_tokens >= 0 and (unrecorded_tokens == 0) == (unrecorded == 0)
