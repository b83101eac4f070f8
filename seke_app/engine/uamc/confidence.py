"""Confidence per grain: predicted, given or inferred."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from seke_app.engine.knowledge import Consistency
from seke_app.engine.types import Answer
from seke_app.engine.uamc.aggregation import Verification
from seke_app.engine.uamc.params import (
    GRAINS,
    REVISED_FACTOR,
    SINGLE_VOTE_AGREEMENT,
    VA_SPREAD_SCALE,
    ConfidenceWeights,
    GrainRoles,
    UAMCParams,
)
from seke_app.engine.uamc.uncertainty import (
    Uncertainty,
    _order,
    plurality_posterior,
    vocabulary_probs,
)
from seke_app.engine.vocab import Vocabulary

# --- Confidence --------------------------------------------------------------------


@dataclass(frozen=True)
class GrainConfidence:
    """Confidence in [0, 1] of each grain, and the components behind it."""

    expression: float
    va: float
    aus: float
    components: dict[str, dict[str, float]] = field(default_factory=dict)

    def of(self, grain: str) -> float:
        return {"expression": self.expression, "va": self.va, "aus": self.aus}[grain]

    def overall(self) -> float:
        """The weakest grain's confidence (see the package docstring)."""
        return min(self.expression, self.va, self.aus)


def _weighted_geometric_mean(parts: Mapping[str, float], weights: ConfidenceWeights) -> float:
    total = sum(weights[name] for name in parts)
    if any(value <= 0 for value in parts.values()):
        return 0.0
    return math.exp(sum(weights[name] * math.log(v) for name, v in parts.items()) / total)


def _agreements(
    uncertainty: Uncertainty, expression: str, vocabulary: Vocabulary
) -> dict[str, float]:
    mass = uncertainty.expression.mass
    counts = [mass.get(e, 0.0) for e in vocabulary.expressions]
    agreement = {"expression": plurality_posterior(counts, _order(vocabulary, expression))}
    if uncertainty.n_votes < 2:
        agreement["va"] = agreement["aus"] = SINGLE_VOTE_AGREEMENT
        return agreement
    sd = uncertainty.va.total_sd() or 0.0
    agreement["va"] = 1.0 - min(1.0, sd / VA_SPREAD_SCALE)
    active = [r for r in uncertainty.aus.rates.values() if r > 0]
    agreement["aus"] = float(np.mean([abs(2 * r - 1) for r in active])) if active else 1.0
    return agreement


def _verification_parts(
    verification: Verification | None, expression: str, vocabulary: Vocabulary
) -> tuple[dict[str, float], bool]:
    """The verification component of each grain it gave a verdict on, and whether
    the expression's is graded.

    1 for "confirm", ``REVISED_FACTOR`` for "revise"; for the expression, the
    verifier's probability of the final expression instead when its reply carries
    probabilities (renormalised over the vocabulary), which grades a hesitant
    confirmation below a sure one.
    """
    if verification is None:
        return {}, False
    parts = {
        grain: 1.0 if verdict == "confirm" else REVISED_FACTOR
        for grain, verdict in verification.verdict.items()
        if verdict in ("confirm", "revise")
    }
    sample = verification.sample
    probs = vocabulary_probs(sample.expression_probs if sample else None, vocabulary)
    if "expression" not in parts or probs is None:
        return parts, False
    parts["expression"] = probs[expression]
    return parts, True


def grain_confidence(
    uncertainty: Uncertainty,
    answer: Answer,
    verification: Verification | None,
    knowledge: Consistency,
    vocabulary: Vocabulary,
    params: UAMCParams,
    roles: GrainRoles | None = None,
) -> GrainConfidence:
    """Each predicted grain's weighted geometric mean of agreement, verification and
    knowledge, with ``params.weights``, or ``params.graded_weights`` for a graded
    expression; 1 for a given grain (its one component, ``given``); the source's
    confidence for an inferred grain (its one component, ``inferred``)."""
    roles = roles or GrainRoles()
    agreement = _agreements(uncertainty, answer.expression, vocabulary)
    knowledge_parts = {
        "expression": knowledge.score,
        "va": knowledge.va_score,
        "aus": knowledge.au_score,
    }
    verified, graded = _verification_parts(verification, answer.expression, vocabulary)
    components: dict[str, dict[str, float]] = {}
    values: dict[str, float] = {}
    for grain in roles.predicted:
        parts = {"agreement": agreement[grain], "knowledge": knowledge_parts[grain]}
        if grain in verified:
            parts["verification"] = verified[grain]
        weights = params.graded_weights if graded and grain == "expression" else params.weights
        components[grain] = parts
        values[grain] = _weighted_geometric_mean(parts, weights)
    for grain in roles.given:
        components[grain] = {"given": 1.0}
        values[grain] = 1.0
    # A source is observed or given, never inferred itself (``GrainRoles.of``).
    for grain, source in roles.inferred_from.items():
        components[grain] = {"inferred": values[source]}
        values[grain] = values[source]
    ordered = {g: components[g] for g in GRAINS}
    return GrainConfidence(values["expression"], values["va"], values["aus"], ordered)
