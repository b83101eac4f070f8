"""Exports of curated data (FEID, FEAB, Label Studio): one row per export job."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from seke_app.models.jobs import QueuedJob


def exports_dir() -> Path:
    """Where export files live: SEKE_DATA_DIR/exports."""
    return Path(settings.DATA_DIR) / "exports"


class Export(QueuedJob):
    class Kind(models.TextChoices):
        FEID = "feid", "FEID instruction data"
        FEAB = "feab", "FEAB benchmark"
        LABELSTUDIO = "labelstudio", "Label Studio tasks"

    dataset = models.ForeignKey(
        "seke_app.Dataset", on_delete=models.CASCADE, related_name="exports"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # The ExportOptions the export was asked for, as JSON.
    options = models.JSONField(default=dict)
    # n_total counts images to read (FEAB reads them twice: once to split, once to write).
    n_written = models.PositiveIntegerField(default=0)
    n_skipped = models.PositiveIntegerField(default=0)
    # Why the skipped images were left out: {reason in words: count}, summing to n_skipped.
    skipped_by_reason = models.JSONField(default=dict, blank=True)
    # Relative to exports_dir(); empty until the export is done.
    file_path = models.CharField(max_length=300, blank=True)
    file_size = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="export_status_created")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.dataset_id} ({self.status})"

    @property
    def progress(self) -> float:
        """An export of no images is complete once it is done."""
        if not self.n_total:
            return 1.0 if self.status == self.Status.DONE else 0.0
        return super().progress

    def is_settled(self) -> bool:
        """Finished, and its job has removed its work folder (it does so last, whatever
        the end: a cancelled export's job stops at its next progress write)."""
        return self.is_finished() and self._lets_go_of(exports_dir() / str(self.code) / ".work")

    def file_name(self) -> str:
        return Path(self.file_path).name

    def absolute_path(self) -> Path | None:
        """The finished file, or None when there is none (yet)."""
        if self.status != self.Status.DONE or not self.file_path:
            return None
        return exports_dir() / self.file_path
