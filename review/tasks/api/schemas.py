"""What the review API answers and takes: tasks as the review page shows them, decisions,
and the bodies of its actions (see ``review.tasks.api``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.urls import reverse
from ninja import Field, Schema
from pydantic import ConfigDict

from review.models import ReviewDecision, ReviewTask
from review.tasks.context import panel_context
from review.tasks.services import task_holds
from seke_app.api.core import api_user, choices_schema
from seke_app.insights.references import DecisionAction, DecisionKind
from seke_app.models import Annotation
from seke_app.roles import is_admin

GRAINS = ("expression", "va", "aus")

# --- Output ----------------------------------------------------------------------------


TaskStatus = Annotated[ReviewTask.Status, choices_schema(ReviewTask.Status, "Task status")]


def _request_user(context: dict[str, Any]) -> User:
    request = context["request"]
    assert isinstance(request, HttpRequest)
    return api_user(request)


def _image(annotation: Annotation, context: dict[str, Any]) -> dict[str, Any]:
    image = annotation.image
    return {
        "code": image.code,
        "name": image.original_name,
        "dataset": image.dataset.code,
        "dataset_name": image.dataset.name,
        "file_url": context["request"].build_absolute_uri(
            reverse("api:image-file", kwargs={"code": image.code})
        ),
    }


class ImageOut(Schema):
    code: UUID
    name: str = Field(description="The image's file name.")
    dataset: UUID
    dataset_name: str
    file_url: str = Field(description="The face's file (GET it with the same token).")


class QueueRowOut(Schema):
    """What the queue page shows of a task beside its face."""

    expression: str | None = Field(description="The machine's expression.")
    priority: float = Field(
        description="The overall confidence, calibrated where the run's model and prompt"
        " version have a map: the queue's order."
    )
    expression_confidence: float
    va_confidence: float
    au_confidence: float
    flag_reasons: list[str]


class TaskOut(Schema):
    code: UUID
    url: str
    kind: DecisionKind = Field(
        description="first, second (an independent review), adjudication (admins)."
    )
    status: TaskStatus
    blind: bool = Field(
        description="A blind audit: label the face without the machine's answer, which is"
        " not shown."
    )
    run: UUID
    image: ImageOut
    holder: str | None = Field(
        description="Who holds the task: its holder for an admin; you, or null, for an annotator."
    )
    yours: bool = Field(description="You hold it under a lease that has not run out.")
    lease_until: datetime | None
    closed_at: datetime | None
    closed_reason: str
    machine: QueueRowOut | None = Field(
        description="The queue's row: the machine's answer and confidences (null when blind)."
    )

    @staticmethod
    def resolve_url(task: ReviewTask) -> str:
        return reverse("api:review-task", kwargs={"code": task.code})

    @staticmethod
    def resolve_kind(task: ReviewTask) -> str:
        # Annotated by ``_tasks``.
        return str(task.shown_kind)  # type: ignore[attr-defined]

    @staticmethod
    def resolve_blind(task: ReviewTask) -> bool:
        return task.audit

    @staticmethod
    def resolve_run(task: ReviewTask) -> UUID:
        return task.annotation.run.code

    @staticmethod
    def resolve_image(task: ReviewTask, context: dict[str, Any]) -> dict[str, Any]:
        return _image(task.annotation, context)

    @staticmethod
    def resolve_holder(task: ReviewTask, context: dict[str, Any]) -> str | None:
        user = _request_user(context)
        if task.holder is None or not (is_admin(user) or task.holder_id == user.id):
            return None
        return task.holder.get_username()

    @staticmethod
    def resolve_yours(task: ReviewTask, context: dict[str, Any]) -> bool:
        return task_holds(task, _request_user(context))

    @staticmethod
    def resolve_machine(task: ReviewTask) -> dict[str, Any] | None:
        if task.audit:
            return None
        return {
            "expression": task.annotation.expression,
            "priority": task.priority,
            "expression_confidence": task.expression_confidence,
            "va_confidence": task.va_confidence,
            "au_confidence": task.au_confidence,
            "flag_reasons": task.annotation.flag_reasons,
        }


class AuChoiceOut(Schema):
    au: int
    name: str


class MachineAuOut(Schema):
    au: int
    name: str
    present: bool
    rate: float = Field(description="The share of samples in which the AU was active.")
    intensity: str | None


class GrainOut(Schema):
    confidence: float
    provenance: Literal["dataset", "inferred", "model"]
    provenance_words: str = Field(description="The provenance as the page says it.")
    evidence: str = Field(description="What the model said it saw.")
    reasons: list[str] = Field(description="Why this grain was flagged.")


class MachineOut(Schema):
    """The machine's answer, as the review page shows it and fills the form with."""

    model_name: str = Field(
        description="The model whose answer this is: in a cascade run, the strong model"
        " where the image was escalated."
    )
    prompt_version: int
    confidence: float = Field(description="The overall confidence.")
    expression: str | None
    valence: float | None
    arousal: float | None
    aus: list[MachineAuOut] = Field(description="Every AU of the dataset's vocabulary.")
    expression_votes: dict[str, int]
    va_samples: list[Any]
    grains: dict[str, GrainOut] = Field(description="expression, va and aus.")
    other_reasons: list[str] = Field(description="Flag reasons about no one grain.")
    verification: dict[str, Any] = Field(description="The self-verification's verdicts.")


class KnownLabelsOut(Schema):
    """The dataset's own human labels for the face."""

    expression: str | None
    valence: float | None
    arousal: float | None
    aus: dict[int, bool] | None


class EarlierDecisionOut(Schema):
    created_at: datetime
    reviewer: str
    kind: DecisionKind
    blind: bool
    action: DecisionAction
    expression: str | None
    valence: float | None
    arousal: float | None
    reject_reason: str


class PanelOut(Schema):
    """What the review page shows of a task, and the choices its form offers."""

    expressions: list[str] = Field(description="The expressions to choose from.")
    aus: list[AuChoiceOut] = Field(description="The AUs to mark present.")
    lease_minutes: int = Field(description="How long a claim holds the task.")
    machine: MachineOut | None = Field(description="Null for a blind audit.")
    known_labels: KnownLabelsOut | None = Field(
        description="Null when the dataset gives none, and for a blind audit."
    )
    earlier_decisions: list[EarlierDecisionOut] | None = Field(
        description="The image's standing decisions, newest first; null for a blind audit."
    )


class TaskDetailOut(TaskOut):
    panel: PanelOut

    @staticmethod
    def resolve_panel(task: ReviewTask) -> dict[str, Any]:
        return _panel(task)


def _panel(task: ReviewTask) -> dict[str, Any]:
    """The page's panel (``panel_context``) as data; blind for an audit task."""
    context = panel_context(task)
    shown: dict[str, Any] = {
        "expressions": [expression for _, expression in context["expressions"]],
        "aus": [{"au": row["au"], "name": row["name"]} for row in context["au_rows"]],
        "lease_minutes": context["lease_minutes"],
        "machine": None,
        "known_labels": None,
        "earlier_decisions": None,
    }
    if task.audit:
        return shown
    annotation: Annotation = context["annotation"]
    image = context["image"]
    confidences = annotation.grain_confidences()
    run = context["run"]
    shown["machine"] = {
        # The model whose answer this is: a cascade's strong model where it was escalated.
        "model_name": run.strong_model if annotation.stage == "strong" else run.model_name,
        "prompt_version": annotation.prompt_version.number,
        "confidence": annotation.confidence,
        "expression": annotation.expression,
        "valence": annotation.valence,
        "arousal": annotation.arousal,
        "aus": [
            {
                "au": row["au"],
                "name": row["name"],
                "present": row["machine"],
                "rate": row["rate"],
                "intensity": row["intensity"] or None,
            }
            for row in context["au_rows"]
        ],
        "expression_votes": context["charts"]["votes"],
        "va_samples": context["charts"]["va_samples"],
        "grains": {
            grain: {
                "confidence": confidences[grain],
                "provenance": context["provenance"][grain]["kind"],
                "provenance_words": context["provenance"][grain]["words"],
                "evidence": str(annotation.evidence.get(grain, "")),
                "reasons": context["reasons"][grain],
            }
            for grain in GRAINS
        },
        "other_reasons": context["reasons"]["other"],
        "verification": context["verification"],
    }
    if image.has_known_labels():
        shown["known_labels"] = {
            "expression": image.known_expression,
            "valence": image.known_valence,
            "arousal": image.known_arousal,
            "aus": image.known_aus_dict(),
        }
    shown["earlier_decisions"] = [
        {
            "created_at": d.created_at,
            "reviewer": d.reviewer.get_username(),
            "kind": d.kind,
            "blind": d.audit,
            "action": d.action,
            "expression": d.expression,
            "valence": d.valence,
            "arousal": d.arousal,
            "reject_reason": d.reject_reason,
        }
        for d in context["earlier"]
    ]
    return shown


class DecisionOut(Schema):
    code: UUID
    task: UUID
    run: UUID
    image: ImageOut
    reviewer: str
    kind: DecisionKind = Field(description="The round of the task it decided.")
    blind: bool = Field(description="Made on a blind audit task.")
    action: DecisionAction
    expression: str | None
    valence: float | None
    arousal: float | None
    aus: dict[str, bool] | None
    au_intensity: dict[str, str]
    note: str
    reject_reason: str
    time_spent_ms: int
    before: dict[str, Any] | None = Field(
        description="The machine's values when the decision was made; null on a blind"
        " audit's decision except for admins."
    )
    created_at: datetime
    undone_at: datetime | None

    @staticmethod
    def resolve_task(decision: ReviewDecision) -> UUID:
        return decision.task.code

    @staticmethod
    def resolve_run(decision: ReviewDecision) -> UUID:
        return decision.annotation.run.code

    @staticmethod
    def resolve_image(decision: ReviewDecision, context: dict[str, Any]) -> dict[str, Any]:
        return _image(decision.annotation, context)

    @staticmethod
    def resolve_reviewer(decision: ReviewDecision) -> str:
        return decision.reviewer.get_username()

    @staticmethod
    def resolve_kind(decision: ReviewDecision) -> str:
        # Annotated by ``_decisions``.
        return str(decision.shown_kind)  # type: ignore[attr-defined]

    @staticmethod
    def resolve_blind(decision: ReviewDecision) -> bool:
        return decision.audit

    @staticmethod
    def resolve_before(decision: ReviewDecision, context: dict[str, Any]) -> dict[str, Any] | None:
        if decision.audit and not is_admin(_request_user(context)):
            return None
        before: dict[str, Any] = decision.before
        return before


class DecidedOut(Schema):
    detail: str
    decision: DecisionOut


class SkippedOut(Schema):
    detail: str
    task: UUID


class UndoneOut(Schema):
    detail: str
    undone: Literal["decision", "skip"]
    task: TaskDetailOut = Field(description="The task taken back, yours again.")


class ReleasedOut(Schema):
    detail: str
    released: list[UUID] = Field(description="The tasks given back to the queue.")


# --- Input -----------------------------------------------------------------------------


class ClaimIn(Schema):
    """The queue page's filters; every one optional."""

    model_config = ConfigDict(extra="forbid")

    run: UUID | None = Field(None, description="Only this run's tasks (its code).")
    dataset: UUID | None = Field(None, description="Only this dataset's tasks (its code).")
    machine_expression: str = Field(
        "", description="Only tasks whose machine expression is this (leaves blind audits out)."
    )
    flag_reason: str = Field(
        "", description="Only tasks with a flag reason containing this (leaves blind audits out)."
    )
    order: Literal["overall", "expression", "va", "aus"] = Field(
        "overall", description="Which confidence orders the queue, lowest first."
    )
    forget_skips: bool = Field(
        False,
        description="Offer again the tasks you skipped, as the queue page's Start reviewing does.",
    )


class DecisionIn(Schema):
    """The review page's form as JSON.

    A field left out keeps the value the page's form starts with: the machine's
    answer on a review (its expression, its valence and arousal as the page shows
    them, to three decimals, its AUs and their intensities), nothing on a blind
    audit. A correction that gives a new expression and leaves valence and arousal
    as the machine's is refused until ``va_confirmed`` is true, as on the page.
    """

    model_config = ConfigDict(extra="forbid")

    action: str = Field(
        description="accept (the machine's answer as is), correct (your values) or reject_image"
        " (with reject_reason). A correction that changes nothing is recorded as accept."
    )
    expression: str | None = None
    valence: float | None = Field(None, description="From -1 to 1, with arousal.")
    arousal: float | None = Field(None, description="From -1 to 1, with valence.")
    va_confirmed: bool = Field(
        False, description="Keep the machine's valence and arousal with a new expression."
    )
    aus: list[int] = Field(
        default_factory=list,
        description="The AUs present; every other AU of the dataset's vocabulary is absent.",
    )
    au_intensity: dict[int, str] = Field(
        default_factory=dict, description="AU number to intensity A-E, for AUs present."
    )
    note: str = ""
    reject_reason: str = ""
    time_spent_ms: int = Field(0, description="How long you looked at the face.")


class ReleaseIn(Schema):
    model_config = ConfigDict(extra="forbid")

    task: UUID | None = Field(None, description="Only this task; left out: every task you hold.")


class TaskFilters(Schema):
    run: UUID | None = Field(None, description="Only this run's tasks (its code).")
    status: TaskStatus | None = None
    kind: DecisionKind | None = None


class DecisionFilters(Schema):
    run: UUID | None = Field(None, description="Only decisions on this run's annotations.")
    reviewer: str | None = Field(None, description="Only this reviewer's (a username; admins).")
    since: datetime | None = Field(None, description="Only decisions made at or after this time.")
