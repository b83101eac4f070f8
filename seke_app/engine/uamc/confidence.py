"""Confidence per grain, and the flag reasons in words."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from seke_app.engine.knowledge import Consistency
from seke_app.engine.types import (
    Answer,
    KnownLabels,
)
from seke_app.engine.uamc.aggregation import (
    Verification,
    _disputed_aus,
    _mass_phrase,
    _split_phrase,
)
from seke_app.engine.uamc.params import (
    GRAIN_NAMES,
    GRAINS,
    REVISED_FACTOR,
    SINGLE_VOTE_AGREEMENT,
    VA_CONTRADICTION,
    VA_SPREAD_SCALE,
    ConfidenceWeights,
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
    sd = uncertainty.va.largest_sd() or 0.0
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
) -> GrainConfidence:
    """Each grain's weighted geometric mean of agreement, verification and knowledge,
    with ``params.weights``, or ``params.graded_weights`` for a graded expression."""
    agreement = _agreements(uncertainty, answer.expression, vocabulary)
    knowledge_parts = {
        "expression": knowledge.score,
        "va": knowledge.va_score,
        "aus": knowledge.au_score,
    }
    verified, graded = _verification_parts(verification, answer.expression, vocabulary)
    components: dict[str, dict[str, float]] = {}
    for grain in GRAINS:
        parts = {"agreement": agreement[grain], "knowledge": knowledge_parts[grain]}
        if grain in verified:
            parts["verification"] = verified[grain]
        components[grain] = parts
    weights = {
        g: params.graded_weights if graded and g == "expression" else params.weights for g in GRAINS
    }
    values = {g: _weighted_geometric_mean(components[g], weights[g]) for g in GRAINS}
    return GrainConfidence(values["expression"], values["va"], values["aus"], components)


# --- Flags -------------------------------------------------------------------------


def _low_confidence_detail(grain: str, uncertainty: Uncertainty) -> str:
    n = uncertainty.n_votes
    if n < 2:
        return f"only {n} valid sample"
    if grain == "expression":
        votes = uncertainty.expression.votes
        mass = uncertainty.expression.mass
        detail = (
            _split_phrase(votes)
            if len(votes) > 1
            else f"all {n} samples chose {next(iter(votes))}, too few to be sure"
        )
        return f"{detail} ({_mass_phrase(mass)})" if uncertainty.expression.soft else detail
    if grain == "va":
        va = uncertainty.va
        return (
            f"valence/arousal samples spread with standard deviations "
            f"{va.valence.sd or 0.0:.2f} and {va.arousal.sd or 0.0:.2f}"
        )
    disputed = _disputed_aus(uncertainty)
    return f"AUs disputed: {disputed}" if disputed else "AUs conflict with knowledge"


def _confidence_reasons(
    confidence: GrainConfidence, uncertainty: Uncertainty, knowledge: Consistency, threshold: float
) -> list[str]:
    reasons = []
    for grain in GRAINS:
        value = confidence.of(grain)
        if value < threshold:
            reasons.append(
                f"{GRAIN_NAMES[grain]} confidence {value:.2f} under {threshold:.2f}: "
                + _low_confidence_detail(grain, uncertainty)
            )
    if reasons and knowledge.score < 1.0:
        reasons.extend(f"knowledge: {reason}" for reason in knowledge.reasons)
    return reasons


def _signed_pair(valence: float, arousal: float) -> str:
    return f"({valence:+.2f}, {arousal:+.2f})"


def _au_changes(before: Mapping[int, bool], after: Mapping[int, bool]) -> str:
    added = [f"AU{au}" for au in sorted(after) if after[au] and not before.get(au, False)]
    removed = [f"AU{au}" for au in sorted(before) if before[au] and not after.get(au, False)]
    parts = ([f"added {', '.join(added)}"] if added else []) + (
        [f"removed {', '.join(removed)}"] if removed else []
    )
    return "; ".join(parts) if parts else "no AU changed"


def _verification_reasons(verification: Verification, before: Answer) -> list[str]:
    if verification.problem is not None:
        return [f"verification failed: {verification.problem}"]
    after = verification.answer
    reasons = []
    if "expression" in verification.revised:
        reasons.append(
            f"verification revised the expression from {before.expression} to {after.expression}"
        )
    if "va" in verification.revised:
        reasons.append(
            "verification revised valence/arousal from "
            f"{_signed_pair(before.valence, before.arousal)} to "
            f"{_signed_pair(after.valence, after.arousal)}"
        )
    if "aus" in verification.revised:
        reasons.append(f"verification revised the AUs: {_au_changes(before.aus, after.aus)}")
    return reasons


def known_label_contradictions(answer: Answer, known: KnownLabels) -> list[str]:
    """Where the answer disagrees with the human labels that came with the image."""
    prefix = "contradicts the known human label: "
    reasons = []
    if known.expression is not None and known.expression != answer.expression:
        reasons.append(f"{prefix}expression {known.expression} (answer {answer.expression})")
    for name, label, value in (
        ("valence", known.valence, answer.valence),
        ("arousal", known.arousal, answer.arousal),
    ):
        if label is not None and abs(label - value) > VA_CONTRADICTION:
            reasons.append(f"{prefix}{name} {label:+.2f} (answer {value:+.2f})")
    differing = [
        f"AU{au} {'present' if on else 'absent'}"
        for au, on in sorted((known.aus or {}).items())
        if au in answer.aus and answer.aus[au] != on
    ]
    if differing:
        reasons.append(prefix + ", ".join(differing))
    return reasons
