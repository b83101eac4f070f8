"""Votes, their uncertainty per grain, the plurality posterior and the soft votes' margin."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from seke_app.engine.types import (
    Answer,
    Sample,
)
from seke_app.engine.uamc.params import GRAINS, UAMCParams
from seke_app.engine.vocab import Vocabulary


@dataclass(frozen=True)
class MarginStats:
    """What the votes' own probabilities say about the plurality (see "Stopping
    rule" in ``uamc``).

    ``top`` and ``runner_up`` have the two largest masses. ``mean`` is the mean of
    each vote's margin ``q(top) - q(runner_up)`` and ``spread`` the sum of their
    squared deviations from it. ``whole_variance`` is the variance of the margin
    of one whole vote drawn from the votes' mean distribution. ``effective_votes``
    is how many whole votes the votes are worth (``effective_votes``), ``entropy``
    the normalised entropy of their mean distribution, and ``settled`` the
    plurality posterior of that distribution counted as ``effective_votes`` votes.
    """

    top: str
    runner_up: str
    mean: float
    spread: float
    whole_variance: float
    effective_votes: float
    entropy: float
    settled: float


@dataclass(frozen=True)
class ExpressionStats:
    """Vote counts and masses (most first) and the expression grain's uncertainty.

    ``votes`` counts the answers' expressions; ``mass`` is what the statistics use:
    the same counts, except that a sample carrying ``expression_probs`` adds those
    probabilities instead of one whole vote. ``margin`` is set when some vote's
    probabilities are token log-probabilities (``Sample.probs_source``); ``unsure``
    then reads its entropy and ``settled`` instead of ``entropy`` and
    ``plurality_posterior``, which the confidence still reads.
    """

    votes: dict[str, int]
    entropy: float
    plurality_posterior: float
    unsure: bool
    mass: dict[str, float] = field(default_factory=dict)
    margin: MarginStats | None = None

    @property
    def soft(self) -> bool:
        """Whether some sample's probabilities made the masses differ from the votes."""
        return self.mass != {e: float(n) for e, n in self.votes.items()}


@dataclass(frozen=True)
class SeriesStats:
    """The votes' values of one VA dimension; spread needs two or more values."""

    values: tuple[float, ...]
    mean: float | None
    median: float | None
    sd: float | None
    sem: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> SeriesStats:
        if not values:
            return cls((), None, None, None, None)
        array = np.asarray(values, dtype=np.float64)
        sd = float(array.std(ddof=1)) if array.size > 1 else None
        sem = sd / math.sqrt(array.size) if sd is not None else None
        return cls(tuple(values), float(array.mean()), float(np.median(array)), sd, sem)


@dataclass(frozen=True)
class VAStats:
    valence: SeriesStats
    arousal: SeriesStats
    unsure: bool
    # The root mean square of the standard deviations the backend reported for its
    # samples' valence and arousal (``Sample.va_sd``), None when none did.
    reported_sd: tuple[float, float] | None = None

    def largest_sd(self) -> float | None:
        """The larger of the samples' spreads in valence and in arousal."""
        sds = [s for s in (self.valence.sd, self.arousal.sd) if s is not None]
        return max(sds) if sds else None

    def total_sd(self) -> float | None:
        """The larger axis of the spread and the reported uncertainty combined.

        Per axis ``sqrt(spread ** 2 + reported ** 2)``: the samples' disagreement
        and the error each sample's reading carries by the backend's own account,
        as independent sources of error. Without a reported one this is
        ``largest_sd``.
        """
        if self.reported_sd is None:
            return self.largest_sd()
        spreads = (self.valence.sd or 0.0, self.arousal.sd or 0.0)
        return max(math.hypot(s, r) for s, r in zip(spreads, self.reported_sd, strict=True))


@dataclass(frozen=True)
class AUStats:
    """Activation rate of every AU of the vocabulary, and those near 0.5."""

    rates: dict[int, float]
    unsure_aus: tuple[int, ...]
    unsure: bool


@dataclass(frozen=True)
class Uncertainty:
    """All grains' uncertainty over the votes drawn so far."""

    n_votes: int
    expression: ExpressionStats
    va: VAStats
    aus: AUStats

    @property
    def unsure(self) -> bool:
        return self.expression.unsure or self.va.unsure or self.aus.unsure

    def unsure_grains(self) -> list[str]:
        flags = (self.expression.unsure, self.va.unsure, self.aus.unsure)
        return [grain for grain, unsure in zip(GRAINS, flags, strict=True) if unsure]


def _gamma_terms(x: np.ndarray, shape: float) -> tuple[np.ndarray, np.ndarray]:
    """Gamma(shape, 1) density and distribution function on the even grid ``x`` from 0.

    A whole-number shape is an Erlang distribution, whose distribution function is
    ``1 - exp(-x) sum_{m < shape} x^m / m!`` (the density is the last term of that
    sum times ``exp(-x)``), so both come from one running product. A fractional
    shape (probability masses) integrates the density along the grid instead (the
    trapezoid rule; error below 1e-4 on the grid ``_posterior_of_largest`` uses).
    """
    if float(shape).is_integer():
        term = np.ones_like(x)
        partial = np.ones_like(x)
        for m in range(1, int(shape)):
            term = term * x / m
            partial = partial + term
        decay = np.exp(-x)
        return term * decay, 1.0 - partial * decay
    positive = x > 0
    safe = np.where(positive, x, 1.0)
    log_density = (shape - 1.0) * np.log(safe) - safe - math.lgamma(shape)
    density = np.where(positive, np.exp(log_density), 0.0)
    steps = np.diff(x) * (density[1:] + density[:-1]) / 2.0
    cdf = np.concatenate(([0.0], np.cumsum(steps)))
    return density, np.clip(cdf, 0.0, 1.0)


@lru_cache(maxsize=4096)
def _posterior_of_largest(alphas: tuple[float, ...], index: int) -> float:
    top = max(alphas)
    upper = top + 12.0 * math.sqrt(top) + 30.0
    x = np.linspace(0.0, upper, 4001)
    density, _ = _gamma_terms(x, alphas[index])
    others = np.ones_like(x)
    for j, alpha in enumerate(alphas):
        if j != index:
            others *= _gamma_terms(x, alpha)[1]
    return float(np.clip(np.trapezoid(density * others, x), 0.0, 1.0))


def plurality_posterior(counts: Sequence[float], index: int) -> float:
    """P(class ``index`` has the largest probability | counts), uniform Dirichlet prior.

    Counts may be fractional (probability masses); they are rounded to two decimals.
    """
    if not counts or not 0 <= index < len(counts):
        raise ValueError("the class index must point into a non-empty list of counts")
    if any(c < 0 for c in counts):
        raise ValueError("vote counts cannot be negative")
    return _posterior_of_largest(tuple(round(float(c), 2) + 1.0 for c in counts), index)


def normalised_entropy(counts: Sequence[float]) -> float:
    """Entropy of the vote shares divided by ``log(len(counts))``; 0 for one class."""
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return 0.0
    shares = [c / total for c in counts if c > 0]
    return -sum(p * math.log(p) for p in shares) / math.log(len(counts))


def effective_votes(n: int, whole_variance: float, spread: float) -> float:
    """How many whole votes ``n`` votes with margins of sum of squared deviations
    ``spread`` are worth, when a whole vote's margin has ``whole_variance``.

    The votes' margin variance is their squared deviations pooled with one
    pseudo-vote of a whole vote's variance, ``(whole_variance + spread) / (n + 1)``;
    their mean is then as precise as that of ``n * whole_variance / variance``
    whole votes. Whole votes that split are worth exactly ``n`` (their squared
    deviations are ``n * whole_variance``); votes without any spread are worth at
    most ``n * (n + 1)``, the floor the pseudo-vote sets, so that two or three
    votes that happen to agree cannot claim certainty from a spread they are too
    few to measure (unanimous whole votes, without spread, count so too). In
    standard-error terms the floor is ``sqrt(whole_variance / (n * (n + 1)))``.
    """
    if n < 1:
        raise ValueError("effective votes need at least one vote")
    variance = (whole_variance + spread) / (n + 1)
    if variance <= 0.0:
        return float(n * (n + 1))
    return n * whole_variance / variance


def margin_stats(
    weights: Sequence[Mapping[str, float]],
    mass: Mapping[str, float],
    vocabulary: Vocabulary,
) -> MarginStats:
    """The votes' margins between the two classes with the largest masses
    (``mass`` most first; a class without mass comes after those with, in the
    vocabulary's order) and the plurality posterior they support."""
    if not weights or len(vocabulary.expressions) < 2:
        raise ValueError("a margin needs at least one vote and two expressions")
    n = len(weights)
    ranked = list(mass) + [e for e in vocabulary.expressions if e not in mass]
    top, runner_up = ranked[0], ranked[1]
    distributions = [{e: p / (sum(w.values()) or 1.0) for e, p in w.items()} for w in weights]
    margins = np.asarray(
        [q.get(top, 0.0) - q.get(runner_up, 0.0) for q in distributions], dtype=np.float64
    )
    shares = [sum(q.get(e, 0.0) for q in distributions) / n for e in vocabulary.expressions]
    mean = float(margins.mean())
    spread = float(((margins - mean) ** 2).sum())
    lead, second = shares[_order(vocabulary, top)], shares[_order(vocabulary, runner_up)]
    whole_variance = max(0.0, lead + second - (lead - second) ** 2)
    votes = effective_votes(n, whole_variance, spread)
    return MarginStats(
        top=top,
        runner_up=runner_up,
        mean=mean,
        spread=spread,
        whole_variance=whole_variance,
        effective_votes=votes,
        entropy=normalised_entropy(shares),
        settled=_settled(shares, votes, _order(vocabulary, top)),
    )


def _settled(shares: Sequence[float], votes: float, index: int) -> float:
    return plurality_posterior([share * votes for share in shares], index)


def _expression_stats(
    answers: Sequence[Answer],
    params: UAMCParams,
    vocabulary: Vocabulary,
    weights: Sequence[Mapping[str, float]] | None = None,
    conditional: bool = False,
) -> ExpressionStats:
    counter = Counter(a.expression for a in answers)
    votes = dict(sorted(counter.items(), key=lambda kv: (-kv[1], _order(vocabulary, kv[0]))))
    if not answers:
        return ExpressionStats(votes, 1.0, 0.0, True, {})
    if weights is None:
        weights = [{a.expression: 1.0} for a in answers]
    masses = [sum(w.get(e, 0.0) for w in weights) for e in vocabulary.expressions]
    mass = {
        e: round(m, 4)
        for e, m in sorted(
            zip(vocabulary.expressions, masses, strict=True),
            key=lambda em: (-em[1], _order(vocabulary, em[0])),
        )
        if m > 0
    }
    entropy = normalised_entropy([counter.get(e, 0) for e in vocabulary.expressions])
    posterior = plurality_posterior(masses, masses.index(max(masses)))
    # A vocabulary of one expression has no runner-up and nothing to settle.
    if conditional and len(vocabulary.expressions) > 1:
        margin = margin_stats(weights, mass, vocabulary)
        unsure = (
            margin.entropy > params.entropy_threshold or margin.settled < params.plurality_threshold
        )
        return ExpressionStats(votes, entropy, posterior, unsure, mass, margin)
    unsure = entropy > params.entropy_threshold or posterior < params.plurality_threshold
    return ExpressionStats(votes, entropy, posterior, unsure, mass)


def _va_stats(
    answers: Sequence[Answer],
    params: UAMCParams,
    reported: Sequence[tuple[float, float] | None] = (),
) -> VAStats:
    """The VA statistics of the votes.

    Whether VA is unsure reads only the standard error of the votes' mean, which
    more samples shrink; a reported uncertainty (``Sample.va_sd``) is the same for
    every sample of the image, so drawing more would not reduce it, and it only
    enters the confidence (``VAStats.total_sd``).
    """
    valence = SeriesStats.of([a.valence for a in answers])
    arousal = SeriesStats.of([a.arousal for a in answers])
    sems = [valence.sem, arousal.sem]
    unsure = any(s is None or s > params.va_sem_threshold for s in sems)
    given = np.asarray([sd for sd in reported if sd is not None], dtype=np.float64)
    rms = None
    if given.size:
        root = np.sqrt((given**2).mean(axis=0))
        rms = (float(root[0]), float(root[1]))
    return VAStats(valence, arousal, unsure, rms)


def _au_stats(answers: Sequence[Answer], params: UAMCParams, vocabulary: Vocabulary) -> AUStats:
    if not answers:
        return AUStats({}, tuple(vocabulary.aus), True)
    rates = {
        au: sum(bool(a.aus.get(au, False)) for a in answers) / len(answers) for au in vocabulary.aus
    }
    unsure_aus = tuple(au for au, r in rates.items() if abs(r - 0.5) < params.au_band)
    return AUStats(rates, unsure_aus, len(unsure_aus) > params.au_max_unsure)


def measure(
    answers: Sequence[Answer],
    params: UAMCParams,
    vocabulary: Vocabulary,
    weights: Sequence[Mapping[str, float]] | None = None,
    va_sds: Sequence[tuple[float, float] | None] = (),
    conditional: bool = False,
) -> Uncertainty:
    """Every grain's uncertainty over the votes (``weights``: see ``vote_weights``;
    ``va_sds``: each vote's ``Sample.va_sd``; ``conditional``: whether the weights
    include probabilities conditional on each sample's own reasoning, token
    log-probabilities, whose spread then decides whether the expression is
    settled, see ``MarginStats``)."""
    return Uncertainty(
        n_votes=len(answers),
        expression=_expression_stats(answers, params, vocabulary, weights, conditional),
        va=_va_stats(answers, params, va_sds),
        aus=_au_stats(answers, params, vocabulary),
    )


def _order(vocabulary: Vocabulary, expression: str) -> int:
    if expression in vocabulary.expressions:
        return vocabulary.expressions.index(expression)
    return len(vocabulary.expressions)


def _voting(samples: Sequence[Sample], vocabulary: Vocabulary) -> list[Sample]:
    return [
        s
        for s in samples
        if s.kind == "sample"
        and s.answer is not None
        and s.answer.expression in vocabulary.expressions
    ]


def votes_of(samples: Sequence[Sample], vocabulary: Vocabulary) -> list[Answer]:
    """The answers of the samples that vote: valid, with an expression of the vocabulary."""
    return [s.answer for s in _voting(samples, vocabulary) if s.answer is not None]


def vote_weights(samples: Sequence[Sample], vocabulary: Vocabulary) -> list[dict[str, float]]:
    """What each voting sample adds to the expression masses, in ``votes_of`` order.

    One whole vote for its expression, or, when the sample carries the backend's
    probabilities, those probabilities over the vocabulary (renormalised). Counting
    a sample's expected vote instead of its drawn vote keeps the same mean and
    removes the draw's noise, so fewer samples settle the plurality.
    """
    weights = []
    for sample in _voting(samples, vocabulary):
        assert sample.answer is not None
        probs = vocabulary_probs(sample.expression_probs, vocabulary)
        if probs is not None:
            weights.append({e: p for e, p in probs.items() if p > 0})
        else:
            weights.append({sample.answer.expression: 1.0})
    return weights


def vocabulary_probs(
    probs: Mapping[str, float] | None, vocabulary: Vocabulary
) -> dict[str, float] | None:
    """A backend's probabilities over the vocabulary's expressions, renormalised.

    None when there are none, or none of them is positive within the vocabulary.
    """
    kept = {e: max(0.0, float((probs or {}).get(e, 0.0))) for e in vocabulary.expressions}
    total = sum(kept.values())
    return {e: p / total for e, p in kept.items()} if total > 0 else None


def _measure_samples(
    samples: Sequence[Sample], params: UAMCParams, vocabulary: Vocabulary
) -> Uncertainty:
    voting = _voting(samples, vocabulary)
    return measure(
        votes_of(samples, vocabulary),
        params,
        vocabulary,
        vote_weights(samples, vocabulary),
        [s.va_sd for s in voting],
        conditional=any(
            s.probs_source == "logprobs" and s.expression_probs is not None for s in voting
        ),
    )


def projected_posterior(
    uncertainty: Uncertainty, params: UAMCParams, vocabulary: Vocabulary
) -> float:
    """The plurality posterior expected after the next round if its votes split as
    the votes so far: the masses scaled up by ``step`` more votes (at most ``kmax``)."""
    stats = uncertainty.expression
    n = uncertainty.n_votes
    if n == 0:
        return 0.0
    scale = max(min(n + params.step, params.kmax), n) / n
    masses = [stats.mass.get(e, 0.0) * scale for e in vocabulary.expressions]
    return plurality_posterior(masses, masses.index(max(masses)))


def projected_settled(
    uncertainty: Uncertainty, params: UAMCParams, vocabulary: Vocabulary
) -> float:
    """``MarginStats.settled`` expected after the next round if its votes spread as
    those so far: the same mean distribution, whole-vote variance and squared
    deviation per vote over ``step`` more votes (at most ``kmax``). 0 without a
    margin."""
    margin = uncertainty.expression.margin
    n = uncertainty.n_votes
    if margin is None or n == 0:
        return 0.0
    more = max(min(n + params.step, params.kmax), n)
    votes = effective_votes(more, margin.whole_variance, margin.spread * more / n)
    shares = [uncertainty.expression.mass.get(e, 0.0) / n for e in vocabulary.expressions]
    return _settled(shares, votes, _order(vocabulary, margin.top))
