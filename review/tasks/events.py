"""When a finished run's review queue becomes empty, SEKE's webhooks are told
(``review.queue_empty``, ``seke_app.webhooks.events``).

A run's queue is its annotations' review and adjudication tasks (gold questions
belong to no run's queue); it is empty when none is open or claimed. The queue can
become empty when a decision takes the last waiting task, when a threshold change
closes it, or, for a run still at work while its faces were reviewed, when the run
stops. Each of those calls ``queue_watch`` in its transaction; the check runs once
that transaction has committed, so that of two decisions taking the last two
tasks at once, the one that commits last sees both done. The event is named by
the run and the moment its last task was decided or closed, so it is sent once
per emptying, however many checks see it; the queue empties again only after a
new task was opened and done.

Only a finished run is announced: while a run is at work its queue fills again
with every flagged face, and "empty" would say nothing about the run.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Count, Max, Q

from review.models import ReviewTask
from seke_app.models import GenerationRun
from seke_app.webhooks import events as webhook_events

log = logging.getLogger("seke.review")

LIVE = (ReviewTask.Status.OPEN, ReviewTask.Status.CLAIMED)


def queue_watch(run_id: int) -> None:
    """Once the current transaction commits, announce the run's queue if it is then empty.

    A failure of the check is logged, never raised into the decision that called it.
    """
    transaction.on_commit(lambda: queue_empty_announce(run_id=run_id), robust=True)


def run_stopped(run: GenerationRun) -> None:
    """The ``run_finished`` hook: a run that stops with its queue done announces it."""
    queue_watch(run.id)


def queue_empty_announce(*, run_id: int) -> bool:
    """Announce the run's review queue if the run is finished and its queue has just
    emptied; whether an event was recorded (False also when it was announced already)."""
    run = GenerationRun.objects.select_related("dataset").filter(id=run_id).first()
    if run is None or not run.is_finished():
        return False
    tasks = ReviewTask.objects.filter(annotation__run_id=run_id).exclude(kind=ReviewTask.Kind.GOLD)
    if tasks.filter(status__in=LIVE).exists():
        return False
    summary = tasks.aggregate(
        decided=Count("id", filter=Q(status=ReviewTask.Status.DONE)),
        closed=Count("id", filter=Q(status=ReviewTask.Status.CLOSED)),
        last=Max("closed_at"),
    )
    if summary["last"] is None:
        # No task was ever done or closed: the run had nothing to review.
        return False
    event = webhook_events.review_queue_empty(
        run, decided=summary["decided"], closed=summary["closed"], last_closed_at=summary["last"]
    )
    if event is not None:
        log.info("the review queue of run %s is empty", run.code)
    return event is not None
