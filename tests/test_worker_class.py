"""The rq worker class ``rqworker`` runs: its exit does not wait on its pubsub listener."""

from __future__ import annotations

import django_rq
from django_rq.workers import get_worker_class

from seke_app import queue


def _worker() -> queue.Worker:
    return queue.Worker([queue.get_queue("generation")], connection=django_rq.get_connection())


def test_rqworker_runs_seke_worker_class() -> None:
    assert get_worker_class() is queue.Worker


def test_its_listener_stops_when_the_worker_unsubscribes() -> None:
    worker = _worker()
    worker.subscribe()
    thread = worker.pubsub_thread
    assert thread is not None and thread.is_alive()
    worker.unsubscribe()
    assert not thread.is_alive()


class _StuckListener:
    """A listener thread that never stops, as one stuck in a blocking read."""

    def __init__(self) -> None:
        self.stop_timeouts: list[float | None] = []

    def stop(self, timeout: float | None = None) -> None:
        self.stop_timeouts.append(timeout)

    def is_alive(self) -> bool:
        return True


def test_unsubscribing_gives_up_on_a_stuck_listener_after_a_bounded_wait() -> None:
    worker = _worker()
    stuck = _StuckListener()
    worker.pubsub_thread = stuck  # type: ignore[assignment]
    worker.unsubscribe()
    assert stuck.stop_timeouts == [queue.Worker.LISTENER_STOP_SECONDS]
