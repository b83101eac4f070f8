"""Leases on a run's images: renewed while an image is worked on, so they can be
short, and a dead worker's images taken over by the run's jobs without a button."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from seke_app.engine.types import AnnotationRequest, Sample, VerificationRequest
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, GenerationRun, RunItem
from seke_app.queue import get_queue
from seke_app.runs import services as runs
from seke_app.runs.calls import ImageCalls, LeaseLost
from seke_app.runs.leases import LeaseKeeper
from seke_app.runs.services import run_create
from tests.factories import make_dataset
from tests.workers import emptied_queue

pytestmark = pytest.mark.django_db(transaction=True)

# One sampling call and one verification per image.
TWO_CALLS = UAMCParams(strategy="fixed", k0=3, kmax=3)


_own_queue = emptied_queue("generation")


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_it_renews_the_lease_before_each_model_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_create(dataset=make_dataset(tmp_path, n=3), backend="offline", params=TWO_CALLS)
    get_queue("generation").empty()
    real_renew = runs.lease_renew
    renewed: list[tuple[int, bool]] = []

    def counted(item_id: int, worker: str) -> bool:
        held = real_renew(item_id, worker)
        renewed.append((item_id, held))
        return held

    monkeypatch.setattr(runs, "lease_renew", counted)
    runs.run_process_chunk(run_id=run.id, item_ids=[])
    run.refresh_from_db()
    assert run.status == "completed" and run.n_done == 3
    items = sorted(RunItem.objects.filter(run=run).values_list("id", flat=True))
    assert sorted(renewed) == sorted((item, True) for item in items for _ in range(2))


class Recording:
    """A backend that records its calls."""

    name = "recording"
    model = "recording"

    def __init__(self) -> None:
        self.calls = 0

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        self.calls += 1
        return []

    def verify(self, verification: VerificationRequest) -> Sample:
        self.calls += 1
        return Sample(kind="verification", raw="", error="none")


def test_it_makes_no_call_for_an_image_it_no_longer_holds() -> None:
    backend = Recording()
    calls = ImageCalls(backend, renew=lambda: False, record=lambda usage: None)
    with pytest.raises(LeaseLost):
        calls.sample(AnnotationRequest(image_bytes=b"", vocabulary=None), 3, 1.0)  # type: ignore[arg-type]
    assert backend.calls == 0


def test_it_keeps_renewing_the_leases_it_holds(tmp_path: Path, settings: Any) -> None:
    settings.RUN_LEASE_SECONDS = 5
    run = run_create(dataset=make_dataset(tmp_path, n=2), backend="offline", params=TWO_CALLS)
    held, other = RunItem.objects.filter(run=run).order_by("id")
    for item in (held, other):
        assert runs.item_claim(item.id, "me")
    first = {i.id: i.lease_until for i in RunItem.objects.filter(run=run)}

    def renewed() -> bool:
        lease = RunItem.objects.values_list("lease_until", flat=True).get(id=held.id)
        return bool(lease and lease > first[held.id])

    # As during a model call longer than a lease: nothing but the keeper renews.
    with LeaseKeeper("me") as keeper:
        keeper.hold(held.id)
        wait_until(renewed, timeout=15, what="the keeper to renew the held image's lease")
    # An image the keeper was not told about is left alone.
    assert RunItem.objects.get(id=other.id).lease_until == first[other.id]


def test_it_takes_over_a_dead_workers_image_without_a_button(tmp_path: Path, settings: Any) -> None:
    settings.RUN_LEASE_SECONDS = 5
    run = run_create(dataset=make_dataset(tmp_path, n=3), backend="offline", params=TWO_CALLS)
    get_queue("generation").empty()
    orphan = RunItem.objects.filter(run=run).order_by("id").first()
    assert orphan is not None
    # A worker claimed the image and died: its lease runs out in three seconds,
    # after this job has annotated the other two.
    RunItem.objects.filter(id=orphan.id).update(
        status="leased",
        worker="dead-host:1",
        attempts=1,
        lease_until=timezone.now() + timedelta(seconds=3),
    )
    runs.run_process_chunk(run_id=run.id, item_ids=[])
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED and run.n_done == 3
    orphan.refresh_from_db()
    assert orphan.status == "done" and orphan.attempts == 2
    assert orphan.worker == runs.worker_name()
    assert Annotation.objects.filter(run=run).count() == 3
