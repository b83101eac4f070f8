"""``manage.py run_generation``: never a silent wait for a worker that is not there."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from seke_app.management.commands import run_generation
from seke_app.models import Annotation, GenerationRun
from seke_app.queue import get_queue
from seke_app.runs.services import run_cancel
from tests.factories import make_dataset

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _own_redis(worker_redis: None) -> None:
    """A Redis of this test's own, so that no other test's worker is counted."""


def test_it_says_that_no_worker_listens_and_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_generation, "NO_WORKER_GRACE_S", 0.0)
    dataset = make_dataset(tmp_path, n=2)
    err = io.StringIO()

    def wait_for_the_run() -> None:
        try:
            call_command("run_generation", "--dataset", dataset.name, "--wait", stderr=err)
        finally:
            connection.close()

    command = threading.Thread(target=wait_for_the_run)
    command.start()
    deadline = time.monotonic() + 60
    while "No worker listens" not in err.getvalue():
        assert command.is_alive(), err.getvalue()
        assert time.monotonic() < deadline, f"no word about the missing worker: {err.getvalue()}"
        time.sleep(0.05)
    # Nobody starts a worker; the admin cancels instead, and the command ends.
    run_cancel(run=GenerationRun.objects.get())
    command.join(timeout=60)
    assert not command.is_alive()
    said = err.getvalue()
    assert "python manage.py rqworker generation" in said and "--inline" in said


def test_it_annotates_in_its_own_process_with_inline(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, n=3)
    out = io.StringIO()
    call_command("run_generation", "--dataset", dataset.name, "--inline", stdout=out)
    run = GenerationRun.objects.get()
    assert run.status == "completed" and run.n_done == 3
    assert Annotation.objects.filter(run=run).count() == 3
    # Nothing was left in the queue for a worker.
    assert get_queue("generation").count == 0
    assert "annotated here" in out.getvalue() and "completed: 3 done" in out.getvalue()
