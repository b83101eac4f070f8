"""Prompt versions, generation runs, their items, and the annotations they write.

Machine output is written once and never edited; human decisions live in the
``review`` app as new rows pointing at it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from seke_app.models.datasets import EXPRESSION_CHOICES, Dataset, FaceImage
from seke_app.models.jobs import TrackedJob


class PromptVersion(models.Model):
    """The knowledge given to the model; one version is active at a time."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    number = models.PositiveIntegerField(unique=True)
    name = models.CharField(max_length=200)
    knowledge_text = models.TextField()
    exemplars = models.JSONField(default=list, blank=True)
    rule_notes = models.TextField(blank=True)
    # For the offline annotator, which reads no prompt: fitted class priors and temperature.
    calibration = models.JSONField(default=dict, blank=True)
    fingerprint = models.CharField(max_length=64)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    is_active = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_prompt_version"
            ),
        ]

    def __str__(self) -> str:
        return f"v{self.number} {self.name}"


class GenerationRun(TrackedJob):
    class Backend(models.TextChoices):
        OFFLINE = "offline", "Offline CNN annotator (baseline)"
        OPENAI = "openai", "OpenAI-compatible VLLM"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        CANCELLING = "cancelling", "Cancelling"
        CANCELLED = "cancelled", "Cancelled"
        BUDGET_EXHAUSTED = "budget_exhausted", "Stopped: cost cap reached"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="runs")
    backend = models.CharField(max_length=20, choices=Backend.choices)
    model_name = models.CharField(max_length=100)
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="runs")
    # SV-UAMC parameters as given to the engine (strategy, k0, kmax, step, temperature, thresholds).
    params = models.JSONField(default=dict)
    image_filter = models.JSONField(default=dict, blank=True)
    review_threshold = models.FloatField(default=0.7)
    budget_usd = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    concurrency = models.PositiveSmallIntegerField(default=4)
    # Share of flagged images that a second annotator reviews independently.
    double_review_share = models.FloatField(default=0.0)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # When a job last took the run from queued to running: the start, or the last
    # resume of a stopped run. ``started_at`` keeps the first start; the throughput
    # counts images finished since this moment, not the time the run stood still.
    resumed_at = models.DateTimeField(null=True, blank=True)
    n_accepted = models.PositiveIntegerField(default=0)
    n_flagged = models.PositiveIntegerField(default=0)
    n_failed = models.PositiveIntegerField(default=0)
    # What the endpoint billed, added call by call as each call returns (also for
    # images that fail or are taken over later), so that these match the
    # endpoint's own count and the cost cap sees every call.
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    FINISHED = frozenset(
        {Status.CANCELLED, Status.BUDGET_EXHAUSTED, Status.COMPLETED, Status.FAILED}
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="run_status_created")]

    def __str__(self) -> str:
        return f"run {self.code} on {self.dataset.name}"

    @property
    def n_remaining(self) -> int:
        return max(self.n_total - self.n_done - self.n_failed, 0)

    @property
    def progress(self) -> float:
        """Failed images count as handled: they need a retry, not more waiting."""
        if not self.n_total:
            return 0.0
        return (self.n_done + self.n_failed) / self.n_total


class RunItem(models.Model):
    """One image's place in a run: claimed by a worker under a lease, done or failed.

    A lease is a time on the database's clock (``lease_until``) until which
    ``worker`` holds the item; the worker renews it while it works on the image,
    so that it can be short and a dead worker's images are taken over soon.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        LEASED = "leased", "In progress"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    run = models.ForeignKey(GenerationRun, on_delete=models.CASCADE, related_name="items")
    image = models.ForeignKey(FaceImage, on_delete=models.CASCADE, related_name="run_items")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    lease_until = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When the item became done or failed; the run's throughput counts these.
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "image"], name="run_item_unique"),
        ]
        indexes = [
            models.Index(fields=["run", "status"], name="run_item_status"),
            models.Index(fields=["run", "finished_at"], name="run_item_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.image_id} {self.status}"


class Annotation(models.Model):
    """SV-UAMC's result for one image in one run; written once, never edited."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    run = models.ForeignKey(GenerationRun, on_delete=models.CASCADE, related_name="annotations")
    image = models.ForeignKey(FaceImage, on_delete=models.CASCADE, related_name="annotations")
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT)
    expression = models.CharField(max_length=20, choices=EXPRESSION_CHOICES, null=True)
    expression_votes = models.JSONField(default=dict)
    expression_uncertainty = models.JSONField(default=dict)
    expression_confidence = models.FloatField(default=0.0)
    valence = models.FloatField(null=True)
    arousal = models.FloatField(null=True)
    va_samples = models.JSONField(default=list)
    va_uncertainty = models.JSONField(default=dict)
    va_confidence = models.FloatField(default=0.0)
    aus = models.JSONField(default=dict)
    au_intensity = models.JSONField(default=dict)
    au_rates = models.JSONField(default=dict)
    au_uncertainty = models.JSONField(default=dict)
    au_confidence = models.FloatField(default=0.0)
    evidence = models.JSONField(default=dict)
    consistency = models.FloatField(null=True)
    consistency_reasons = models.JSONField(default=list)
    verification = models.JSONField(default=dict)
    confidence = models.FloatField(default=0.0)
    flagged = models.BooleanField(default=False)
    flag_reasons = models.JSONField(default=list)
    n_samples = models.PositiveSmallIntegerField(default=0)
    n_valid = models.PositiveSmallIntegerField(default=0)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["run", "image"], name="annotation_unique_per_run"),
        ]
        indexes = [
            models.Index(fields=["image", "-created_at"], name="annotation_image_recent"),
            models.Index(fields=["run", "flagged", "confidence"], name="annotation_run_flag_conf"),
        ]

    def __str__(self) -> str:
        return f"annotation {self.code}"

    def grain_confidences(self) -> dict[str, float]:
        return {
            "expression": self.expression_confidence,
            "va": self.va_confidence,
            "aus": self.au_confidence,
        }

    def aus_dict(self) -> dict[int, bool]:
        return {int(au): bool(on) for au, on in self.aus.items()}


class AnnotationSample(models.Model):
    """One Monte Carlo sample or the verification reply, exactly as it came back."""

    class Kind(models.TextChoices):
        SAMPLE = "sample", "Sample"
        VERIFICATION = "verification", "Self-verification"

    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="samples")
    index = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=12, choices=Kind.choices)
    raw_text = models.TextField()
    parsed = models.JSONField(null=True)
    parse_error = models.TextField(blank=True)
    verdict = models.JSONField(null=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=10, decimal_places=6, default=0)

    class Meta:
        ordering = ["annotation", "index"]
        constraints = [
            models.UniqueConstraint(fields=["annotation", "index"], name="sample_unique_index"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.index} of {self.annotation_id}"

    @property
    def valid(self) -> bool:
        return self.parsed is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "parsed": self.parsed,
            "error": self.parse_error,
        }
