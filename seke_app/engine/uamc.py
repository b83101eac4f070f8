"""SV-UAMC: uncertainty-aware Monte Carlo sampling with self-verification.

The method's name and outline come from Wang et al. (arXiv 2505.18168); its
details are not published, so everything below is this project's own definition,
built on the outline in DESIGN.md ("SV-UAMC as this project defines it"). One code
path serves three strategies, so that accuracy per call can be compared fairly:

* ``uamc``: draw ``k0`` samples, then ``step`` more while any grain is unsure and
  fewer than ``kmax`` exist, then verify;
* ``fixed``: draw ``kmax`` samples at once (no adaptivity), verify if asked;
* ``single``: draw one sample and never verify.

Votes
    A sample votes when it is valid (it parsed into an ``Answer``) and its
    expression belongs to the run's vocabulary. Every other sample is kept and
    counted as drawn, never as a vote. The verification reply is not a vote.

Uncertainty per grain (computed on the votes after every round)
    Expression: the vote entropy divided by ``log C`` for the ``C`` expressions of
    the vocabulary (0 when unanimous), and the *plurality posterior*: with a
    uniform Dirichlet(1, ..., 1) prior over the ``C`` class probabilities and the
    vote counts as multinomial data, the posterior probability that the plurality
    class has the largest true probability. It is computed exactly (up to
    quadrature error below 1e-6) from the gamma representation of the Dirichlet:
    ``P(G_e > G_j for all j != e)`` with independent ``G_j ~ Gamma(1 + n_j)`` is
    a one-dimensional integral of Erlang densities and distribution functions.
    Unlike the raw vote share it grows with the number of votes: 3/3 gives 0.73,
    5/5 gives 0.91, 4/1 gives 0.79, 2/1 gives 0.48 (eight classes). The grain is
    unsure when the entropy exceeds ``entropy_threshold`` or the posterior is
    below ``plurality_threshold``.

    Soft votes: a sample may carry the backend's probability of every expression
    (``Sample.expression_probs``; the offline annotator gives its view's softmax).
    Such a sample adds those probabilities to the classes' *masses* instead of one
    whole vote to its drawn class: the expected vote, with the same mean as the
    drawn one and without the draw's noise. The plurality, the plurality posterior
    (with the masses as fractional counts: gamma instead of Erlang terms, within
    1e-4) and the expression agreement use the masses; a sample without
    probabilities has a mass of one on its expression, so hard votes are the
    special case. The entropy stays that of the drawn votes. A confident view
    (p = 0.95) then counts almost fully and a hesitant one (p = 0.4) only partly,
    so the confidence follows the backend's own certainty, not only its votes.

    Valence-arousal: mean, median, sample standard deviation (spread) and
    standard error of the mean of V and of A. Unsure when either standard error
    exceeds ``va_sem_threshold``, or when fewer than two votes exist. The default
    0.15 keeps the mean's 95% interval within about +-0.3 on the [-1, 1] scale,
    finer than the distance between most expressions' typical VA
    (``knowledge.VA_PRIORS``).

    AUs: the activation rate of each AU of the vocabulary among the votes. An AU
    is unsure when ``|rate - 0.5| < au_band``. With the default band 0.15 a
    2-to-1 split of three samples counts as settled (|2/3 - 0.5| = 0.17) while
    2/4, 2/5 or 3/5 does not. The grain is unsure when more than
    ``au_max_unsure`` AUs are (default 1): with 17 AUs some AU is nearly always
    disputed, and settling a single AU by drawing whole answers would cost as
    much as settling the expression; a disputed AU still lowers the AU
    confidence and is named in the disagreement text.

Stopping rule
    ``uamc`` stops as soon as no grain is unsure, or when ``kmax`` samples have
    been drawn (valid or not), or when the backend returns no samples at all.
    Without votes every grain is unsure, so failures are retried up to ``kmax``.

    With ``futility`` (the default) it also stops when the next round is not
    expected to settle any unsure grain, judged by projecting the votes so far
    (a one-step lookahead): the expression when the plurality posterior of the
    masses scaled up by ``step`` more votes (the next round splitting as the
    votes so far) stays under ``plurality_threshold``; VA when the spread so far
    would still give a standard error above ``va_sem_threshold`` at ``kmax``;
    AUs always, since a projection leaves every rate where it is. This is the
    futility stop of sequential testing: a split that more samples would only
    measure more precisely goes to review now instead of after ``kmax`` samples,
    and samples are spent where the next round can change the answer. On the
    held-out training images (``bench/uamc_vs_fixed.py --tune``), looking ahead
    one round drew 4.37 samples per image, four rounds 4.63 and all the way to
    ``kmax`` 5.14, at equal accuracy and AUROC; ``futility=False`` drew 10.37.

Aggregation
    Plurality expression (by mass, see "Soft votes"). Ties are broken by
    knowledge: the tied class with the highest ``expression_log_likelihoods`` of
    the aggregated VA and AUs wins, and the vocabulary's order settles what is
    still tied. VA is the median of the
    votes. An AU is active when its rate is at least 0.5; its intensity is the
    most common intensity among the votes that mark it active (the lower letter
    on a tie, which errs on the side of a weaker claim). Evidence comes from the
    first vote for the chosen expression (when the masses chose a class no sample
    drew, the evidence says so).

Self-verification
    One call shows the model the aggregate and the disagreement in words. Its
    verdict per grain (``expression``, ``va``, ``aus``) is "confirm" or "revise".
    A revised grain takes the verifier's value: the verifier has seen everything
    the samples saw plus the disagreement, so its considered answer is preferred,
    and the revision flags the item for a human anyway. The pre-verification
    aggregate is kept in the result. An invalid verification reply is kept and
    flags the item, because the run asked for a verified answer and has none.

Confidence per grain
    The weighted geometric mean of three components in [0, 1]:

    * agreement (weight 0.7): expression, the plurality posterior of the final
      expression over the masses; VA, ``1 - min(1, max(sd V, sd A) / 0.5)``, 0.5 meaning the
      samples spread over a quarter of the scale; AUs, the mean of
      ``|2 rate - 1|`` over the AUs that any vote marks active (1 when none does).
      A single vote says nothing about agreement, so VA and AUs then get 0.5
      (the expression posterior of one vote is already low, 0.34 of 8 classes).
    * verification (weight 0.15): 1 when the grain was confirmed, 0.5 when it
      was revised; left out (weights renormalised) when no verdict exists.
    * knowledge (weight 0.15): ``knowledge.consistency`` of the final answer,
      its combined score for the expression, its VA score for VA, its AU score
      for AUs.

    A geometric mean lets any one weak component pull the grain down (an answer
    that contradicts the knowledge is doubtful however unanimous), while the
    weights keep sample agreement the main signal.

Overall confidence
    The minimum of the three grain confidences. An item is accepted or reviewed
    as a whole, so it is only as trustworthy as its weakest grain; a mean would
    let two solid grains hide a doubtful one, and the review threshold would then
    not mean what it says.

Flags
    An item is flagged, with a reason in words for each cause, when a grain's
    confidence is under ``review_threshold`` (with the split, spread or disputed
    AUs behind it and the knowledge conflicts), when the verification revised a
    grain or failed, when the answer contradicts a human label given with the
    request, and when no sample was valid (then there is no answer and the
    confidence is 0). Known labels never change the answer: they only flag.
    Known VA contradicts the answer when it differs by more than 0.4, a fifth of
    the scale and beyond the AffectNet per-class standard deviations (0.06 to
    0.24, ``knowledge.VA_PRIORS``).

Defaults
    K0 3, Kmax 10, step 2, temperature 1.0, entropy threshold 0.35, plurality
    threshold 0.7 (3/3 of eight classes passes at 0.73, 2/1 and 3/2 do not),
    review threshold 0.7. ``bench/uamc_vs_fixed.py --tune`` scores alternatives on
    images the offline annotator never trained on; lower temperatures there cut
    samples but also the confidence's power to separate right from wrong, and the
    confidence weights made little difference, so the defaults stay as defined.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from seke_app.engine.knowledge import Consistency, consistency, expression_log_likelihoods
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    Backend,
    Intensity,
    KnownLabels,
    Sample,
    Usage,
    VerificationRequest,
)
from seke_app.engine.vocab import Vocabulary

Strategy = Literal["uamc", "fixed", "single"]
STRATEGIES: tuple[Strategy, ...] = ("uamc", "fixed", "single")
GRAINS: tuple[str, ...] = ("expression", "va", "aus")
GRAIN_NAMES = {"expression": "expression", "va": "valence/arousal", "aus": "AU"}

# Weights of the confidence components (see the module docstring).
AGREEMENT_WEIGHT = 0.7
VERIFICATION_WEIGHT = 0.15
KNOWLEDGE_WEIGHT = 0.15
# Verification component of a grain the verifier revised.
REVISED_FACTOR = 0.5
# Agreement of VA and AUs when only one vote exists.
SINGLE_VOTE_AGREEMENT = 0.5
# A VA standard deviation of this size gives zero VA agreement.
VA_SPREAD_SCALE = 0.5
# A known valence or arousal further than this from the answer is a contradiction.
VA_CONTRADICTION = 0.4


@dataclass(frozen=True)
class UAMCParams:
    """One run's sampling strategy, thresholds and review threshold."""

    strategy: Strategy = "uamc"
    k0: int = 3
    kmax: int = 10
    step: int = 2
    temperature: float = 1.0
    entropy_threshold: float = 0.35
    plurality_threshold: float = 0.7
    va_sem_threshold: float = 0.15
    au_band: float = 0.15
    au_max_unsure: int = 1
    review_threshold: float = 0.7
    verify: bool = True
    futility: bool = True

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("invalid SV-UAMC parameters: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        checks = [
            (self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}"),
            (self.k0 >= 1, "k0 (initial samples) must be at least 1"),
            (self.kmax >= self.k0, "kmax (most samples) must be at least k0"),
            (self.step >= 1, "step (samples added per round) must be at least 1"),
            (0 < self.temperature <= 2, "temperature must be above 0 and at most 2"),
            (0 <= self.entropy_threshold <= 1, "entropy_threshold must lie in [0, 1]"),
            (0 <= self.plurality_threshold <= 1, "plurality_threshold must lie in [0, 1]"),
            (self.va_sem_threshold > 0, "va_sem_threshold must be positive"),
            (0 <= self.au_band <= 0.5, "au_band must lie in [0, 0.5]"),
            (self.au_max_unsure >= 0, "au_max_unsure must not be negative"),
            (0 <= self.review_threshold <= 1, "review_threshold must lie in [0, 1]"),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def verifies(self) -> bool:
        """Whether a verification call is made: never for single-shot."""
        return self.verify and self.strategy != "single"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UAMCParams:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SV-UAMC parameters: {', '.join(unknown)}")
        return cls(**data)


# --- Uncertainty -------------------------------------------------------------------


@dataclass(frozen=True)
class ExpressionStats:
    """Vote counts and masses (most first) and the expression grain's uncertainty.

    ``votes`` counts the answers' expressions; ``mass`` is what the statistics use:
    the same counts, except that a sample carrying ``expression_probs`` adds those
    probabilities instead of one whole vote.
    """

    votes: dict[str, int]
    entropy: float
    plurality_posterior: float
    unsure: bool
    mass: dict[str, float] = field(default_factory=dict)


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

    def largest_sd(self) -> float | None:
        sds = [s for s in (self.valence.sd, self.arousal.sd) if s is not None]
        return max(sds) if sds else None


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


def _expression_stats(
    answers: Sequence[Answer],
    params: UAMCParams,
    vocabulary: Vocabulary,
    weights: Sequence[Mapping[str, float]] | None = None,
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
    unsure = entropy > params.entropy_threshold or posterior < params.plurality_threshold
    return ExpressionStats(votes, entropy, posterior, unsure, mass)


def _va_stats(answers: Sequence[Answer], params: UAMCParams) -> VAStats:
    valence = SeriesStats.of([a.valence for a in answers])
    arousal = SeriesStats.of([a.arousal for a in answers])
    sems = [valence.sem, arousal.sem]
    unsure = any(s is None or s > params.va_sem_threshold for s in sems)
    return VAStats(valence, arousal, unsure)


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
) -> Uncertainty:
    """Every grain's uncertainty over the votes (``weights``: see ``vote_weights``)."""
    return Uncertainty(
        n_votes=len(answers),
        expression=_expression_stats(answers, params, vocabulary, weights),
        va=_va_stats(answers, params),
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
        probs = sample.expression_probs or {}
        kept = {e: max(0.0, float(probs.get(e, 0.0))) for e in vocabulary.expressions}
        total = sum(kept.values())
        if total > 0:
            weights.append({e: p / total for e, p in kept.items() if p > 0})
        else:
            weights.append({sample.answer.expression: 1.0})
    return weights


def _measure_samples(
    samples: Sequence[Sample], params: UAMCParams, vocabulary: Vocabulary
) -> Uncertainty:
    return measure(
        votes_of(samples, vocabulary), params, vocabulary, vote_weights(samples, vocabulary)
    )


# --- Sampling ----------------------------------------------------------------------


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


def _worth_sampling(uncertainty: Uncertainty, params: UAMCParams, vocabulary: Vocabulary) -> bool:
    """Whether another round may settle an unsure grain (see "Stopping rule")."""
    if not uncertainty.unsure:
        return False
    if not params.futility or uncertainty.n_votes == 0:
        return True
    expression = (
        uncertainty.expression.unsure
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
    mass = uncertainty.expression.mass or dict(uncertainty.expression.votes)
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
    if votes and uncertainty.expression.mass != {e: float(c) for e, c in votes.items()}:
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
        """The weakest grain's confidence (see the module docstring)."""
        return min(self.expression, self.va, self.aus)


def _weighted_geometric_mean(parts: Mapping[str, float], weights: Mapping[str, float]) -> float:
    total = sum(weights[name] for name in parts)
    if any(value <= 0 for value in parts.values()):
        return 0.0
    return math.exp(sum(weights[name] * math.log(v) for name, v in parts.items()) / total)


def _agreements(
    uncertainty: Uncertainty, expression: str, vocabulary: Vocabulary
) -> dict[str, float]:
    stats = uncertainty.expression
    mass = stats.mass or {e: float(c) for e, c in stats.votes.items()}
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


def grain_confidence(
    uncertainty: Uncertainty,
    answer: Answer,
    verification: Verification | None,
    knowledge: Consistency,
    vocabulary: Vocabulary,
) -> GrainConfidence:
    """Each grain's weighted geometric mean of agreement, verification and knowledge."""
    weights = {
        "agreement": AGREEMENT_WEIGHT,
        "verification": VERIFICATION_WEIGHT,
        "knowledge": KNOWLEDGE_WEIGHT,
    }
    agreement = _agreements(uncertainty, answer.expression, vocabulary)
    knowledge_parts = {
        "expression": knowledge.score,
        "va": knowledge.va_score,
        "aus": knowledge.au_score,
    }
    verdict = verification.verdict if verification is not None else {}
    components: dict[str, dict[str, float]] = {}
    for grain in GRAINS:
        parts = {"agreement": agreement[grain], "knowledge": knowledge_parts[grain]}
        if verdict.get(grain) in ("confirm", "revise"):
            parts["verification"] = 1.0 if verdict[grain] == "confirm" else REVISED_FACTOR
        components[grain] = parts
    values = {g: _weighted_geometric_mean(components[g], weights) for g in GRAINS}
    return GrainConfidence(values["expression"], values["va"], values["aus"], components)


# --- Flags -------------------------------------------------------------------------


def _low_confidence_detail(grain: str, uncertainty: Uncertainty) -> str:
    n = uncertainty.n_votes
    if n < 2:
        return f"only {n} valid sample"
    if grain == "expression":
        votes = uncertainty.expression.votes
        mass = uncertainty.expression.mass
        soft = mass != {e: float(c) for e, c in votes.items()}
        detail = (
            _split_phrase(votes)
            if len(votes) > 1
            else f"all {n} samples chose {next(iter(votes))}, too few to be sure"
        )
        return f"{detail} ({_mass_phrase(mass)})" if soft else detail
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


# --- Result ------------------------------------------------------------------------


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {
        "kind": sample.kind,
        "raw": sample.raw,
        "answer": sample.answer.to_json() if sample.answer is not None else None,
        "error": sample.error,
        "verdict": dict(sample.verdict) if sample.verdict is not None else None,
        "usage": asdict(sample.usage),
        "expression_probs": sample.expression_probs,
    }


@dataclass(frozen=True)
class UAMCResult:
    """SV-UAMC's outcome for one image: the answer, the evidence for trusting it, the cost."""

    strategy: Strategy
    answer: Answer | None
    aggregate: Answer | None
    samples: list[Sample]
    rounds: list[int]
    uncertainty: Uncertainty
    confidence: GrainConfidence
    consistency: Consistency | None
    verification: Verification | None
    overall_confidence: float
    flagged: bool
    flag_reasons: list[str]
    usage: Usage
    n_samples: int
    n_valid: int

    @property
    def n_invalid(self) -> int:
        """Drawn samples (not the verification) that did not vote."""
        return sum(s.kind == "sample" for s in self.samples) - self.n_valid

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types for storage."""
        knowledge = self.consistency
        return {
            "strategy": self.strategy,
            "answer": self.answer.to_json() if self.answer is not None else None,
            "aggregate": self.aggregate.to_json() if self.aggregate is not None else None,
            "samples": [_sample_json(s) for s in self.samples],
            "rounds": list(self.rounds),
            "uncertainty": _uncertainty_json(self.uncertainty),
            "confidence": {
                "expression": self.confidence.expression,
                "va": self.confidence.va,
                "aus": self.confidence.aus,
                "components": self.confidence.components,
            },
            "consistency": asdict(knowledge) if knowledge is not None else None,
            "verification": self.verification.to_json() if self.verification else None,
            "overall_confidence": self.overall_confidence,
            "flagged": self.flagged,
            "flag_reasons": list(self.flag_reasons),
            "usage": asdict(self.usage),
            "n_samples": self.n_samples,
            "n_valid": self.n_valid,
        }


def _uncertainty_json(uncertainty: Uncertainty) -> dict[str, Any]:
    return {
        "n_votes": uncertainty.n_votes,
        "expression": asdict(uncertainty.expression),
        "va": {
            "valence": asdict(uncertainty.va.valence)
            | {"values": list(uncertainty.va.valence.values)},
            "arousal": asdict(uncertainty.va.arousal)
            | {"values": list(uncertainty.va.arousal.values)},
            "unsure": uncertainty.va.unsure,
        },
        "aus": {
            "rates": {str(au): r for au, r in uncertainty.aus.rates.items()},
            "unsure_aus": list(uncertainty.aus.unsure_aus),
            "unsure": uncertainty.aus.unsure,
        },
        "unsure_grains": uncertainty.unsure_grains(),
    }


# --- The procedure -----------------------------------------------------------------


def _total_usage(samples: Sequence[Sample]) -> Usage:
    total = Usage()
    for sample in samples:
        total = total + sample.usage
    return total


def _without_answer(
    params: UAMCParams, samples: list[Sample], rounds: list[int], uncertainty: Uncertainty
) -> UAMCResult:
    first_error = next((s.error for s in samples if s.error), None)
    reason = f"all {len(samples)} samples were invalid"
    if first_error:
        reason += f" (first error: {first_error})"
    return UAMCResult(
        strategy=params.strategy,
        answer=None,
        aggregate=None,
        samples=samples,
        rounds=rounds,
        uncertainty=uncertainty,
        confidence=GrainConfidence(0.0, 0.0, 0.0),
        consistency=None,
        verification=None,
        overall_confidence=0.0,
        flagged=True,
        flag_reasons=[reason],
        usage=_total_usage(samples),
        n_samples=len(samples),
        n_valid=0,
    )


def run_uamc(backend: Backend, request: AnnotationRequest, params: UAMCParams) -> UAMCResult:
    """Annotate one image with SV-UAMC (or its fixed-N and single-shot baselines)."""
    vocabulary = request.vocabulary
    samples, rounds, uncertainty = _draw_samples(backend, request, params)
    votes = votes_of(samples, vocabulary)
    if not votes:
        return _without_answer(params, samples, rounds, uncertainty)
    combined = aggregate(votes, uncertainty, vocabulary)
    verification = None
    if params.verifies:
        verification = verify(
            backend, request, combined, disagreement_text(uncertainty, len(samples))
        )
        if verification.sample is not None:
            samples.append(verification.sample)
    answer = verification.answer if verification is not None else combined
    knowledge = consistency(
        answer.expression, answer.valence, answer.arousal, answer.aus, vocabulary
    )
    confidence = grain_confidence(uncertainty, answer, verification, knowledge, vocabulary)
    reasons = _confidence_reasons(confidence, uncertainty, knowledge, params.review_threshold)
    if verification is not None:
        reasons += _verification_reasons(verification, combined)
    reasons += known_label_contradictions(answer, request.known)
    return UAMCResult(
        strategy=params.strategy,
        answer=answer,
        aggregate=combined,
        samples=samples,
        rounds=rounds,
        uncertainty=uncertainty,
        confidence=confidence,
        consistency=knowledge,
        verification=verification,
        overall_confidence=confidence.overall(),
        flagged=bool(reasons),
        flag_reasons=reasons,
        usage=_total_usage(samples),
        n_samples=len(samples),
        n_valid=len(votes),
    )
