"""Agreement between the two independent reviews of double-reviewed annotations.

A flagged annotation chosen for double review gets a first and a second review
(``DecisionKind``); this module pairs the latest of each and measures per grain
how well they agree: Cohen's kappa for the expression, kappa with prevalence per
AU, and the mean valence-arousal distance. A review stands behind the same values
per grain as everywhere else (``Decision.labels`` in ``references``). Pairs where
a reviewer rejected the image are counted apart: they have no labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import models

from seke_app.engine import quality
from seke_app.insights.references import Decision, DecisionKind, Labels, decision_store
from seke_app.models import Annotation


@dataclass
class GrainAgreement:
    """How two raters agree per grain, each grain over the pairs that label it."""

    n_expression: int = 0
    expression_agreement: float | None = None
    expression_kappa: float | None = None
    n_va: int = 0
    va_distance: float | None = None
    va_within: float | None = None
    n_aus: int = 0
    aus_all_equal: float | None = None
    aus: list[quality.AUAgreement] = field(default_factory=list)

    @property
    def expression_kappa_undefined(self) -> bool:
        """Kappa is undefined when both raters gave one and the same expression throughout."""
        return self.expression_kappa is not None and math.isnan(self.expression_kappa)

    @property
    def aus_with_kappa(self) -> list[quality.AUAgreement]:
        """The AUs whose kappa can be computed."""
        return [row for row in self.aus if not math.isnan(row.kappa)]

    @property
    def aus_without_kappa(self) -> dict[str, list[int]]:
        """The AUs whose kappa cannot be computed, by the one answer both raters always gave.

        Kappa corrects agreement for chance; when both raters answer "absent" (or
        both "present") on every item, chance agreement is already total and the
        correction divides by zero. Keys: "absent" and "present".
        """
        found: dict[str, list[int]] = {"absent": [], "present": []}
        for row in self.aus:
            if math.isnan(row.kappa):
                found["present" if row.prevalence >= 0.5 else "absent"].append(row.au)
        return found


class AgreementTally:
    """Pairs of labels, added one at a time (so that a caller can stream them)."""

    def __init__(self) -> None:
        self.expressions: list[tuple[str, str]] = []
        self.va: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self.aus_equal: list[bool] = []
        self.au_tables: dict[int, Any] = {}

    def add(self, a: Labels, b: Labels) -> None:
        if a.expression and b.expression:
            self.expressions.append((a.expression, b.expression))
        if a.va is not None and b.va is not None:
            self.va.append((a.va, b.va))
        if a.aus and b.aus:
            self.aus_equal.append(quality.aus_agree(a.aus, b.aus))
            for au in set(a.aus) | set(b.aus):
                table = self.au_tables.setdefault(au, np.zeros((2, 2), dtype=np.int64))
                table[int(bool(a.aus.get(au))), int(bool(b.aus.get(au)))] += 1

    def fill(self, result: GrainAgreement) -> None:
        """Set ``result``'s per-grain figures (the first rater in the tables' rows)."""
        if self.expressions:
            first = [a for a, _ in self.expressions]
            second = [b for _, b in self.expressions]
            result.n_expression = len(first)
            result.expression_agreement = float(np.mean([a == b for a, b in self.expressions]))
            result.expression_kappa = quality.cohen_kappa(first, second)
        if self.va:
            result.n_va = len(self.va)
            result.va_distance = quality.mean_va_distance(
                [a for a, _ in self.va], [b for _, b in self.va]
            )
            result.va_within = float(np.mean([quality.va_agrees(a, b) for a, b in self.va]))
        if self.aus_equal:
            result.n_aus = len(self.aus_equal)
            result.aus_all_equal = float(np.mean(self.aus_equal))
        result.aus = [
            quality.AUAgreement.from_table(au, self.au_tables[au]) for au in sorted(self.au_tables)
        ]


@dataclass
class ReviewerAgreement(GrainAgreement):
    n_pairs: int = 0
    n_rejected: int = 0
    n_adjudicated: int = 0


def _pairs(
    decisions: Iterable[Decision],
) -> tuple[list[tuple[Labels, Labels]], int, int]:
    """The latest first and second review of each annotation, paired; and the counts."""
    latest: dict[int, dict[DecisionKind, Decision]] = {}
    for decision in decisions:
        latest.setdefault(decision.annotation_id, {}).setdefault(decision.kind, decision)
    pairs, rejected, adjudicated = [], 0, 0
    for kinds in latest.values():
        adjudicated += DecisionKind.ADJUDICATION in kinds
        first, second = kinds.get(DecisionKind.FIRST), kinds.get(DecisionKind.SECOND)
        if first is None or second is None:
            continue
        if first.rejects or second.rejects:
            rejected += 1
            continue
        pairs.append((first.labels, second.labels))
    return pairs, rejected, adjudicated


def reviewer_agreement(*, annotations: models.QuerySet[Annotation]) -> ReviewerAgreement:
    """How the first and second reviews of these annotations agree (one query)."""
    decisions = decision_store().decisions(annotations=annotations, double_reviewed=True)
    pairs, rejected, adjudicated = _pairs(decisions)
    tally = AgreementTally()
    for first, second in pairs:
        tally.add(first, second)
    result = ReviewerAgreement(n_pairs=len(pairs), n_rejected=rejected, n_adjudicated=adjudicated)
    tally.fill(result)
    return result
