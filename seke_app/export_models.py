"""Exports of curated data (FEID, FEAB, Label Studio): one row per export job.

Kept in its own module and imported at the bottom of ``seke_app.models`` so that
Django finds it as part of the app.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models


def exports_dir() -> Path:
    """Where export files live: SEKE_DATA_DIR/exports."""
    return Path(settings.DATA_DIR) / "exports"


class Export(models.Model):
    class Kind(models.TextChoices):
        FEID = "feid", "FEID instruction data"
        FEAB = "feab", "FEAB benchmark"
        LABELSTUDIO = "labelstudio", "Label Studio tasks"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    dataset = models.ForeignKey(
        "seke_app.Dataset", on_delete=models.CASCADE, related_name="exports"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # The ExportOptions the export was asked for, as JSON.
    options = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # Images to read (FEAB reads them twice: once to split, once to write).
    n_total = models.PositiveIntegerField(default=0)
    n_done = models.PositiveIntegerField(default=0)
    n_written = models.PositiveIntegerField(default=0)
    n_skipped = models.PositiveIntegerField(default=0)
    # Relative to exports_dir(); empty until the export is done.
    file_path = models.CharField(max_length=300, blank=True)
    file_size = models.PositiveBigIntegerField(default=0)
    job_id = models.CharField(max_length=100, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="export_status_created")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.dataset_id} ({self.status})"

    @property
    def progress(self) -> float:
        if not self.n_total:
            return 1.0 if self.status == self.Status.DONE else 0.0
        return min(self.n_done / self.n_total, 1.0)

    def is_finished(self) -> bool:
        return self.status in {self.Status.DONE, self.Status.FAILED, self.Status.CANCELLED}

    def file_name(self) -> str:
        return Path(self.file_path).name

    def absolute_path(self) -> Path | None:
        """The finished file, or None when there is none (yet)."""
        if self.status != self.Status.DONE or not self.file_path:
            return None
        return exports_dir() / self.file_path
