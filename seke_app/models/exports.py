"""Exports of curated data (FEID, FEAB, Label Studio): one row per export job."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from seke_app.media import exports_storage
from seke_app.models.jobs import QueuedJob


def exports_dir() -> Path:
    """SEKE_DATA_DIR/exports: the folder of the exports storage where that is a local
    folder, and where a worker writes an export before saving it to the storage."""
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
    # The file's name in the exports storage; empty until the export is done.
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

    def work_name(self) -> str:
        """What the job holds in the exports storage while it writes: its work folder,
        where the storage is a local folder, or a marker file in a bucket (the work
        folder is then on the worker's own disk, which other machines cannot see)."""
        return f"{self.code}/.work"

    def is_settled(self) -> bool:
        """Finished, and its job has let go of its work (it does so last, whatever the
        end: a cancelled export's job stops at its next progress write)."""
        return self.is_finished() and self._lets_go_of(exports_storage(), self.work_name())

    def file_name(self) -> str:
        return Path(self.file_path).name

    def absolute_path(self) -> Path | None:
        """The finished file on this machine's disk, or None when there is none (yet).

        For tools and tests beside an exports storage that is a local folder; SEKE
        itself reads the file through the storage (``export_file``), which may be a
        bucket, where there is no such path (NotImplementedError).
        """
        if self.status != self.Status.DONE or not self.file_path:
            return None
        return Path(exports_storage().path(self.file_path))
