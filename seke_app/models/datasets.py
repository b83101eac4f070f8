"""Datasets and their faces, with the human labels a source dataset already has."""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Q

from seke_app.engine.vocab import AU_VOCABULARIES, EXPRESSIONS, Vocabulary
from seke_app.media import imports_storage
from seke_app.models.jobs import QueuedJob

EXPRESSION_CHOICES = [(e, e) for e in EXPRESSIONS]
AU_VOCABULARY_CHOICES = [(name, name) for name in AU_VOCABULARIES]


class Dataset(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    licence_note = models.TextField(blank=True)
    au_vocabulary = models.CharField(
        "AU vocabulary", max_length=20, choices=AU_VOCABULARY_CHOICES, default="feid17"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.named(self.au_vocabulary)


class FaceImage(models.Model):
    """One face in one dataset; the file itself is stored once per content hash."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="images")
    sha256 = models.CharField(max_length=64)
    file = models.FileField(max_length=200)
    image_format = models.CharField(max_length=10)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    original_name = models.CharField(max_length=500)
    subject = models.CharField(max_length=100, blank=True)
    split = models.CharField(max_length=50, blank=True)
    licence_note = models.TextField(blank=True)
    # Human labels the source dataset already has; each grain may be missing.
    known_expression = models.CharField(
        max_length=20, choices=EXPRESSION_CHOICES, null=True, blank=True
    )
    known_valence = models.FloatField(null=True, blank=True)
    known_arousal = models.FloatField(null=True, blank=True)
    # {"12": true, "4": false, ...}: only the AUs the source coded.
    known_aus = models.JSONField(null=True, blank=True)
    rejected = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "sha256"], name="image_unique_per_dataset"),
            models.CheckConstraint(
                condition=Q(known_valence__isnull=True)
                | Q(known_valence__gte=-1, known_valence__lte=1),
                name="image_known_valence_range",
            ),
            models.CheckConstraint(
                condition=Q(known_arousal__isnull=True)
                | Q(known_arousal__gte=-1, known_arousal__lte=1),
                name="image_known_arousal_range",
            ),
        ]
        indexes = [
            models.Index(fields=["sha256"], name="image_sha256"),
            models.Index(fields=["dataset", "split"], name="image_dataset_split"),
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name}/{self.original_name}"

    def known_aus_dict(self) -> dict[int, bool] | None:
        if self.known_aus is None:
            return None
        return {int(au): bool(on) for au, on in self.known_aus.items()}

    def has_known_labels(self) -> bool:
        return (
            self.known_expression is not None
            or self.known_valence is not None
            or self.known_aus is not None
        )


def imports_dir() -> Path:
    """SEKE_DATA_DIR/imports: where a request writes its uploads as they arrive, where
    a worker copies an upload from a bucket to read it, and the folder of the imports
    storage (where uploads wait for their job) when that is a local folder."""
    return Path(settings.DATA_DIR) / "imports"


class DatasetImport(QueuedJob):
    """One upload from the import page, imported by a job on the "default" queue.

    The upload is kept in the imports storage, under ``folder_name()``, until the
    job ends (whatever the end), then removed: the images are in the media storage
    by then. ``n_total``
    counts the image files to check and ``n_done`` those checked so far. The
    dataset is created with its first accepted image, so an import that accepts
    none fails and creates nothing.
    """

    # How many rejections are kept, with their file names and reasons; every one
    # is counted in ``n_rejected`` and ``rejected_by_reason``.
    REJECTIONS_KEPT = 500

    dataset_name = models.SlugField(max_length=100)
    dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="imports"
    )
    # Empty: the dataset's own vocabulary (feid17 for a new one).
    au_vocabulary = models.CharField(max_length=20, blank=True)
    licence_note = models.TextField(blank=True)
    # What was uploaded, as the user named it ("faces.zip", or "3 files: ...").
    upload_name = models.CharField(max_length=300)
    upload_size = models.PositiveBigIntegerField(default=0)
    # The zip or folder to import, its name in the imports storage; gone once finished.
    upload_path = models.CharField(max_length=300, blank=True)
    n_imported = models.PositiveIntegerField(default=0)
    n_labelled = models.PositiveIntegerField(default=0)
    n_duplicates = models.PositiveIntegerField(default=0)
    n_rejected = models.PositiveIntegerField(default=0)
    # [[file, reason, detail], ...]: the first REJECTIONS_KEPT rejections.
    rejected = models.JSONField(default=list, blank=True)
    rejected_by_reason = models.JSONField(default=dict, blank=True)
    warnings = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"import of {self.upload_name} into {self.dataset_name} ({self.status})"

    @property
    def progress(self) -> float:
        """An import with no image to check is complete once it has run."""
        if not self.n_total:
            return 1.0 if self.status in (self.Status.DONE, self.Status.FAILED) else 0.0
        return super().progress

    def folder_name(self) -> str:
        """The folder of the imports storage the upload is kept in while the job waits
        or runs."""
        return str(self.code)

    def folder(self) -> Path:
        """That folder on this machine's disk, for tools and tests beside an imports
        storage that is a local folder (NotImplementedError for a bucket)."""
        return Path(imports_storage().path(self.folder_name()))

    def is_settled(self) -> bool:
        """Finished, and its job has let go of the upload, which it removes last.

        An import cancelled while it runs still imports the batch it is on and then
        counts it on the row: its page follows it until then.
        """
        return self.is_finished() and self._lets_go_of(imports_storage(), self.folder_name())

    def source_path(self) -> Path:
        """The upload on this machine's disk, as ``folder`` gives its folder."""
        return Path(imports_storage().path(self.upload_path))

    def upload_is_zip(self) -> bool:
        """A zip, rather than a folder of the image files uploaded one by one."""
        return self.upload_path.endswith(".zip")
