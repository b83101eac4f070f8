"""Generation runs with rq workers in their own processes, killed mid-run."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.db.models import Count
from django.utils import timezone

from review.models import ReviewTask
from seke_app.datasets.services import dataset_import
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, Dataset, GenerationRun, RunItem
from seke_app.runs.services import run_create, run_resume
from tests.conftest import draw_face
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
    run = run_create(dataset=dataset, backend="offline", params=SLOW, concurrency=1)
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
