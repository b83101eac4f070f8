"""Human review: tasks for flagged annotations and the decisions experts make.

A decision never modifies the machine annotation; it is a new row that points at
it and records the values before and after, per grain. The decision kinds and
actions are ``seke_app``'s (``seke_app.insights.references``), which reads the
decisions only through the store this app registers (``review.tasks.store``).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from seke_app.insights.references import DecisionAction, DecisionKind
from seke_app.models import EXPRESSION_CHOICES, Annotation, FaceImage, TrackedJob


class GoldQuestion(models.Model):
    """An image with labels an admin trusts, mixed into reviewers' queues unannounced."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    image = models.OneToOneField(FaceImage, on_delete=models.CASCADE, related_name="gold")
    expression = models.CharField(max_length=20, choices=EXPRESSION_CHOICES, null=True)
    valence = models.FloatField(null=True)
    arousal = models.FloatField(null=True)
    aus = models.JSONField(null=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"gold question on {self.image_id}"


class ReviewTask(models.Model):
    """One review of one annotation; an image has at most one live review round.

    An ``audit`` task is a blind one: its annotation was drawn at random from all
    of its run's annotations, and the reviewer labels the face without seeing the
    machine's answer. A task that no longer needs a decision (a duplicate, or its
    annotation became confident under a new threshold) is ``closed`` with the
    reason, never deleted.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLAIMED = "claimed", "Claimed"
        DONE = "done", "Done"
        CLOSED = "closed", "Closed without a decision"

    Kind = DecisionKind

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    annotation = models.ForeignKey(
        Annotation, on_delete=models.CASCADE, related_name="review_tasks"
    )
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.FIRST)
    # Set on gold-question tasks, which are made for one reviewer at claim time.
    gold = models.ForeignKey(
        GoldQuestion, null=True, blank=True, on_delete=models.CASCADE, related_name="tasks"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    audit = models.BooleanField(default=False)
    closed_reason = models.CharField(max_length=300, blank=True)
    # Set when an admin opened the task by hand to have the image reviewed again.
    opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Lower is reviewed first: the annotation's overall confidence, calibrated where
    # its model and prompt version have a map (``services._task_values``; an audit
    # task takes a random place instead), copied here along with the per-grain
    # confidences so that the queue is ordered by one index.
    priority = models.FloatField()
    expression_confidence = models.FloatField(default=0.0)
    va_confidence = models.FloatField(default=0.0)
    au_confidence = models.FloatField(default=0.0)
    holder = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="held_tasks",
    )
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["priority", "id"]
        indexes = [
            models.Index(fields=["status", "priority", "id"], name="task_queue_overall"),
            models.Index(fields=["status", "expression_confidence"], name="task_queue_expression"),
            models.Index(fields=["status", "va_confidence"], name="task_queue_va"),
            models.Index(fields=["status", "au_confidence"], name="task_queue_aus"),
            models.Index(fields=["holder", "status"], name="task_holder"),
            # The queue reads tasks that are open or claimed (expired leases count as
            # open) in confidence order; partial indexes give that order without a sort.
            models.Index(
                fields=["priority", "id"],
                condition=Q(status__in=["open", "claimed"]),
                name="task_available_overall",
            ),
            models.Index(
                fields=["expression_confidence", "id"],
                condition=Q(status__in=["open", "claimed"]),
                name="task_available_expression",
            ),
            models.Index(
                fields=["va_confidence", "id"],
                condition=Q(status__in=["open", "claimed"]),
                name="task_available_va",
            ),
            models.Index(
                fields=["au_confidence", "id"],
                condition=Q(status__in=["open", "claimed"]),
                name="task_available_aus",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="claimed", holder__isnull=False, lease_until__isnull=False)
                | ~Q(status="claimed"),
                name="claimed_task_has_holder",
            ),
            # One live task of each review round per annotation (an admin may open a
            # new one once it is decided: re-review); gold tasks are per reviewer.
            models.UniqueConstraint(
                fields=["annotation", "kind"],
                condition=~Q(kind=DecisionKind.GOLD) & Q(status__in=["open", "claimed"]),
                name="one_live_task_per_round",
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.code} ({self.kind}, {self.status})"


class ReviewDecision(models.Model):
    Action = DecisionAction

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    task = models.ForeignKey(ReviewTask, on_delete=models.CASCADE, related_name="decisions")
    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="decisions")
    image = models.ForeignKey(FaceImage, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="review_decisions"
    )
    action = models.CharField(max_length=20, choices=Action.choices)
    # The round of the task it decides: first, second (double review), adjudication, gold.
    kind = models.CharField(max_length=12, choices=DecisionKind.choices, default=DecisionKind.FIRST)
    # Made blind on an audit task (the task's flag, kept with the decision).
    audit = models.BooleanField(default=False)
    # The decided values per grain (after); null where the grain was not decided.
    expression = models.CharField(max_length=20, choices=EXPRESSION_CHOICES, null=True)
    valence = models.FloatField(null=True)
    arousal = models.FloatField(null=True)
    aus = models.JSONField(null=True)
    au_intensity = models.JSONField(default=dict, blank=True)
    # The machine's values at decision time (before), for history and feedback.
    before = models.JSONField(default=dict)
    note = models.TextField(blank=True)
    reject_reason = models.CharField(max_length=200, blank=True)
    time_spent_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    undone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["image", "-created_at"], name="decision_image_recent"),
            models.Index(fields=["reviewer", "-created_at"], name="decision_reviewer_recent"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(valence__isnull=True) | Q(valence__gte=-1, valence__lte=1),
                name="decision_valence_range",
            ),
            models.CheckConstraint(
                condition=Q(arousal__isnull=True) | Q(arousal__gte=-1, arousal__lte=1),
                name="decision_arousal_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.reviewer} at {self.created_at:%Y-%m-%d %H:%M}"


class GoldCheck(TrackedJob):
    """A prompt version and its parent run side by side on a gold set, before promotion.

    Its work is one SV-UAMC annotation per gold image and version, so ``n_total``
    is twice the number of gold images.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    version = models.ForeignKey(
        "seke_app.PromptVersion", on_delete=models.CASCADE, related_name="gold_checks"
    )
    parent = models.ForeignKey(
        "seke_app.PromptVersion", null=True, on_delete=models.CASCADE, related_name="+"
    )
    backend = models.CharField(max_length=20)
    model_name = models.CharField(max_length=100)
    include_imported = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    report = models.JSONField(default=dict)
    # Set when this check was the basis of a promotion; an override is recorded with why.
    promoted_at = models.DateTimeField(null=True, blank=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    override_reason = models.TextField(blank=True)

    FINISHED = frozenset({Status.DONE, Status.FAILED})

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"gold check of v{self.version.number} ({self.status})"

    @property
    def n_images(self) -> int:
        """The gold images compared (each annotated once per version)."""
        return self.n_total // 2
