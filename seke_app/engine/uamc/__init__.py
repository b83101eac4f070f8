"""SV-UAMC: uncertainty-aware Monte Carlo sampling with self-verification.

The package: ``params`` (run parameters), ``uncertainty`` (votes, per-grain
uncertainty, the plurality posterior), ``aggregation`` (sampling rounds,
aggregation, verification), ``confidence`` (confidence and flags), and here the
result and the procedure, ``run_uamc``.

The method's name and outline come from Wang et al. (arXiv 2505.18168); its
details are not published, so everything below is this project's own definition
(README.md, "The annotation engine", summarises it). One code path serves three
strategies, so that accuracy per call can be compared fairly:

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
    votes so far) stays under ``plurality_threshold``, or when the vote entropy
    exceeds ``entropy_threshold`` (a projection keeps the shares, hence the
    entropy: an even split stays even however often it is measured); VA when
    the spread so far would still give a standard error above
    ``va_sem_threshold`` at ``kmax``; AUs always, since a projection leaves
    every rate where it is. This is the
    futility stop of sequential testing: a split that more samples would only
    measure more precisely goes to review now instead of after ``kmax`` samples,
    and samples are spent where the next round can change the answer. The
    lookahead is one round, not several or all the way to ``kmax``, because the
    deeper projections drew more samples for the same accuracy and AUROC on the
    held-out training images. The samples per image with and without the stop
    and the entropy rule are in ``bench/README.md``, measured by
    ``python bench/uamc_vs_fixed.py`` and its ``--tune`` mode.

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
    The weighted geometric mean of three components in [0, 1]. The weights are
    run parameters (``UAMCParams.weights``, and ``UAMCParams.graded_weights`` for
    a graded verification, below); the values given here are their defaults.

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

    Graded verification: when the verification reply carries the verifier's
    probabilities (``Sample.expression_probs``; the offline annotator's
    un-augmented softmax), the expression's verification component is the
    verifier's probability of the final expression, and the expression's
    weights become agreement 0.45, verification 0.45, knowledge 0.1. A bare
    verdict from the model that drew the samples says little (a model tends to
    confirm its own aggregate), which is why it weighs 0.15; a probability
    grades a hesitant confirmation below a sure one, and a 2/1 split confirmed
    without one still stays under the default review threshold. The graded
    weights were chosen with ``python bench/uamc_vs_fixed.py --tune`` on the
    held-out training images, where they rank right above wrong answers and
    follow the FER+ vote share better than the bare verdict's weights (the grid
    and its figures are in ``bench/README.md``).

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
    samples but also the confidence's power to separate right from wrong. A
    plurality threshold of 0.8 scores better there but is not used: three
    unanimous whole votes (a VLLM's) would no longer stop at K0. The bare
    verdict's weights stay 0.7/0.15/0.15 although less knowledge weight scores
    better on the offline annotator, whose AUs follow its expression, so that
    the knowledge says little about it: with a VLLM's own AUs, a unanimous
    answer that contradicts the knowledge must not keep a high confidence
    (figures in ``bench/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from seke_app.engine.knowledge import Consistency, consistency
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    Backend,
    Sample,
    Usage,
)
from seke_app.engine.uamc.aggregation import (
    Verification,
    _draw_samples,
    aggregate,
    disagreement_text,
    verify,
)
from seke_app.engine.uamc.confidence import (
    GrainConfidence,
    _confidence_reasons,
    _verification_reasons,
    grain_confidence,
    known_label_contradictions,
)
from seke_app.engine.uamc.params import (
    GRAINS,
    STRATEGIES,
    ConfidenceWeights,
    Strategy,
    UAMCParams,
)
from seke_app.engine.uamc.uncertainty import (
    ExpressionStats,
    Uncertainty,
    measure,
    plurality_posterior,
    projected_posterior,
    vote_weights,
    votes_of,
)

__all__ = [
    "GRAINS",
    "STRATEGIES",
    "ConfidenceWeights",
    "ExpressionStats",
    "GrainConfidence",
    "Strategy",
    "UAMCParams",
    "UAMCResult",
    "Uncertainty",
    "Verification",
    "aggregate",
    "disagreement_text",
    "grain_confidence",
    "known_label_contradictions",
    "measure",
    "plurality_posterior",
    "projected_posterior",
    "run_uamc",
    "verify",
    "vote_weights",
    "votes_of",
]


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
    confidence = grain_confidence(uncertainty, answer, verification, knowledge, vocabulary, params)
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
