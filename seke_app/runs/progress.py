"""How far a run is, as its page and the API show it: one reading of the run's state.

The run page's live section and ``GET /api/v1/runs/{code}`` both read a
``RunProgress``, so that the figures (throughput, time left, images in flight)
and the actions offered (cancel, resume, retry) follow one set of rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from seke_app.insights.references import waiting_annotations
from seke_app.models import Annotation, GenerationRun
from seke_app.queue import QueueUnavailable
from seke_app.runs.services import (
    generation_workers,
    run_recent_errors,
    run_resumable,
    run_stalled_items,
    run_throughput,
)

# What resuming does for the run: "resume" queues a stopped run again; "requeue"
# hands the images of a run at work that no job holds to new jobs.
Resume = Literal["resume", "requeue"]

_STOPPED = (
    GenerationRun.Status.CANCELLED,
    GenerationRun.Status.BUDGET_EXHAUSTED,
    GenerationRun.Status.FAILED,
)


@dataclass(frozen=True)
class RunProgress:
    """A run's figures at one moment.

    ``rate`` is images finished per second (``run_throughput``); ``eta_seconds``
    the images remaining at that rate, for a run at work only. ``settled`` says
    that the counters change no more (finished, nothing in flight), which is when
    a page stops polling. ``not_started`` counts the images a stopped run will not
    annotate unless it is resumed.
    """

    run: GenerationRun
    rate: float | None
    eta_seconds: float | None
    in_flight: int
    settled: bool
    not_started: int
    awaiting_review: int
    errors: list[tuple[str, str]]
    stalled: int
    resume: Resume | None
    workers_note: str | None

    @property
    def percent(self) -> float:
        return round(self.run.progress * 100, 1)

    @property
    def can_cancel(self) -> bool:
        return not self.run.is_finished()

    @property
    def can_retry(self) -> bool:
        """Failed images are retried once the run has stopped (``run_retry_failed``)."""
        return bool(self.run.n_failed) and self.run.is_finished()


def run_progress_of(run: GenerationRun) -> RunProgress:
    rate = run_throughput(run)
    finished = run.is_finished()
    in_flight = run.n_in_flight()
    return RunProgress(
        run=run,
        rate=rate,
        eta_seconds=run.n_remaining / rate if rate and not finished else None,
        in_flight=in_flight,
        settled=finished and not in_flight,
        not_started=max(run.n_remaining - in_flight, 0) if finished else 0,
        awaiting_review=Annotation.objects.filter(run=run).filter(waiting_annotations()).count(),
        errors=run_recent_errors(run),
        stalled=0 if finished else run_stalled_items(run),
        resume=_resume(run),
        workers_note=None if finished else worker_note(),
    )


def _resume(run: GenerationRun) -> Resume | None:
    """Which resume the run offers, if any."""
    if run.status in _STOPPED:
        return "resume"
    if not run.is_finished() and run_resumable(run):
        return "requeue"
    return None


def worker_note() -> str | None:
    """Why a run may not move: no worker listens, or Redis does not answer."""
    try:
        if generation_workers() == 0:
            return (
                "No worker is listening on the generation queue: start one with"
                " `python manage.py rqworker generation`."
            )
    except QueueUnavailable as exc:
        return str(exc)
    return None
