"""Flag reasons: why an item goes to review, in words that agree with its answer.

Each reason is a ``FlagReason``: its words, the grain it speaks of, and its kind.
The kind says whether a review threshold can lift it: a grain's confidence under
the threshold (``low_confidence``) and the knowledge conflicts listed beside such a
reason (``knowledge``) go away when the threshold is lowered far enough; a revision
by the verification (``revised``), a failed verification (``verification_failed``)
and the absence of any valid sample (``no_answer``) do not (``FlagReason.held``).

The words describe the final answer and how it was reached, never only the votes:

* a reason names the votes (a split or a unanimous choice), the probabilities as
  mean probabilities over the samples (each sample's sum to one, so none is above
  1), and, where the answer is not the vote's leader, why: chosen by the largest
  mean probability, chosen by the knowledge among tied classes, or revised by the
  verification;
* a value under the threshold is written with as many decimals as it takes for
  the comparison to be visibly true (0.698 under 0.700, never 0.70 under 0.70);
* it ends with the components behind the confidence, so that a unanimous vote
  that still scores low says what pulled it down (the samples' own probabilities,
  the verification or the knowledge);
* a given grain has no reason (it is the dataset's label), and neither has an
  inferred grain: it carries the confidence of what it follows, whose reason
  already says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from seke_app.engine.knowledge import Consistency
from seke_app.engine.types import Answer, Sample
from seke_app.engine.uamc.aggregation import (
    Verification,
    _disputed_aus,
    _split_phrase,
    share_phrase,
)
from seke_app.engine.uamc.confidence import GrainConfidence
from seke_app.engine.uamc.params import GRAIN_NAMES, GRAINS, GrainRoles
from seke_app.engine.uamc.uncertainty import ExpressionStats, Uncertainty

ReasonKind = Literal["low_confidence", "knowledge", "revised", "verification_failed", "no_answer"]
# The kinds a review threshold can lift; every other kind holds the item for review.
THRESHOLD_KINDS: frozenset[str] = frozenset({"low_confidence", "knowledge"})
COMPONENT_NAMES = {
    "agreement": "sample agreement",
    "verification": "verification",
    "knowledge": "knowledge fit",
}


@dataclass(frozen=True)
class FlagReason:
    """One cause of a flag: its kind, its words, and the grain it speaks of."""

    kind: ReasonKind
    text: str
    grain: str | None = None

    @property
    def held(self) -> bool:
        """Whether no review threshold lifts this reason."""
        return self.kind not in THRESHOLD_KINDS

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "grain": self.grain, "held": self.held}


@dataclass(frozen=True)
class Outcome:
    """How the final answer was reached: the aggregate of the votes, the answer after
    the verification, and the verification itself."""

    aggregate: Answer
    answer: Answer
    verification: Verification | None

    def revised(self, grain: str) -> bool:
        return self.verification is not None and grain in self.verification.revised


def below(value: float, threshold: float) -> tuple[str, str]:
    """``value`` and ``threshold`` (value < threshold) written so that they differ:
    two decimals, or more where two would round them to the same figure."""
    for digits in range(2, 7):
        shown, limit = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if float(shown) < float(limit):
            return shown, limit
    return repr(value), repr(threshold)


# --- Low confidence ----------------------------------------------------------------


def _how_chosen(stats: ExpressionStats, chosen: str) -> str:
    """Why the aggregate is ``chosen`` when the votes alone do not name it; else ""."""
    most = max(stats.votes.values())
    if [e for e, n in stats.votes.items() if n == most] == [chosen]:
        return ""
    heaviest = max(stats.mass.values())
    leaders = [e for e, m in stats.mass.items() if m >= heaviest - 1e-9]
    if leaders == [chosen]:
        return f"{chosen} chosen by the largest mean probability"
    return f"{chosen} chosen by the knowledge among the tied classes"


def _votes_phrase(uncertainty: Uncertainty) -> str:
    n = uncertainty.n_votes
    votes = uncertainty.expression.votes
    if n == 1:
        return f"only 1 valid sample, which chose {next(iter(votes))}"
    if len(votes) == 1:
        return f"all {n} samples chose {next(iter(votes))}"
    return _split_phrase(votes)


def _expression_detail(uncertainty: Uncertainty, outcome: Outcome) -> str:
    chosen, final = outcome.aggregate.expression, outcome.answer.expression
    parts = [_votes_phrase(uncertainty)]
    if uncertainty.expression.soft:
        parts.append(share_phrase(uncertainty))
    how = _how_chosen(uncertainty.expression, chosen)
    if how:
        parts.append(how)
    if final != chosen:
        parts.append(f"revised by the verification from {chosen} to {final}")
    return "; ".join(parts)


def _signed_pair(valence: float, arousal: float) -> str:
    return f"({valence:+.2f}, {arousal:+.2f})"


def _va_detail(uncertainty: Uncertainty, outcome: Outcome) -> str:
    va = uncertainty.va
    if uncertainty.n_votes < 2:
        detail = "only 1 valid sample"
    else:
        detail = (
            f"the samples' valence and arousal have standard deviations "
            f"{va.valence.sd or 0.0:.2f} and {va.arousal.sd or 0.0:.2f}"
        )
        if va.reported_sd is not None:
            detail += (
                f", and each reading carries the annotator's own error of "
                f"{va.reported_sd[0]:.2f} and {va.reported_sd[1]:.2f}"
            )
    if outcome.revised("va"):
        answer = outcome.answer
        detail += "; revised by the verification to " + _signed_pair(answer.valence, answer.arousal)
    return detail


def _aus_detail(uncertainty: Uncertainty, outcome: Outcome) -> str:
    if uncertainty.n_votes < 2:
        detail = "only 1 valid sample"
    else:
        disputed = _disputed_aus(uncertainty)
        detail = f"AUs disputed: {disputed}" if disputed else "the samples agree on every AU"
    if outcome.revised("aus"):
        detail += "; revised by the verification"
    return detail


def _components_phrase(components: Mapping[str, float]) -> str:
    return "components: " + ", ".join(
        f"{words} {components[name]:.2f}"
        for name, words in COMPONENT_NAMES.items()
        if name in components
    )


_DETAILS = {"expression": _expression_detail, "va": _va_detail, "aus": _aus_detail}


def _knowledge_grains(reason: str) -> set[str]:
    """The grains a knowledge conflict speaks of (``knowledge.consistency``'s words)."""
    if reason.startswith(("valence", "arousal")):
        return {"expression", "va"}
    if reason.startswith(("AU", "the AUs")):
        return {"expression", "aus"}
    return set(GRAINS)


def confidence_reasons(
    confidence: GrainConfidence,
    uncertainty: Uncertainty,
    knowledge: Consistency,
    outcome: Outcome,
    roles: GrainRoles,
    threshold: float,
) -> list[FlagReason]:
    """A reason for each predicted grain under ``threshold``, and beside them the
    knowledge conflicts that involve a predicted grain (two given grains that
    conflict are the dataset's business, not this answer's)."""
    reasons = []
    for grain in roles.predicted:
        value = confidence.of(grain)
        if value >= threshold:
            continue
        shown, limit = below(value, threshold)
        detail = _DETAILS[grain](uncertainty, outcome)
        components = _components_phrase(confidence.components[grain])
        text = f"{GRAIN_NAMES[grain]} confidence {shown} under {limit}: {detail}; {components}"
        reasons.append(FlagReason("low_confidence", text, grain))
    if reasons and knowledge.score < 1.0:
        predicted = set(roles.predicted)
        reasons.extend(
            FlagReason("knowledge", f"knowledge: {reason}")
            for reason in knowledge.reasons
            if _knowledge_grains(reason) & predicted
        )
    return reasons


# --- Verification and invalid samples ----------------------------------------------


def _au_changes(before: Mapping[int, bool], after: Mapping[int, bool]) -> str:
    added = [f"AU{au}" for au in sorted(after) if after[au] and not before.get(au, False)]
    removed = [f"AU{au}" for au in sorted(before) if before[au] and not after.get(au, False)]
    parts = ([f"added {', '.join(added)}"] if added else []) + (
        [f"removed {', '.join(removed)}"] if removed else []
    )
    return "; ".join(parts) if parts else "no AU changed"


_FOLLOWER_NAMES = {"expression": "the expression", "va": "valence/arousal", "aus": "the AUs"}


def verification_reasons(
    verification: Verification, before: Answer, roles: GrainRoles
) -> list[FlagReason]:
    """The verification's failure, or each revision it made to a predicted grain (an
    inferred grain that followed is named in its source's reason)."""
    if verification.problem is not None:
        text = f"verification failed: {verification.problem}"
        return [FlagReason("verification_failed", text)]
    after = verification.answer
    texts = {
        "expression": f"verification revised the expression from {before.expression} "
        f"to {after.expression}",
        "va": "verification revised valence/arousal from "
        f"{_signed_pair(before.valence, before.arousal)} to "
        f"{_signed_pair(after.valence, after.arousal)}",
        "aus": f"verification revised the AUs: {_au_changes(before.aus, after.aus)}",
    }
    reasons = []
    for grain in verification.revised:
        if grain in roles.inferred_from:
            continue
        followers = [
            _FOLLOWER_NAMES[g]
            for g, source in roles.inferred_from.items()
            if source == grain and g in verification.revised
        ]
        text = texts[grain]
        if followers:
            text += f"; {' and '.join(followers)}, inferred from it, follow it"
        reasons.append(FlagReason("revised", text, grain))
    return reasons


def no_answer_reason(samples: Sequence[Sample]) -> FlagReason:
    first_error = next((s.error for s in samples if s.error), None)
    text = f"all {len(samples)} samples were invalid"
    if first_error:
        text += f" (first error: {first_error})"
    return FlagReason("no_answer", text)
