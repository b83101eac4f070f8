"""Prompt versions, generation runs, their items, and the annotations they write.

Machine output is written once and never edited; human decisions live in the
``review`` app as new rows pointing at it.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Now
from django.utils import timezone

from seke_app.engine import cascade
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
    # What the version was fitted on: the ids of the review decisions its proposal was
    # computed from (``review`` writes and reads them; None: not recorded, for versions
    # made before SEKE recorded it), and every image those decisions touched.
    learned_from_decisions = models.JSONField(null=True, blank=True, default=list)
    learned_from_images = models.ManyToManyField(
        FaceImage, blank=True, related_name="prompt_versions_taught"
    )

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_prompt_version"
            ),
        ]

    def __str__(self) -> str:
        return f"v{self.number} {self.name}"

    def lineage(self) -> list[PromptVersion]:
        """The version and its ancestors, newest first.

        A version starts from its parent's text, so it may carry what any ancestor
        learned: an image any of them learned from is in-sample for it.
        """
        found: list[PromptVersion] = []
        version: PromptVersion | None = self
        while version is not None and version not in found:
            found.append(version)
            version = version.parent
        return found

    def learned_images(self) -> models.QuerySet[FaceImage]:
        """Every image the version or an ancestor learned from, or shows as an exemplar.

        Exemplars count on their own for versions made before what a version learned
        from was recorded (and for one pasted by hand).
        """
        lineage = self.lineage()
        taught = PromptVersion.learned_from_images.through.objects.filter(
            promptversion_id__in=[v.id for v in lineage]
        )
        codes = []
        for exemplar in (e for v in lineage for e in v.exemplars):
            with contextlib.suppress(ValueError):
                codes.append(uuid.UUID(str(exemplar.get("image_ref"))))
        return FaceImage.objects.filter(Q(id__in=taught.values("faceimage_id")) | Q(code__in=codes))

    def unrecorded_lineage(self) -> list[PromptVersion]:
        """The versions in the lineage that learned from reviews without a record of them.

        Their training images are unknown, so a figure on their images may be in-sample.
        """
        return [v for v in self.lineage() if v.learned_from_decisions is None and v.parent_id]


NAME_MAX_LENGTH = 100
STRONG_MODEL_MAX_LENGTH = 100


class Stage(models.TextChoices):
    """Which model of a cascade wrote an annotation or a sample (``engine.cascade``)."""

    CHEAP = cascade.CHEAP, "Cheap model"
    STRONG = cascade.STRONG, "Strong model (escalated)"


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
    # The run's number among its dataset's runs (1, 2, ...: "demo #3"), given when it
    # is created, and an optional name: together they tell runs apart (``label``).
    number = models.PositiveIntegerField()
    name = models.CharField(max_length=NAME_MAX_LENGTH, blank=True)
    backend = models.CharField(max_length=20, choices=Backend.choices)
    model_name = models.CharField(max_length=100)
    # A cascade (``engine.cascade``): the model the images ``model_name`` leaves
    # unsure go to, whose answer then decides. Empty: one model, no cascade.
    strong_model = models.CharField(max_length=STRONG_MODEL_MAX_LENGTH, blank=True)
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="runs")
    # SV-UAMC parameters as given to the engine (strategy, k0, kmax, step, temperature, thresholds).
    params = models.JSONField(default=dict)
    image_filter = models.JSONField(default=dict, blank=True)
    review_threshold = models.FloatField(default=0.7)
    budget_usd = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    concurrency = models.PositiveSmallIntegerField(default=4)
    # Share of flagged images that a second annotator reviews independently.
    double_review_share = models.FloatField(default=0.0)
    # Share of all the run's images sent to a blind audit, whatever their confidence
    # (at least MIN_AUDIT images where the run has them); the draw is seeded by
    # ``audit_seed`` and recorded on the items (``RunItem.audit``).
    audit_share = models.FloatField(default=0.05)
    audit_seed = models.BigIntegerField(default=0)
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
    # Sent through the OpenAI Batch API, a round of calls at a time (``RunBatch``),
    # at half the price, answered within 24 hours (``seke_app.runs.batches``).
    batch = models.BooleanField(default=False)
    # Whether the run's model has a known price when the run is created (the
    # offline annotator is free). Without one, cost_usd stays 0 and means
    # "unknown", never "free": ``known_cost`` is then None.
    priced = models.BooleanField(default=True)
    # Of a cascade: the images escalated to the strong model, and the strong model's
    # share of the usage above (recorded call by call the same way); the cheap
    # model's share is the rest.
    n_escalated = models.PositiveIntegerField(default=0)
    strong_requests = models.PositiveIntegerField(default=0)
    strong_prompt_tokens = models.PositiveBigIntegerField(default=0)
    strong_completion_tokens = models.PositiveBigIntegerField(default=0)
    strong_cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    FINISHED = frozenset(
        {Status.CANCELLED, Status.BUDGET_EXHAUSTED, Status.COMPLETED, Status.FAILED}
    )
    MIN_AUDIT = 50

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="run_status_created")]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="run_number_per_dataset"),
        ]

    @classmethod
    def audit_size(cls, share: float, n_images: int) -> int:
        """Images audited among ``n_images``: the share, but at least MIN_AUDIT of them.

        A share of a small run is too few references to estimate an error rate, so
        a run audits ``max(ceil(share * n), min(MIN_AUDIT, n))`` images; a share of
        0 turns audits off.
        """
        if share <= 0 or n_images <= 0:
            return 0
        return min(n_images, max(math.ceil(share * n_images), min(cls.MIN_AUDIT, n_images)))

    def __str__(self) -> str:
        return f"run {self.label}"

    @property
    def known_cost(self) -> Decimal | None:
        """What the run has cost so far, or None when its model's price is unknown."""
        return self.cost_usd if self.priced else None

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Numbered here rather than by each caller, so that no run is ever without
        # its number, however it is created.
        if self.number is None:
            with transaction.atomic():
                self.number = self.next_number(self.dataset_id)
                super().save(*args, **kwargs)
            return
        super().save(*args, **kwargs)

    @staticmethod
    def next_number(dataset_id: int) -> int:
        """The number the dataset's next run takes: one more than its highest so far.

        Called inside a transaction: the dataset's row is locked, so that two runs
        created at once on one dataset (PostgreSQL) take different numbers; SQLite
        serialises writers anyway. The unique constraint guards both.
        """
        Dataset.objects.select_for_update().filter(id=dataset_id).exists()
        highest = GenerationRun.objects.filter(dataset_id=dataset_id).aggregate(n=Max("number"))
        return (highest["n"] or 0) + 1

    @property
    def label(self) -> str:
        """How every page names the run: "demo #3 · baseline · 2026-12-06 00:35".

        The dataset and the run's number come first, so that a drop-down that cuts a
        long label keeps the part that tells two runs apart; the time is local.
        """
        created = timezone.localtime(self.created_at) if self.created_at else None
        parts = [f"{self.dataset.name} #{self.number}", self.name]
        parts.append(f"{created:%Y-%m-%d %H:%M}" if created else "")
        return " · ".join(part for part in parts if part)

    def rename(self, name: str) -> None:
        """Give the run a name (an empty one removes it); surrounding spaces are dropped."""
        name = " ".join(name.split())
        if len(name) > NAME_MAX_LENGTH:
            raise ValueError(f"a run's name has at most {NAME_MAX_LENGTH} characters")
        self.name = name
        GenerationRun.objects.filter(id=self.id).update(name=name)

    @property
    def is_cascade(self) -> bool:
        return bool(self.strong_model)

    @property
    def cheap_cost_usd(self) -> Decimal:
        """Of a cascade's cost, the run's own model's share (the strong model spent the rest)."""
        return Decimal(self.cost_usd) - Decimal(self.strong_cost_usd)

    @property
    def cheap_requests(self) -> int:
        return self.requests - self.strong_requests

    @property
    def n_remaining(self) -> int:
        return max(self.n_total - self.n_done - self.n_failed, 0)

    def n_in_flight(self) -> int:
        """Images a live worker is annotating now: held under a lease that has not run out.

        A stopped run (cancelled, at its cost cap, failed) starts no new image, but
        the images in flight finish and are kept; a dead worker's lease runs out.
        """
        return self.items.filter(status=RunItem.Status.LEASED, lease_until__gte=Now()).count()

    def is_settled(self) -> bool:
        """Finished, and no image is in flight: its counters change no more."""
        return self.is_finished() and not self.n_in_flight()

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
    # Drawn at run creation for the blind audit: its annotation goes to review
    # whatever its confidence, and the reviewer does not see the machine's answer.
    audit = models.BooleanField(default=False)
    # A batch run's replies to the image's calls so far, in call order
    # (``engine.llm.batch.Reply.to_json``): SV-UAMC is replayed from them every round.
    batch_replies = models.JSONField(default=list, blank=True)
    # How many of the image's batch lines failed or expired (sent again next round
    # until ``SEKE_BATCH_LINE_ATTEMPTS``).
    batch_failures = models.PositiveSmallIntegerField(default=0)

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


class RunBatch(models.Model):
    """One round of a batch run: the next call of every open image, as one Batch API job.

    ``status`` mirrors the endpoint's (``preparing`` until the batch is created
    there); the counts are the lines sent and what became of them, ``asked`` how
    many lines asked for first samples (``first``), extra samples (``more``) and
    verifications (``verify``). A batch is *collected* once its replies are recorded
    on the run's items; until then it is the run's open batch.
    """

    class Status(models.TextChoices):
        PREPARING = "preparing", "Preparing"
        VALIDATING = "validating", "Validating"
        IN_PROGRESS = "in_progress", "In progress"
        FINALIZING = "finalizing", "Finalizing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"
        CANCELLING = "cancelling", "Cancelling"
        CANCELLED = "cancelled", "Cancelled"

    ASKED_NAMES = {"first": "first samples", "more": "extra samples", "verify": "verification"}

    run = models.ForeignKey(GenerationRun, on_delete=models.CASCADE, related_name="batches")
    number = models.PositiveSmallIntegerField()
    batch_id = models.CharField(max_length=100, blank=True)
    input_file_id = models.CharField(max_length=100, blank=True)
    output_file_id = models.CharField(max_length=100, blank=True)
    error_file_id = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PREPARING)
    asked = models.JSONField(default=dict)
    # The lines sent, each [item id, call index, call kind, answers asked (k)].
    lines = models.JSONField(default=list)
    n_lines = models.PositiveIntegerField(default=0)
    n_completed = models.PositiveIntegerField(default=0)
    n_failed = models.PositiveIntegerField(default=0)
    n_expired = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    collected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="run_batch_number"),
        ]

    def __str__(self) -> str:
        return f"round {self.number} of {self.run_id} ({self.batch_id or 'not created'})"

    def asked_text(self) -> str:
        """What the round asked, in words: "extra samples 3 · verification 47"."""
        parts = [
            f"{name} {self.asked[key]}"
            for key, name in self.ASKED_NAMES.items()
            if self.asked.get(key)
        ]
        return " · ".join(parts)


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
    # ``flagged`` is SV-UAMC's verdict under the threshold the run had when the
    # image was annotated; ``held`` says that one of its reasons is one no threshold
    # lifts (``engine.uamc.FlagReason.held``: a revision or failure of the
    # verification, no valid sample). Whether it is confident now is ``confident()``.
    flagged = models.BooleanField(default=False)
    flag_reasons = models.JSONField(default=list)
    held = models.BooleanField(default=False)
    n_samples = models.PositiveSmallIntegerField(default=0)
    n_valid = models.PositiveSmallIntegerField(default=0)
    # In a cascade run, the model whose result this is ("" in a run of one model).
    # An escalated annotation ("strong") keeps the cheap stage's overall confidence
    # and answer (``cheap_result``: labels, held, reasons and usage); its samples
    # are kept too, marked by stage. ``requests`` to ``cost_usd`` count both stages.
    stage = models.CharField(max_length=6, choices=Stage.choices, blank=True)
    cheap_confidence = models.FloatField(null=True, blank=True)
    cheap_result = models.JSONField(default=dict, blank=True)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    # The grains ("expression", "va", "aus") the image's known labels gave: SV-UAMC
    # took them as inputs, so the answer carries the dataset's labels there and they
    # are never scored against them (``insights.references.reference_for``).
    known_grains = models.JSONField(default=list, blank=True)
    # Where each grain's value comes from: "dataset" (a given grain) or "model"; an
    # empty mapping (annotations made before it was recorded) means "model" for all.
    provenance = models.JSONField(default=dict, blank=True)
    # The grains the backend does not observe, each with the grain it was inferred
    # from ({"aus": "expression"} for the offline annotator).
    inferred_from = models.JSONField(default=dict, blank=True)
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

    def is_confident(self, threshold: float) -> bool:
        """The one rule of ``confident()``, for an annotation in hand."""
        return cascade.accepted(self.confidence, self.held, threshold)

    def grain_confidences(self) -> dict[str, float]:
        return {
            "expression": self.expression_confidence,
            "va": self.va_confidence,
            "aus": self.au_confidence,
        }

    def aus_dict(self) -> dict[int, bool]:
        return {int(au): bool(on) for au, on in self.aus.items()}

    def grain_provenance(self) -> dict[str, str]:
        """Each grain's provenance, "dataset" or "model" (see ``provenance``)."""
        return {g: str(self.provenance.get(g, "model")) for g in ("expression", "va", "aus")}


def confident() -> Q:
    """For a query over annotations: the annotation is auto-accepted under its run's
    *current* review threshold.

    Confident means: its overall confidence is at least the run's threshold, and
    it is not ``held`` (flagged for a reason no threshold changes). Everything
    that asks whether a machine label stands without review (curation, run
    selection, the run's counters, the review tasks a threshold change opens or
    closes) reads this rule.
    """
    return Q(held=False, confidence__gte=F("run__review_threshold"))


class ThresholdChange(models.Model):
    """One change of a run's review threshold: who, when, how, and what it did."""

    class Source(models.TextChoices):
        HAND = "hand", "Set by hand"
        CURVE = "curve", "From the risk-coverage curve"
        CERTIFICATE = "certificate", "From a certificate"

    run = models.ForeignKey(
        GenerationRun, on_delete=models.CASCADE, related_name="threshold_changes"
    )
    old = models.FloatField()
    new = models.FloatField()
    source = models.CharField(max_length=12, choices=Source.choices)
    note = models.CharField(max_length=300, blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    changed_at = models.DateTimeField(auto_now_add=True)
    # Review tasks the change opened (annotations that became unconfident) and
    # closed (annotations that became confident).
    n_opened = models.PositiveIntegerField(default=0)
    n_closed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"threshold of {self.run_id}: {self.old} -> {self.new}"


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
    # In a cascade run, the model that drew it (``Annotation.stage``); "" otherwise.
    stage = models.CharField(max_length=6, choices=Stage.choices, blank=True)
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


class RunCertificate(models.Model):
    """A certified auto-accept threshold for one run, or the finding that none can be.

    The admin states the grains that must be right, the error ``alpha`` allowed
    among auto-accepted annotations and the confidence level ``1 - delta``;
    ``insights.certificates`` certifies the run's overall confidence on its blind
    audit references (``engine.certify``). An audit reference counts as an error
    when any stated grain is wrong. ``threshold`` is None when nothing could be
    certified; ``needed`` then says how many audit references in all would be.

    A certificate belongs to the model and prompt version it was made for
    (``model_name``, ``prompt_version``), which are the run's: a run of another
    model or version has none until certified itself. It is *in force* while the
    run's latest threshold change is the one it made (``change``).
    """

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    run = models.ForeignKey(GenerationRun, on_delete=models.CASCADE, related_name="certificates")
    model_name = models.CharField(max_length=100)
    # A cascade run's strong model (``GenerationRun.strong_model``); empty otherwise.
    strong_model = models.CharField(max_length=STRONG_MODEL_MAX_LENGTH, blank=True)
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    grains = models.JSONField(default=list)
    alpha = models.FloatField()
    delta = models.FloatField()
    # The largest valence or arousal difference an answer may have and be right.
    va_distance = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    # Share of all the run's annotations auto-accepted at the threshold.
    coverage = models.FloatField(default=0.0)
    upper_bound = models.FloatField(null=True, blank=True)
    n_references = models.PositiveIntegerField(default=0)
    n_accepted_references = models.PositiveIntegerField(default=0)
    errors_accepted = models.PositiveIntegerField(default=0)
    # Audit references on which a stated grain was left unscored because the
    # model had been given it as a known label.
    n_given = models.PositiveIntegerField(default=0)
    # Audit references whose image had no audit task of this run because it already
    # had a decision or a waiting task when the run drew it (one image, one review):
    # the decision standing on it served (``insights.certificates.audit_rows``);
    # ``n_earlier_blind`` of them rest on blind decisions only.
    n_earlier = models.PositiveIntegerField(default=0)
    n_earlier_blind = models.PositiveIntegerField(default=0)
    needed = models.PositiveIntegerField(null=True, blank=True)
    method = models.CharField(max_length=300)
    change = models.OneToOneField(
        ThresholdChange, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    GRAIN_NAMES = {"expression": "expression", "va": "valence-arousal", "aus": "action units"}

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"certificate {self.code} of run {self.run_id}"

    def in_force(self) -> bool:
        """Whether the run's threshold is still the one this certificate set."""
        if self.change_id is None:
            return False
        latest = self.run.threshold_changes.values_list("id", flat=True).first()
        return bool(latest == self.change_id)

    def sentence(self) -> str:
        """The certificate in one sentence, as the run page and the dataset card state it."""
        grains = ", ".join(self.GRAIN_NAMES[g] for g in self.grains)
        if self.va_distance is not None:
            grains += f" (valence and arousal each within {self.va_distance:g})"
        level = f"{1 - self.delta:.0%}"
        if self.threshold is None or self.upper_bound is None:
            more = self.more_needed
            need = (
                f"about {more} more blind audit reviews would be needed"
                if more is not None
                else "at the error rates the audit shows (too close to the target, or above "
                "it), no audit of the run's annotations would certify with an 80 % chance"
            )
            return (
                f"Nothing certified for an error of at most {self.alpha:.1%} on {grains} "
                f"at {level} confidence from {self.n_references} audit references: {need}."
            )
        return (
            f"Threshold {self.threshold:.3f} certified: among auto-accepted annotations the "
            f"share with any of {grains} wrong is at most {self.alpha:.1%} with {level} "
            f"confidence (upper bound {self.upper_bound:.1%}; {self.errors_accepted} errors "
            f"among the {self.n_accepted_references} accepted of {self.n_references} audit "
            f"references{self._earlier()}); {self.coverage:.1%} of the run's annotations "
            "auto-accepted. "
            f"{self.method}; made {self.created_at:%Y-%m-%d %H:%M} for {self.models}, "
            f"prompt v{self.prompt_version.number}."
        )

    @property
    def models(self) -> str:
        """The model, or a cascade's two models, the certificate was made for."""
        if self.strong_model:
            return f"{self.model_name} escalating to {self.strong_model}"
        return self.model_name

    def _earlier(self) -> str:
        if not self.n_earlier:
            return ""
        return (
            f", {self.n_earlier} of them decisions the image already had when the run drew "
            f"it, {self.n_earlier_blind} of those blind"
        )

    @property
    def certified(self) -> bool:
        return self.threshold is not None

    @property
    def more_needed(self) -> int | None:
        """Audit references needed beyond those the certificate used."""
        return None if self.needed is None else max(0, self.needed - self.n_references)

    @property
    def audits_offered(self) -> int:
        """How many more audit reviews the page offers to open when nothing is certified."""
        return self.more_needed or GenerationRun.MIN_AUDIT


class CalibrationFit(models.Model):
    """A recalibration map for one model and prompt version, fitted on blind audits.

    It maps the raw overall confidence to the estimated probability that every
    grain in ``grains`` is right (``engine.calibration``). The raw confidence stays
    stored on the annotation; the map changes what is shown and the review queue's
    order, which mixes models and prompt versions (``insights.certificates``). The
    latest fit for a (model, prompt version) pair is the one that applies; a
    cascade's two models count as one model of their own.
    """

    model_name = models.CharField(max_length=100)
    # A cascade's strong model: a cascade's confidences are partly the strong
    # model's, so its map is its own (empty for a run of one model).
    strong_model = models.CharField(max_length=STRONG_MODEL_MAX_LENGTH, blank=True)
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    grains = models.JSONField(default=list)
    va_distance = models.FloatField(null=True, blank=True)
    # ``engine.calibration.CalibrationMap.to_json``.
    calibration = models.JSONField(default=dict)
    n_references = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["model_name", "prompt_version", "-created_at"], name="calibration_latest"
            )
        ]

    def __str__(self) -> str:
        return f"calibration of {self.model_name} v{self.prompt_version_id}"
