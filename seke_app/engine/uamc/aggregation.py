"""Sampling rounds, aggregation, the disagreement in words, and self-verification."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from seke_app.engine.knowledge import expression_log_likelihoods
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    Backend,
    Intensity,
    Sample,
    VerificationRequest,
)
from seke_app.engine.uamc.params import GRAINS, UAMCParams
from seke_app.engine.uamc.uncertainty import (
    Uncertainty,
    _measure_samples,
    _order,
    projected_posterior,
)
from seke_app.engine.vocab import Vocabulary

# --- Sampling ------------------------------------------------------------------


def _worth_sampling(uncertainty: Uncertainty, params: UAMCParams, vocabulary: Vocabulary) -> bool:
    """Whether another round may settle an unsure grain (see "Stopping rule")."""
    if not uncertainty.unsure:
        return False
    if not params.futility or uncertainty.n_votes == 0:
        return True
    # The projection keeps the votes' shares, so it keeps their entropy too: a split
    # too even for ``entropy_threshold`` is measured, not settled, by more votes.
    expression = (
        uncertainty.expression.unsure
        and uncertainty.expression.entropy <= params.entropy_threshold
        and projected_posterior(uncertainty, params, vocabulary) >= params.plurality_threshold
    )
    sds = [uncertainty.va.valence.sd, uncertainty.va.arousal.sd]
    va = uncertainty.va.unsure and (
        any(sd is None for sd in sds)
        or max(sd or 0.0 for sd in sds) / math.sqrt(params.kmax) <= params.va_sem_threshold
    )
    # An AU is unsure because its rate is near 0.5, and a projection leaves the rates
    # where they are: more whole answers would measure the split, not end it.
    return expression or va


def _draw_samples(
    backend: Backend, request: AnnotationRequest, params: UAMCParams
) -> tuple[list[Sample], list[int], Uncertainty]:
    """Draw samples as the strategy says; return them, the round sizes and the uncertainty."""
    first = {"uamc": params.k0, "fixed": params.kmax, "single": 1}[params.strategy]
    samples = list(backend.sample(request, first, params.temperature))
    rounds = [len(samples)]
    uncertainty = _measure_samples(samples, params, request.vocabulary)
    while (
        params.strategy == "uamc"
        and _worth_sampling(uncertainty, params, request.vocabulary)
        and rounds[-1] > 0
        and len(samples) < params.kmax
    ):
        k = min(params.step, params.kmax - len(samples))
        drawn = backend.sample(request, k, params.temperature)
        samples.extend(drawn)
        rounds.append(len(drawn))
        uncertainty = _measure_samples(samples, params, request.vocabulary)
    return samples, rounds, uncertainty


# --- Aggregation -------------------------------------------------------------------


def _plurality(
    uncertainty: Uncertainty,
    aggregate_va: tuple[float, float],
    aus: dict[int, bool],
    vocabulary: Vocabulary,
) -> str:
    mass = uncertainty.expression.mass
    best = max(mass.values())
    tied = [e for e, m in mass.items() if m >= best - 1e-9]
    if len(tied) == 1:
        return tied[0]
    # Votes cannot decide, so the class that best explains the aggregated VA and AUs wins.
    loglik = expression_log_likelihoods(aggregate_va[0], aggregate_va[1], aus, vocabulary)
    return max(tied, key=lambda e: (loglik[e], -_order(vocabulary, e)))


def _intensity(answers: Sequence[Answer], au: int) -> Intensity | None:
    graded = Counter(
        a.au_intensity[au] for a in answers if a.aus.get(au, False) and au in a.au_intensity
    )
    if not graded:
        return None
    best = max(graded.values())
    return min(letter for letter, n in graded.items() if n == best)


def aggregate(
    answers: Sequence[Answer], uncertainty: Uncertainty, vocabulary: Vocabulary
) -> Answer:
    """Plurality expression, median VA, AUs active at a rate of at least 0.5."""
    if not answers:
        raise ValueError("there is nothing to aggregate without a valid sample")
    valence = float(np.median([a.valence for a in answers]))
    arousal = float(np.median([a.arousal for a in answers]))
    aus = {au: rate >= 0.5 for au, rate in uncertainty.aus.rates.items()}
    expression = _plurality(uncertainty, (valence, arousal), aus, vocabulary)
    intensities = {au: _intensity(answers, au) for au, on in aus.items() if on}
    evidence = next((a.evidence for a in answers if a.expression == expression), None)
    if evidence is None:
        # The samples' probabilities chose a class that no single sample drew.
        evidence = {
            **answers[0].evidence,
            "expression": "the largest summed probability over the samples "
            f"({uncertainty.expression.mass.get(expression, 0.0):.2f} of {len(answers)})",
        }
    return Answer(
        expression=expression,
        valence=valence,
        arousal=arousal,
        aus=aus,
        au_intensity={au: i for au, i in intensities.items() if i is not None},
        evidence=dict(evidence),
    )


def _split_phrase(votes: Mapping[str, int]) -> str:
    names = list(votes)
    counts = "/".join(str(n) for n in votes.values())
    between = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"expression split {counts} between {between}"


def _mass_phrase(mass: Mapping[str, float]) -> str:
    top = list(mass.items())[:3]
    return "summed probabilities " + ", ".join(f"{e} {m:.2f}" for e, m in top)


def _disputed_aus(uncertainty: Uncertainty) -> str:
    n = uncertainty.n_votes
    return ", ".join(
        f"AU{au} in {round(rate * n)} of {n}"
        for au, rate in uncertainty.aus.rates.items()
        if 0 < rate < 1
    )


def disagreement_text(uncertainty: Uncertainty, n_drawn: int) -> str:
    """The samples' disagreement in words, for the verification prompt and for people."""
    n = uncertainty.n_votes
    parts = [f"{n} of {n_drawn} samples were valid"]
    votes = uncertainty.expression.votes
    if len(votes) > 1:
        parts.append(_split_phrase(votes))
    elif votes:
        parts.append(f"all {n} valid samples chose {next(iter(votes))}")
    if votes and uncertainty.expression.soft:
        parts.append(_mass_phrase(uncertainty.expression.mass))
    va = uncertainty.va
    if va.valence.sd is not None and va.arousal.sd is not None:
        parts.append(
            f"valence standard deviation {va.valence.sd:.2f}, "
            f"arousal standard deviation {va.arousal.sd:.2f}"
        )
    disputed = _disputed_aus(uncertainty)
    parts.append(f"AUs disputed: {disputed}" if disputed else "AUs unanimous")
    return "; ".join(parts) + "."


# --- Verification ------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """What the verification call said and what it changed."""

    sample: Sample | None
    verdict: dict[str, str]
    revised: tuple[str, ...]
    answer: Answer
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "performed": self.sample is not None,
            "valid": self.sample is not None and self.problem is None,
            "verdict": dict(self.verdict),
            "revised": list(self.revised),
            "problem": self.problem,
        }


def _verification_problem(sample: Sample, vocabulary: Vocabulary) -> str | None:
    if sample.answer is None:
        return sample.error or "the reply could not be read"
    if sample.verdict is None:
        return "the reply gave no verdict"
    if sample.answer.expression not in vocabulary.expressions:
        return f"the reply's expression {sample.answer.expression!r} is not in the vocabulary"
    return None


def _revise(aggregate_answer: Answer, proposed: Answer, grains: Sequence[str]) -> Answer:
    changes: dict[str, Any] = {}
    if "expression" in grains:
        changes |= {"expression": proposed.expression, "evidence": dict(proposed.evidence)}
    if "va" in grains:
        changes |= {"valence": proposed.valence, "arousal": proposed.arousal}
    if "aus" in grains:
        aus = {au: bool(proposed.aus.get(au, False)) for au in aggregate_answer.aus}
        intensity = {au: i for au, i in proposed.au_intensity.items() if aus.get(au)}
        changes |= {"aus": aus, "au_intensity": intensity}
    return replace(aggregate_answer, **changes)


def verify(
    backend: Backend, request: AnnotationRequest, aggregate_answer: Answer, disagreement: str
) -> Verification:
    """Make the verification call and apply the grains it revised."""
    sample = backend.verify(VerificationRequest(request, aggregate_answer, disagreement))
    problem = _verification_problem(sample, request.vocabulary)
    if problem is not None or sample.answer is None or sample.verdict is None:
        return Verification(sample, {}, (), aggregate_answer, problem)
    verdict = {g: v for g, v in sample.verdict.items() if g in GRAINS}
    revised = tuple(g for g in GRAINS if verdict.get(g) == "revise")
    return Verification(sample, verdict, revised, _revise(aggregate_answer, sample.answer, revised))
