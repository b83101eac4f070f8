"""The fields and rules shared by every background job that a page follows.

A generation run, an export and a gold-set check are each one row that a worker
updates as it goes: who asked for it and when, when it started and finished, how
far it is, the queue's job id and the error that stopped it. Each subclass adds
its own ``Status`` choices and names the statuses after which nothing changes.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.conf import settings
from django.db import models


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

    @property
    def progress(self) -> float:
        """The share of the work done, in [0, 1]."""
        if not self.n_total:
            return 0.0
        return min(self.n_done / self.n_total, 1.0)
