"""The review app's side of the decision contract (``seke_app.insights.references``).

``seke_app`` never imports this app; it reads decisions and gold questions only
through the store registered here when Django starts (``ReviewConfig.ready``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import models
from django.db.models import Exists, OuterRef

from review.models import GoldQuestion, ReviewDecision, ReviewTask
from seke_app.insights.references import (
    Decision,
    DecisionAction,
    DecisionKind,
    Labels,
)
from seke_app.models import Annotation

_FIELDS = (
    "image_id",
    "annotation_id",
    "kind",
    "action",
    "expression",
    "valence",
    "arousal",
    "aus",
    "annotation__expression",
    "annotation__valence",
    "annotation__arousal",
    "annotation__aus",
    "reviewer__username",
    "created_at",
    "audit",
)
_GOLD_FIELDS = ("image_id", "expression", "valence", "arousal", "aus")


def _counted() -> models.QuerySet[ReviewDecision]:
    """Decisions that stand: not undone, and not answers to gold questions."""
    return ReviewDecision.objects.filter(undone_at__isnull=True).exclude(kind=DecisionKind.GOLD)


def _decision(row: tuple[Any, ...]) -> Decision:
    return Decision(
        image_id=row[0],
        annotation_id=row[1],
        kind=DecisionKind(row[2]),
        action=DecisionAction(row[3]),
        decided=Labels.of(*row[4:8]),
        reviewed=Labels.of(*row[8:12]),
        reviewer=row[12],
        decided_at=row[13],
        audit=row[14],
    )


def decision_of(row: ReviewDecision) -> Decision:
    """A decision row as the contract reads it."""
    annotation = row.annotation
    return Decision(
        image_id=row.image_id,
        annotation_id=row.annotation_id,
        kind=DecisionKind(row.kind),
        action=DecisionAction(row.action),
        decided=Labels.of(row.expression, row.valence, row.arousal, row.aus),
        reviewed=Labels.of(
            annotation.expression, annotation.valence, annotation.arousal, annotation.aus
        ),
        reviewer=row.reviewer.get_username(),
        decided_at=row.created_at,
        audit=row.audit,
    )


class ReviewDecisionStore:
    def decisions(
        self,
        *,
        image_ids: models.QuerySet[Any] | None = None,
        annotations: models.QuerySet[Annotation] | None = None,
        double_reviewed: bool = False,
    ) -> Iterator[Decision]:
        rows = _counted()
        group = "image_id"
        if image_ids is not None:
            rows = rows.filter(image_id__in=image_ids)
        if annotations is not None:
            rows = rows.filter(annotation__in=annotations)
            group = "annotation_id"
        if double_reviewed:
            second = ReviewDecision.objects.filter(
                annotation=OuterRef("annotation"), kind=DecisionKind.SECOND
            )
            rows = rows.filter(Exists(second))
        ordered = rows.order_by(group, "-created_at", "-id").values_list(*_FIELDS)
        return (_decision(row) for row in ordered.iterator(chunk_size=2000))

    def gold_labels(self, image_ids: models.QuerySet[Any]) -> Iterator[tuple[int, Labels]]:
        rows = GoldQuestion.objects.filter(image_id__in=image_ids, active=True)
        for image_id, *values in rows.values_list(*_GOLD_FIELDS).iterator(chunk_size=2000):
            yield image_id, Labels.of(*values)

    def decision_exists(
        self, *, annotation: OuterRef | None = None, image: OuterRef | None = None
    ) -> Exists:
        rows = _counted()
        if annotation is not None:
            rows = rows.filter(annotation=annotation)
        if image is not None:
            rows = rows.filter(image=image)
        return Exists(rows)

    def review_waiting(
        self, *, annotation: OuterRef | None = None, image: OuterRef | None = None
    ) -> Exists:
        tasks = ReviewTask.objects.filter(
            status__in=[ReviewTask.Status.OPEN, ReviewTask.Status.CLAIMED]
        ).exclude(kind=DecisionKind.GOLD)
        if annotation is not None:
            tasks = tasks.filter(annotation=annotation)
        if image is not None:
            tasks = tasks.filter(annotation__image=image)
        return Exists(tasks)
