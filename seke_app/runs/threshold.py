"""A run's review threshold as an operation, not a field.

Changing the threshold changes which machine labels stand without review
(``seke_app.models.runs.confident``). In one transaction, ``run_threshold_set``
records the new value and who set it (``ThresholdChange``), lets ``review``
open tasks for the annotations that became unconfident and close, with the
reason, the open tasks of those that became confident
(``hooks.threshold_changed``), and recounts the run's counters, so that
curation, run selection, the counters and the review queue all agree with it.

A run at work keeps its threshold: its images are classified as they are
stored, so the change waits until the run has stopped and no image is in
flight.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from seke_app.models import Annotation, GenerationRun, RunItem
from seke_app.models.runs import ThresholdChange, confident
from seke_app.runs import hooks

Status = GenerationRun.Status
_AT_WORK = (Status.QUEUED, Status.RUNNING, Status.CANCELLING)


class ThresholdRefused(Exception):
    """No threshold could be set as asked; the message says why. Nothing changed."""


def run_threshold_set(
    *,
    run: GenerationRun,
    threshold: float,
    source: str = ThresholdChange.Source.HAND,
    user: AbstractBaseUser | None = None,
    note: str = "",
) -> ThresholdChange:
    """Set the run's review threshold and make everything that reads it follow."""
    if not 0.0 <= threshold <= 1.0:
        raise ThresholdRefused("A review threshold lies between 0 and 1.")
    if source not in ThresholdChange.Source.values:
        raise ThresholdRefused(f"Unknown source {source!r}.")
    with transaction.atomic():
        locked = GenerationRun.objects.select_for_update().get(id=run.id)
        if locked.status in _AT_WORK:
            raise ThresholdRefused(
                "The run is still at work: change its threshold once it has stopped."
            )
        # Locking the items still leased waits for an image being stored right now.
        in_flight = RunItem.objects.select_for_update().filter(
            run=locked, status=RunItem.Status.LEASED, lease_until__gte=timezone.now()
        )
        if list(in_flight.values_list("id", flat=True)):
            raise ThresholdRefused("Images of the run are still being annotated: try again soon.")
        old = locked.review_threshold
        locked.review_threshold = threshold
        locked.params = {**locked.params, "review_threshold": threshold}
        locked.save(update_fields=["review_threshold", "params"])
        opened = closed = 0
        for hook in hooks.threshold_changed:
            more_opened, more_closed = hook(locked)
            opened += more_opened
            closed += more_closed
        annotations = Annotation.objects.filter(run=locked)
        n_confident = annotations.filter(confident()).count()
        n_flagged = annotations.count() - n_confident
        GenerationRun.objects.filter(id=locked.id).update(
            n_accepted=n_confident, n_flagged=n_flagged
        )
        change = ThresholdChange.objects.create(
            run=locked,
            old=old,
            new=threshold,
            source=source,
            note=note[:300],
            changed_by=user,  # type: ignore[misc]
            n_opened=opened,
            n_closed=closed,
        )
    run.review_threshold = threshold
    run.params = locked.params
    run.n_accepted, run.n_flagged = n_confident, n_flagged
    return change
