"""The fields and rules shared by every background job that a page follows.

A generation run, an export and a gold-set check are each one row that a worker
updates as it goes: who asked for it and when, when it started and finished, how
far it is, the queue's job id and the error that stopped it. Each subclass adds
its own ``Status`` choices and names the statuses after which nothing changes.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import ClassVar

from django.conf import settings
from django.core.files.storage import Storage
from django.db import models
from django.utils import timezone

from seke_app.media import holds


class TrackedJob(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Units of work in all and done so far (images, for every job SEKE has).
    n_total = models.PositiveIntegerField(default=0)
    n_done = models.PositiveIntegerField(default=0)
    job_id = models.CharField(max_length=100, blank=True)
    error = models.TextField(blank=True)

    # The statuses a job never leaves; each subclass names its own.
    FINISHED: ClassVar[frozenset[str]] = frozenset()

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    status: str

    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def is_settled(self) -> bool:
        """Finished, and none of its work goes on: a page that follows the job refreshes
        until then. A job whose work can outlive its status (a cancel lets the piece
        at hand finish) adds its own check."""
        return self.is_finished()

    def _lets_go_of(self, storage: Storage, folder: str) -> bool:
        """Whether a finished job's worker is done with ``folder`` of ``storage``, which
        it removes last.

        A worker that died never removes it; RQ stops a job after JOB_TIMEOUT at the
        latest, so once that long has passed since the job finished it is taken as done.
        That is checked first: it needs no look at the storage, which may be a bucket
        on another machine.
        """
        timeout = timedelta(seconds=settings.JOB_TIMEOUT)
        if self.finished_at is not None and timezone.now() - self.finished_at > timeout:
            return True
        return not holds(storage, folder)

    @property
    def progress(self) -> float:
        """The share of the work done, in [0, 1]."""
        if not self.n_total:
            return 0.0
        return min(self.n_done / self.n_total, 1.0)


class QueuedJob(TrackedJob):
    """A job on an RQ queue that its page can cancel: an export or an upload's import.

    Its row is the job's state: the worker claims it with a conditional UPDATE
    (queued to running), and a cancel is a conditional UPDATE the worker notices at
    its next progress write.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    FINISHED = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED})

    class Meta(TrackedJob.Meta):
        abstract = True

    def enqueue(self, queue: str, function: str) -> None:
        """Put the job's one call on ``queue`` (after commit) and keep the job's id."""
        from seke_app.queue import get_queue

        job = get_queue(queue).enqueue(
            function,
            self.pk,
            job_timeout=settings.JOB_TIMEOUT,
            failure_ttl=7 * 24 * 3600,
        )
        type(self)._default_manager.filter(pk=self.pk).update(job_id=job.id)

    def claim(self) -> bool:
        """Queued to running, once: False when another worker or a cancel came first."""
        rows = type(self)._default_manager.filter(pk=self.pk, status=self.Status.QUEUED)
        return bool(rows.update(status=self.Status.RUNNING, started_at=timezone.now()))

    def cancel(self, *, statuses: tuple[str, ...] = ("queued", "running")) -> bool:
        """Cancel the job if it is in one of ``statuses``; False when it was not."""
        now = timezone.now()
        rows = type(self)._default_manager.filter(pk=self.pk, status__in=statuses)
        return bool(rows.update(status=self.Status.CANCELLED, cancelled_at=now, finished_at=now))
