"""Resume and re-queue are safe at any time; the throughput is what happened."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, GenerationRun, RunItem
from seke_app.queue import get_queue
from seke_app.runs import services as runs
from seke_app.runs.services import RunRefused, run_create, run_throughput
from seke_app.runs.views import REQUEUE, RESUME
from tests.conftest import client_for
from tests.factories import make_dataset
from tests.workers import emptied_queue, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)


_own_queue = emptied_queue("generation")


def test_it_keeps_a_running_job_working_when_resume_is_pressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job reads the run's status before every image.
    monkeypatch.setattr(runs, "RUNNING_CHECK_SECONDS", 0.0)
    run = run_create(
        dataset=make_dataset(tmp_path, n=6), backend="offline", params=UAMCParams(), concurrency=1
    )
    get_queue("generation").empty()
    real_store = runs.result_store
    pressed: list[int] = []

    def store_then_press_resume(*args: Any) -> None:
        real_store(*args)
        if not pressed:
            # An admin presses "Re-queue waiting images" after the first image.
            pressed.append(runs.run_resume(run=GenerationRun.objects.get(id=run.id)))
            assert GenerationRun.objects.get(id=run.id).status == "running"

    monkeypatch.setattr(runs, "result_store", store_then_press_resume)
    ids = list(RunItem.objects.filter(run=run).values_list("id", flat=True))
    runs.run_process_chunk(run_id=run.id, item_ids=ids)

    assert pressed == [5]
    run.refresh_from_db()
    # The one job went on to the end: no pause until a new job came along.
    assert run.status == "completed" and run.n_done == 6
    started_at, resumed_at = run.started_at, run.resumed_at
    assert started_at is not None and started_at == resumed_at
    # The jobs the press queued find nothing to do and leave the times alone.
    assert get_queue("generation").count == 1
    work_in_process("generation")
    run.refresh_from_db()
    assert (run.started_at, run.resumed_at) == (started_at, resumed_at)
    assert Annotation.objects.filter(run=run).count() == 6


def test_it_refuses_to_resume_a_run_with_nothing_waiting(tmp_path: Path) -> None:
    run = run_create(dataset=make_dataset(tmp_path, n=2), backend="offline", params=UAMCParams())
    RunItem.objects.filter(run=run).update(
        status="leased", worker="busy:1", lease_until=timezone.now() + timedelta(minutes=5)
    )
    GenerationRun.objects.filter(id=run.id).update(status="running")
    run.refresh_from_db()
    with pytest.raises(RunRefused, match="being worked on"):
        runs.run_resume(run=run)
    run.refresh_from_db()
    assert run.status == "running"


def finished_items(run: GenerationRun, times: list[timedelta], now: Any) -> None:
    items = list(RunItem.objects.filter(run=run).order_by("id"))
    for item, ago in zip(items, times, strict=False):
        RunItem.objects.filter(id=item.id).update(status="done", finished_at=now - ago)


def test_it_measures_throughput_from_when_images_finished(tmp_path: Path) -> None:
    run = run_create(dataset=make_dataset(tmp_path, n=12), backend="offline", params=UAMCParams())
    now = timezone.now()
    # Two images an hour ago; then the run stood still until it was resumed 20 s
    # ago, and ten images have finished since.
    times = [timedelta(hours=1, seconds=s) for s in (2, 1)]
    times += [timedelta(seconds=2 * i) for i in range(10)]
    finished_items(run, times, now)
    GenerationRun.objects.filter(id=run.id).update(
        status="running",
        n_done=12,
        started_at=now - timedelta(hours=1, seconds=3),
        resumed_at=now - timedelta(seconds=20),
    )
    run.refresh_from_db()
    assert run_throughput(run, now=now) == pytest.approx(10 / 20)
    # Long after a resume, the last two minutes count.
    later = now + timedelta(seconds=100)
    assert run_throughput(run, now=later) == pytest.approx(10 / 120)
    # A finished run: its last stretch of work, from the resume to the end.
    GenerationRun.objects.filter(id=run.id).update(status="completed", finished_at=now)
    run.refresh_from_db()
    assert run_throughput(run, now=later) == pytest.approx(10 / 20)


def test_it_shows_the_throughput_on_the_run_page(tmp_path: Path, admin_user: User) -> None:
    run = run_create(dataset=make_dataset(tmp_path, n=4), backend="offline", params=UAMCParams())
    now = timezone.now()
    finished_items(run, [timedelta(seconds=s) for s in (1, 3, 5, 7)], now)
    GenerationRun.objects.filter(id=run.id).update(
        status="completed",
        n_done=4,
        started_at=now - timedelta(hours=2),
        resumed_at=now - timedelta(seconds=8),
        finished_at=now,
    )
    page = client_for(admin_user).get(reverse("run_progress", args=[run.code])).content.decode()
    assert "0.50 images/s" in page


def test_it_names_the_button_shown_in_the_stalled_notice(
    tmp_path: Path, admin_user: User, annotator: User
) -> None:
    run = run_create(dataset=make_dataset(tmp_path, n=3), backend="offline", params=UAMCParams())
    get_queue("generation").empty()
    url = reverse("run_progress", args=[run.code])
    assert client_for(annotator).get(url).status_code == 403
    # A worker died holding an image a minute ago, and no job is left to take it over.
    item = RunItem.objects.filter(run=run).first()
    assert item is not None
    RunItem.objects.filter(id=item.id).update(
        status="leased", worker="dead:1", lease_until=timezone.now() - timedelta(minutes=1)
    )
    GenerationRun.objects.filter(id=run.id).update(status="running")
    page = client_for(admin_user).get(url).content.decode()
    assert 'id="resume-button"' in page and f">{REQUEUE}</button>" in page
    assert "1 image held by a worker that stopped is still waiting" in page
    assert f"<strong>{REQUEUE}</strong> hands it to a live worker" in page
    response = client_for(admin_user).post(reverse("run_resume", args=[run.code]), follow=True)
    assert "3 waiting images queued again; the jobs at work go on." in response.content.decode()
    run.refresh_from_db()
    assert run.status == "running"
    # A cancelled run offers (and the notice would name) Resume instead.
    runs.run_cancel(run=run)
    page = client_for(admin_user).get(url).content.decode()
    assert f">{RESUME}</button>" in page and REQUEUE not in page
