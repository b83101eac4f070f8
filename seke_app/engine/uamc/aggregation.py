"""Sampling rounds, aggregation, the disagreement in words, and self-verification."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from seke_app.engine.knowledge import AU_RATES, VA_PRIORS, expression_log_likelihoods
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    Backend,
    Intensity,
    KnownLabels,
    Sample,
    VerificationRequest,
)
from seke_app.engine.uamc.params import GRAIN_NAMES, GRAINS, GrainRoles, UAMCParams
from seke_app.engine.uamc.uncertainty import (
    Uncertainty,
    _measure_samples,
    _order,
    projected_posterior,
    projected_settled,
)
from seke_app.engine.vocab import Vocabulary

# --- Sampling ------------------------------------------------------------------


def _worth_sampling(
    uncertainty: Uncertainty,
    params: UAMCParams,
    vocabulary: Vocabulary,
    predicted: Collection[str] = GRAINS,
) -> bool:
    """Whether another round may settle an unsure grain (see "Stopping rule").

    Only the ``predicted`` grains count: a given grain is not re-predicted, and an
    inferred one is settled by settling what it follows.
    """
    unsure = set(uncertainty.unsure_grains()) & set(predicted)
    if not unsure:
        return False
    if not params.futility or uncertainty.n_votes == 0:
        return True
    margin = uncertainty.expression.margin
    if margin is not None:
        # The same futility test on the soft votes' mean distribution and worth.
        expression = (
            "expression" in unsure
            and margin.entropy <= params.entropy_threshold
            and projected_settled(uncertainty, params, vocabulary) >= params.plurality_threshold
        )
    else:
        # The projection keeps the votes' shares, so it keeps their entropy too: a
        # split too even for ``entropy_threshold`` is measured, not settled, by more votes.
        expression = (
            "expression" in unsure
            and uncertainty.expression.entropy <= params.entropy_threshold
            and projected_posterior(uncertainty, params, vocabulary) >= params.plurality_threshold
        )
    sds = [uncertainty.va.valence.sd, uncertainty.va.arousal.sd]
    va = "va" in unsure and (
        any(sd is None for sd in sds)
        or max(sd or 0.0 for sd in sds) / math.sqrt(params.kmax) <= params.va_sem_threshold
    )
    # An AU is unsure because its rate is near 0.5, and a projection leaves the rates
    # where they are: more whole answers would measure the split, not end it.
    return expression or va


def _draw_samples(
    backend: Backend,
    request: AnnotationRequest,
    params: UAMCParams,
    predicted: Collection[str] = GRAINS,
) -> tuple[list[Sample], list[int], Uncertainty]:
    """Draw samples as the strategy says; return them, the round sizes and the uncertainty."""
    first = {"uamc": params.k0, "fixed": params.kmax, "single": 1}[params.strategy]
    samples = list(backend.sample(request, first, params.temperature))
    rounds = [len(samples)]
    uncertainty = _measure_samples(samples, params, request.vocabulary)
    while (
        params.strategy == "uamc"
        and _worth_sampling(uncertainty, params, request.vocabulary, predicted)
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
    answers: Sequence[Answer],
    uncertainty: Uncertainty,
    vocabulary: Vocabulary,
    known: KnownLabels | None = None,
    given: Collection[str] = (),
) -> Answer:
    """Plurality expression, median VA, AUs active at a rate of at least 0.5; the
    ``given`` grains carry the ``known`` labels instead (``with_known``), and a tie
    of the expression is broken with them."""
    if not answers:
        raise ValueError("there is nothing to aggregate without a valid sample")
    known = known or KnownLabels()
    valence = float(np.median([a.valence for a in answers]))
    arousal = float(np.median([a.arousal for a in answers]))
    aus = {au: rate >= 0.5 for au, rate in uncertainty.aus.rates.items()}
    known_va = known.va() if "va" in given else None
    coded = known.coded_aus(vocabulary) if "aus" in given else {}
    expression = _plurality(uncertainty, known_va or (valence, arousal), aus | coded, vocabulary)
    intensities = {au: _intensity(answers, au) for au, on in aus.items() if on}
    evidence = next((a.evidence for a in answers if a.expression == expression), None)
    if evidence is None:
        # The samples' probabilities chose a class that no single sample drew.
        n = len(answers)
        share = uncertainty.expression.mass.get(expression, 0.0) / n
        evidence = {
            **answers[0].evidence,
            "expression": f"the largest mean probability over the {n} samples "
            f"({share:.2f}); no sample drew it",
        }
    combined = Answer(
        expression=expression,
        valence=valence,
        arousal=arousal,
        aus=aus,
        au_intensity={au: i for au, i in intensities.items() if i is not None},
        evidence=dict(evidence),
    )
    return with_known(combined, known, given, vocabulary)


GIVEN_EVIDENCE = "given: the dataset's label"


def with_known(
    answer: Answer, known: KnownLabels, given: Collection[str], vocabulary: Vocabulary
) -> Answer:
    """``answer`` with the ``given`` grains set to the ``known`` labels.

    AUs the labels do not code keep the answer's value, and the evidence names them.
    """
    changes: dict[str, Any] = {}
    evidence = dict(answer.evidence)
    if "expression" in given and known.expression is not None:
        changes["expression"] = known.expression
        evidence["expression"] = GIVEN_EVIDENCE
    va = known.va()
    if "va" in given and va is not None:
        changes |= {"valence": va[0], "arousal": va[1]}
        evidence["va"] = GIVEN_EVIDENCE
    coded = known.coded_aus(vocabulary)
    if "aus" in given and coded:
        aus = {au: coded.get(au, bool(answer.aus.get(au, False))) for au in vocabulary.aus}
        changes["aus"] = aus
        changes["au_intensity"] = {au: i for au, i in answer.au_intensity.items() if aus.get(au)}
        uncoded = [f"AU{au}" for au in vocabulary.aus if au not in coded]
        evidence["aus"] = GIVEN_EVIDENCE + (
            f"; {', '.join(uncoded)} not coded by the dataset: the model's answer"
            if uncoded
            else ""
        )
    return replace(answer, **changes, evidence=evidence) if changes else answer


def follow_sources(
    answer: Answer, answers: Sequence[Answer], roles: GrainRoles, vocabulary: Vocabulary
) -> Answer:
    """``answer`` with each grain inferred from the expression aggregated again over
    the votes that chose the answer's expression, so that it follows the expression
    the answer gives (not the votes' mix, nor a class the probabilities chose).

    Where no vote chose it, the grain is what the knowledge makes typical of the
    expression (the AUs of CK+ rate at least 0.5, the AffectNet mean VA), and its
    evidence says so.
    """
    followers = [g for g, source in roles.inferred_from.items() if source == "expression"]
    if not followers:
        return answer
    expression = answer.expression
    matching = [a for a in answers if a.expression == expression]
    changes: dict[str, Any] = {}
    evidence = dict(answer.evidence)
    for grain in followers:
        if not matching:
            changes |= _typical(grain, expression, vocabulary)
            evidence[grain] = f"no sample chose {expression}: {_TYPICAL[grain]} typical of it"
            continue
        if grain == "aus":
            aus = {
                au: 2 * sum(bool(a.aus.get(au, False)) for a in matching) >= len(matching)
                for au in vocabulary.aus
            }
            intensities = {au: _intensity(matching, au) for au, on in aus.items() if on}
            changes["aus"] = aus
            changes["au_intensity"] = {au: i for au, i in intensities.items() if i is not None}
        elif grain == "va":
            changes["valence"] = float(np.median([a.valence for a in matching]))
            changes["arousal"] = float(np.median([a.arousal for a in matching]))
        first = next((a.evidence[grain] for a in matching if grain in a.evidence), None)
        if first is not None:
            evidence[grain] = first
    return replace(answer, **changes, evidence=evidence)


_TYPICAL = {
    "aus": "the AUs the CK+ rates make",
    "va": "the AffectNet mean valence/arousal",
}


def _typical(grain: str, expression: str, vocabulary: Vocabulary) -> dict[str, Any]:
    if grain == "aus":
        rates = AU_RATES.get(expression, {})
        return {
            "aus": {au: rates.get(au, 0.0) >= 0.5 for au in vocabulary.aus},
            "au_intensity": {},
        }
    prior = VA_PRIORS[expression]
    return {"valence": prior.valence, "arousal": prior.arousal}


def _split_phrase(votes: Mapping[str, int]) -> str:
    names = list(votes)
    counts = "/".join(str(n) for n in votes.values())
    between = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"expression split {counts} between {between}"


def share_phrase(uncertainty: Uncertainty, limit: int = 3) -> str:
    """The largest expression masses as shares of the votes: each soft vote sums to
    one, so a share is the mean probability over the samples, never above 1."""
    n = uncertainty.n_votes
    top = list(uncertainty.expression.mass.items())[:limit]
    return f"mean probabilities over the {n} samples " + ", ".join(
        f"{e} {m / n:.2f}" for e, m in top
    )


def _disputed_aus(uncertainty: Uncertainty) -> str:
    n = uncertainty.n_votes
    return ", ".join(
        f"AU{au} in {round(rate * n)} of {n}"
        for au, rate in uncertainty.aus.rates.items()
        if 0 < rate < 1
    )


def disagreement_text(
    uncertainty: Uncertainty, n_drawn: int, roles: GrainRoles | None = None
) -> str:
    """The samples' disagreement in words, for the verification prompt and for people.

    A given grain is named as given and an inferred one as following its source:
    their samples' spread is not a disagreement about the image.
    """
    roles = roles or GrainRoles()
    n = uncertainty.n_votes
    parts = [f"{n} of {n_drawn} samples were valid"]
    votes = uncertainty.expression.votes
    if "expression" in roles.given:
        parts.append("the expression is given by the dataset")
    elif votes:
        parts.append(
            _split_phrase(votes)
            if len(votes) > 1
            else f"all {n} valid samples chose {next(iter(votes))}"
        )
        if uncertainty.expression.soft:
            parts.append(share_phrase(uncertainty))
    va = uncertainty.va
    if "va" in roles.given:
        parts.append("valence/arousal are given by the dataset")
    elif va.valence.sd is not None and va.arousal.sd is not None:
        parts.append(
            f"valence standard deviation {va.valence.sd:.2f}, "
            f"arousal standard deviation {va.arousal.sd:.2f}"
        )
        if va.reported_sd is not None:
            parts.append(
                f"each reading's own error {va.reported_sd[0]:.2f} (valence) and "
                f"{va.reported_sd[1]:.2f} (arousal)"
            )
    parts.append(_aus_phrase(uncertainty, roles))
    return "; ".join(parts) + "."


def _aus_phrase(uncertainty: Uncertainty, roles: GrainRoles) -> str:
    if "aus" in roles.given:
        return "the AUs are given by the dataset"
    if "aus" in roles.inferred_from:
        return f"the AUs are inferred from the {GRAIN_NAMES[roles.inferred_from['aus']]}"
    disputed = _disputed_aus(uncertainty)
    return f"AUs disputed: {disputed}" if disputed else "AUs unanimous"


# --- Verification ------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """What the verification call said and what it changed.

    ``revised`` holds the grains whose revision was applied; ``ignored`` those the
    verifier asked to revise but that keep their value: a given grain, and an
    inferred grain whose source was not revised.
    """

    sample: Sample | None
    verdict: dict[str, str]
    revised: tuple[str, ...]
    answer: Answer
    problem: str | None = None
    ignored: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "performed": self.sample is not None,
            "valid": self.sample is not None and self.problem is None,
            "verdict": dict(self.verdict),
            "revised": list(self.revised),
            "ignored": list(self.ignored),
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


def _applied(proposed: Sequence[str], roles: GrainRoles) -> tuple[str, ...]:
    """The proposed revisions that apply: never to a given grain, and to an inferred
    grain only along with the grain it follows."""
    own = [g for g in proposed if g not in roles.given and g not in roles.inferred_from]
    follow = [g for g in proposed if roles.inferred_from.get(g) in own]
    return tuple(g for g in GRAINS if g in own or g in follow)


def verify(
    backend: Backend,
    request: AnnotationRequest,
    aggregate_answer: Answer,
    disagreement: str,
    roles: GrainRoles | None = None,
) -> Verification:
    """Make the verification call and apply the grains it revised (see ``_applied``)."""
    roles = roles or GrainRoles()
    sample = backend.verify(VerificationRequest(request, aggregate_answer, disagreement))
    problem = _verification_problem(sample, request.vocabulary)
    if problem is not None or sample.answer is None or sample.verdict is None:
        return Verification(sample, {}, (), aggregate_answer, problem)
    verdict = {g: v for g, v in sample.verdict.items() if g in GRAINS}
    proposed = tuple(g for g in GRAINS if verdict.get(g) == "revise")
    revised = _applied(proposed, roles)
    ignored = tuple(g for g in proposed if g not in revised)
    answer = _revise(aggregate_answer, sample.answer, revised)
    return Verification(sample, verdict, revised, answer, ignored=ignored)
