"""Agreement between the two independent reviews of double-reviewed annotations.

A flagged annotation chosen for double review gets a first and a second review
(``ReviewDecision.kind``); this module pairs the latest of each, not undone, and
measures per grain how well they agree: Cohen's kappa for the expression, kappa
with prevalence per AU, and the mean valence-arousal distance. A review stands
behind the same values per grain as in curation (``references.decision_labels``).
Pairs where a reviewer rejected the image are counted apart: they have no labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import models
from django.db.models import Exists, OuterRef

from seke_app.engine import quality
from seke_app.models import Annotation
from seke_app.services.references import (
    DECISION_VALUE_FIELDS,
    Labels,
    decision_labels,
    related_model,
)

_FIELDS = ("annotation_id", *DECISION_VALUE_FIELDS)


@dataclass
class ReviewerAgreement:
    n_pairs: int = 0
    n_rejected: int = 0
    n_adjudicated: int = 0
    n_expression: int = 0
    expression_agreement: float | None = None
    expression_kappa: float | None = None
    n_va: int = 0
    va_distance: float | None = None
    va_within: float | None = None
    aus: list[quality.AUAgreement] = field(default_factory=list)


def _pairs(
    rows: Any,
) -> tuple[list[tuple[Labels, Labels]], int, int]:
    """The latest first and second review of each annotation, paired; and the counts."""
    latest: dict[int, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        latest.setdefault(row["annotation_id"], {}).setdefault(row["kind"], row)
    pairs, rejected, adjudicated = [], 0, 0
    for kinds in latest.values():
        adjudicated += "adjudication" in kinds
        first, second = kinds.get("first"), kinds.get("second")
        if first is None or second is None:
            continue
        if "reject_image" in (first["action"], second["action"]):
            rejected += 1
            continue
        pairs.append((decision_labels(first), decision_labels(second)))
    return pairs, rejected, adjudicated


def agreement_of(pairs: list[tuple[Labels, Labels]]) -> ReviewerAgreement:
    """Per-grain agreement of paired labels (each grain over the pairs that have it)."""
    result = ReviewerAgreement(n_pairs=len(pairs))
    expressions = [(a.expression, b.expression) for a, b in pairs if a.expression and b.expression]
    if expressions:
        first, second = zip(*expressions, strict=True)
        result.n_expression = len(expressions)
        result.expression_agreement = float(np.mean([a == b for a, b in expressions]))
        result.expression_kappa = quality.cohen_kappa(list(first), list(second))
    vas = [(a.va, b.va) for a, b in pairs if a.va is not None and b.va is not None]
    if vas:
        result.n_va = len(vas)
        result.va_distance = quality.mean_va_distance([a for a, _ in vas], [b for _, b in vas])
        result.va_within = float(np.mean([quality.va_agrees(a, b) for a, b in vas]))
    tables: dict[int, Any] = {}
    for a, b in pairs:
        if a.aus is None or b.aus is None:
            continue
        for au in set(a.aus) | set(b.aus):
            table = tables.setdefault(au, np.zeros((2, 2), dtype=np.int64))
            table[int(bool(a.aus.get(au))), int(bool(b.aus.get(au)))] += 1
    result.aus = [quality.AUAgreement.from_table(au, tables[au]) for au in sorted(tables)]
    return result


def reviewer_agreement(*, annotations: models.QuerySet[Annotation]) -> ReviewerAgreement:
    """How the first and second reviews of these annotations agree (one query)."""
    decisions = related_model("decisions")._default_manager
    # Only double-reviewed annotations: single reviews would only be read and dropped.
    second = decisions.filter(annotation=OuterRef("annotation"), kind="second")
    rows = (
        decisions.filter(
            annotation__in=annotations,
            undone_at__isnull=True,
            kind__in=["first", "second", "adjudication"],
        )
        .filter(Exists(second))
        .order_by("annotation_id", "-created_at", "-id")
        .values(*_FIELDS)
    )
    pairs, rejected, adjudicated = _pairs(rows.iterator(chunk_size=2000))
    result = agreement_of(pairs)
    result.n_rejected = rejected
    result.n_adjudicated = adjudicated
    return result
