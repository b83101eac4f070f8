"""SV-UAMC: uncertainty-aware Monte Carlo sampling with self-verification.

The package: ``params`` (run parameters, the grains' roles), ``uncertainty``
(votes, per-grain uncertainty, the plurality posterior), ``aggregation``
(sampling rounds, aggregation, verification), ``confidence`` (confidence per
grain), ``reasons`` (the flag's reasons in words), and here the result and the
procedure, ``run_uamc``.

The method's name and outline come from Wang et al. (arXiv 2505.18168); its
details are not published, so everything below is this project's own definition
(README.md, "The annotation engine", summarises it). One code path serves three
strategies, so that accuracy per call can be compared fairly:

* ``uamc``: draw ``k0`` samples, then ``step`` more while any grain is unsure and
  fewer than ``kmax`` exist, then verify;
* ``fixed``: draw ``kmax`` samples at once (no adaptivity), verify if asked;
* ``single``: draw one sample and never verify.

Known and inferred grains
    A grain the image's known labels give (``KnownLabels.grains``: the
    expression, valence and arousal together, AUs coded in the vocabulary) is an
    input, not a question. The answer carries the dataset's value (and the
    aggregate already does, so the verifier sees it and a tie of the expression
    is broken with it); its samples' spread does not keep the sampler drawing;
    the verification cannot revise it; its confidence is 1 (one component,
    ``given``); it never adds a flag reason. Its provenance is ``dataset``, that
    of every other grain ``model``. When every grain is given and every AU of the
    vocabulary coded, nothing is left to predict and no call is made. AUs the
    labels leave uncoded keep the model's answer, and the evidence names them.

    A known grain therefore cannot contradict the answer, and the check that
    flagged such contradictions is gone. What a contradiction check still
    means is a *predicted* grain far from what a given grain implies, and that
    is the knowledge component's job: the consistency is scored on the final
    answer, so a predicted VA far from a given expression's typical VA lowers
    the VA confidence and, under the threshold, names the conflict. That
    conflict is a doubt, not a verdict, so a lower threshold can lift it.

    A grain the backend does not observe (``Backend.observed_grains``; the
    offline annotator's AUs) is *inferred* from the expression (or, when the
    expression itself is not observed, from the first grain that is observed or
    given). Its confidence is its source's (one component, ``inferred``): its
    samples disagree only because their expressions do, which the source's
    confidence already counts. It never keeps the sampler drawing and never
    flags on its own; the verification revises it only together with its
    source, and that revision's reason says that it followed. It is aggregated
    over the votes that chose the answer's expression, so that it follows that
    expression rather than the votes' mix (where none did, it is what the
    knowledge makes typical of the expression), and the knowledge leaves it out
    of the consistency: made from the expression, its fit with it is no evidence.

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
    (``Sample.expression_probs``; the offline annotator gives its view's softmax,
    a VLLM its token log-probabilities at the expression, ``llm.logprobs``).
    Such a sample adds those probabilities to the classes' *masses* instead of one
    whole vote to its drawn class: the expected vote, with the same mean as the
    drawn one and without the draw's noise. The plurality, the plurality posterior
    (with the masses as fractional counts: gamma instead of Erlang terms, within
    1e-4) and the expression agreement use the masses; a sample without
    probabilities has a mass of one on its expression, so hard votes are the
    special case. The entropy stays that of the drawn votes. A confident view
    (p = 0.95) then counts almost fully and a hesitant one (p = 0.4) only partly,
    so the confidence follows the backend's own certainty, not only its votes.
    Whether soft votes from token log-probabilities have settled the expression
    is read from their spread instead ("Stopping rule").

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
    ``uamc`` stops as soon as no predicted grain is unsure (given and inferred
    grains do not count), or when ``kmax`` samples have
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

    Soft votes from token log-probabilities (``Sample.probs_source``
    "logprobs") settle the expression by the same test on what they are worth.
    The schema has the model write its evidence and AUs before the expression,
    so a sample's probabilities there are its distribution *given its own
    sampled reasoning*, and their mean estimates the model's distribution over
    expressions. Averaging these conditional probabilities instead of the drawn
    votes is a Rao-Blackwellised estimate: its variance is never larger than the
    whole votes'. How much smaller it is shows in how the samples'
    distributions spread (``uncertainty.MarginStats``): each vote's margin
    ``d = q(top) - q(runner-up)`` between the two classes of largest mass, whose
    mean is the plurality's lead. A whole vote drawn from the mean distribution
    ``m`` has a margin of variance ``m(top) + m(runner-up) - (m(top) -
    m(runner-up))^2``; the soft votes' margins have the variance of their own
    deviations, pooled with one pseudo-vote of a whole vote's variance (the
    floor below). ``k`` soft votes then measure the lead as precisely as
    ``k * whole variance / soft variance`` whole votes, their *effective votes*,
    and the expression is unsure when the mean distribution's entropy exceeds
    ``entropy_threshold`` or its plurality posterior, counted as that many
    votes (``settled``), is below ``plurality_threshold``; the futility stop
    projects the same distribution and spread onto ``step`` more votes. It is
    the whole-vote rule with the soft votes' worth in place of their number: a
    whole vote is worth one, so whole votes that split settle exactly as they
    do today, and the draw's noise, which the soft votes remove, no longer
    counts. Counting the soft votes as fractional votes instead made three
    votes of 0.9 weigh less than three lucky whole votes (0.67 against 0.73),
    which bought samples and no accuracy.

    The floor: the pseudo-vote's variance is a whole vote's, the most a
    Rao-Blackwellised vote can spread in expectation, so until the votes show
    their own spread they are assumed to spread like whole votes. ``k`` votes
    without any spread are therefore worth ``k (k + 1)`` whole votes at most (12
    for three): two or three votes that happen to agree cannot claim certainty
    from a spread they are too few to measure, and a hesitant model (0.55
    against 0.45, every time) is not settled by its first three samples. The
    floor rises more slowly than the votes, so consistent votes settle within
    a few rounds. A vote without probabilities in such a run (its reading
    failed) enters with a margin of 1, -1 or 0: the same expectation as its
    distribution's, its larger spread counted.

    Only log-probability soft votes are read this way. The offline annotator's
    probabilities ("views") are softmaxes of augmented views, not conditional
    on a sampled reasoning, and keep the fractional-count rule their figures
    were measured with. Only whether to draw more changes: the plurality, the
    confidence (still the plurality posterior of the masses as fractional
    counts) and the flags keep their definitions, so they differ from whole
    votes' only through the samples drawn. Figures are in ``bench/README.md``,
    measured by ``python bench/logprob_votes.py``.

Aggregation
    Plurality expression (by mass, see "Soft votes"). Ties are broken by
    knowledge: the tied class with the highest ``expression_log_likelihoods`` of
    the aggregated VA and AUs wins, and the vocabulary's order settles what is
    still tied. VA is the median of the
    votes. An AU is active when its rate is at least 0.5; its intensity is the
    most common intensity among the votes that mark it active (the lower letter
    on a tie, which errs on the side of a weaker claim). Evidence comes from the
    first vote for the chosen expression (when the masses chose a class no sample
    drew, the evidence says so and gives its mean probability). Given grains then
    take the known labels.

Self-verification
    One call shows the model the aggregate and the disagreement in words. Its
    verdict per grain (``expression``, ``va``, ``aus``) is "confirm" or "revise".
    A revised grain takes the verifier's value: the verifier has seen everything
    the samples saw plus the disagreement, so its considered answer is preferred,
    and the revision flags the item for a human anyway. A revision of a given
    grain, or of an inferred grain whose source stands, is not applied
    (``Verification.ignored``). The pre-verification aggregate is kept in the
    result. An invalid verification reply is kept and
    flags the item, because the run asked for a verified answer and has none.

Confidence per grain
    Of a predicted grain (a given one has 1, an inferred one its source's): the
    weighted geometric mean of three components in [0, 1]. The weights are
    run parameters (``UAMCParams.weights``, and ``UAMCParams.graded_weights`` for
    a graded verification, below); the values given here are their defaults.

    * agreement (weight 0.7): expression, the plurality posterior of the final
      expression over the masses; VA, ``1 - min(1, max(sd V, sd A) / 0.5)``, 0.5 meaning the
      samples spread over a quarter of the scale, where a backend that reports its
      own error of a reading (``Sample.va_sd``) has it added to the spread per
      axis (``VAStats.total_sd``); AUs, the mean of
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
    un-augmented softmax, a VLLM verifier's token log-probabilities), the
    expression's verification component is the
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
    An item is flagged, with a reason for each cause (``reasons.FlagReason``),
    when a predicted grain's confidence is under ``review_threshold`` (with the
    votes, probabilities and spread behind it, the components, and the knowledge
    conflicts that involve a predicted grain), when the verification revised a
    grain or failed, and when no sample was valid (then there is no answer and
    the confidence is 0). Each reason has a kind: a low confidence and its
    knowledge conflicts are lifted by a lower threshold, the others hold the
    item for review whatever the threshold (``UAMCResult.held``). The words
    describe the final answer and how it was reached; ``reasons`` says how.

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
from dataclasses import asdict, dataclass, field
from typing import Any

from seke_app.engine.knowledge import Consistency, consistency
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    Backend,
    Sample,
    Usage,
    observed_grains,
)
from seke_app.engine.uamc.aggregation import (
    Verification,
    _draw_samples,
    aggregate,
    disagreement_text,
    follow_sources,
    verify,
    with_known,
)
from seke_app.engine.uamc.confidence import GrainConfidence, grain_confidence
from seke_app.engine.uamc.params import (
    GRAINS,
    STRATEGIES,
    ConfidenceWeights,
    GrainRoles,
    Strategy,
    UAMCParams,
)
from seke_app.engine.uamc.reasons import (
    FlagReason,
    Outcome,
    confidence_reasons,
    no_answer_reason,
    verification_reasons,
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
from seke_app.engine.vocab import Vocabulary

__all__ = [
    "GRAINS",
    "STRATEGIES",
    "ConfidenceWeights",
    "ExpressionStats",
    "FlagReason",
    "GrainConfidence",
    "GrainRoles",
    "Strategy",
    "UAMCParams",
    "UAMCResult",
    "Uncertainty",
    "Verification",
    "aggregate",
    "disagreement_text",
    "grain_confidence",
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
        "probs_source": sample.probs_source,
        "va_sd": list(sample.va_sd) if sample.va_sd is not None else None,
    }


@dataclass(frozen=True)
class UAMCResult:
    """SV-UAMC's outcome for one image: the answer, the evidence for trusting it, the cost.

    ``roles`` says which grains were given by the image's known labels (the answer
    carries them), which were inferred and from what, and so each grain's
    provenance. ``reasons`` are the flag's causes; ``flagged`` and ``held`` follow
    from them.
    """

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
    reasons: list[FlagReason]
    usage: Usage
    n_samples: int
    n_valid: int
    roles: GrainRoles = field(default_factory=GrainRoles)

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def held(self) -> bool:
        """Whether some reason holds the item for review whatever the threshold."""
        return any(reason.held for reason in self.reasons)

    @property
    def flag_reasons(self) -> list[str]:
        """The reasons in words, as the review page shows them."""
        return [reason.text for reason in self.reasons]

    @property
    def given_grains(self) -> tuple[str, ...]:
        return self.roles.given

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
            "held": self.held,
            "flag_reasons": self.flag_reasons,
            "reasons": [reason.to_json() for reason in self.reasons],
            "given_grains": list(self.roles.given),
            "provenance": self.roles.provenance,
            "inferred_from": dict(self.roles.inferred_from),
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
    params: UAMCParams,
    samples: list[Sample],
    rounds: list[int],
    uncertainty: Uncertainty,
    roles: GrainRoles,
) -> UAMCResult:
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
        reasons=[no_answer_reason(samples)],
        usage=_total_usage(samples),
        n_samples=len(samples),
        n_valid=0,
        roles=roles,
    )


def _after_verification(
    verification: Verification,
    combined: Answer,
    votes: Sequence[Answer],
    roles: GrainRoles,
    vocabulary: Vocabulary,
) -> Answer:
    """The verified answer; an inferred grain the verifier left as it was follows a
    revised expression all the same (``follow_sources``)."""
    answer = verification.answer
    if answer.expression == combined.expression:
        return answer
    unrevised = {g: s for g, s in roles.inferred_from.items() if g not in verification.revised}
    return follow_sources(answer, votes, GrainRoles(roles.given, unrevised), vocabulary)


def _consistency(answer: Answer, roles: GrainRoles, vocabulary: Vocabulary) -> Consistency:
    """The answer's fit with the knowledge, leaving out inferred grains: they were
    made from the expression, so their fit with it is no evidence for it."""
    inferred = roles.inferred_from
    va_known = "va" not in inferred
    return consistency(
        answer.expression,
        answer.valence if va_known else None,
        answer.arousal if va_known else None,
        None if "aus" in inferred else answer.aus,
        vocabulary,
    )


def _nothing_to_predict(request: AnnotationRequest, roles: GrainRoles) -> Answer | None:
    """The known labels as the whole answer, when they give every grain and code
    every AU of the vocabulary; None when something is left to predict."""
    known, vocabulary = request.known, request.vocabulary
    va = known.va()
    coded = known.coded_aus(vocabulary)
    if len(roles.given) < len(GRAINS) or known.expression is None or va is None:
        return None
    if set(coded) != set(vocabulary.aus):
        return None
    bare = Answer(expression=known.expression, valence=va[0], arousal=va[1], aus=coded)
    return with_known(bare, known, roles.given, vocabulary)


def _given_whole(
    params: UAMCParams, request: AnnotationRequest, answer: Answer, roles: GrainRoles
) -> UAMCResult:
    """Every grain given: no call, no sample, nothing to review."""
    vocabulary = request.vocabulary
    knowledge = consistency(
        answer.expression, answer.valence, answer.arousal, answer.aus, vocabulary
    )
    uncertainty = measure([], params, vocabulary)
    return UAMCResult(
        strategy=params.strategy,
        answer=answer,
        aggregate=answer,
        samples=[],
        rounds=[],
        uncertainty=uncertainty,
        confidence=grain_confidence(
            uncertainty, answer, None, knowledge, vocabulary, params, roles
        ),
        consistency=knowledge,
        verification=None,
        overall_confidence=1.0,
        reasons=[],
        usage=Usage(),
        n_samples=0,
        n_valid=0,
        roles=roles,
    )


def run_uamc(backend: Backend, request: AnnotationRequest, params: UAMCParams) -> UAMCResult:
    """Annotate one image with SV-UAMC (or its fixed-N and single-shot baselines)."""
    vocabulary = request.vocabulary
    roles = GrainRoles.of(request.known.grains(vocabulary), observed_grains(backend))
    whole = _nothing_to_predict(request, roles)
    if whole is not None:
        return _given_whole(params, request, whole, roles)
    samples, rounds, uncertainty = _draw_samples(backend, request, params, roles.predicted)
    votes = votes_of(samples, vocabulary)
    if not votes:
        return _without_answer(params, samples, rounds, uncertainty, roles)
    combined = aggregate(votes, uncertainty, vocabulary, request.known, roles.given)
    combined = follow_sources(combined, votes, roles, vocabulary)
    verification = None
    answer = combined
    if params.verifies:
        disagreement = disagreement_text(uncertainty, len(samples), roles)
        verification = verify(backend, request, combined, disagreement, roles)
        if verification.sample is not None:
            samples.append(verification.sample)
        answer = _after_verification(verification, combined, votes, roles, vocabulary)
    knowledge = _consistency(answer, roles, vocabulary)
    confidence = grain_confidence(
        uncertainty, answer, verification, knowledge, vocabulary, params, roles
    )
    outcome = Outcome(combined, answer, verification)
    reasons = confidence_reasons(
        confidence, uncertainty, knowledge, outcome, roles, params.review_threshold
    )
    if verification is not None:
        reasons += verification_reasons(verification, combined, roles)
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
        reasons=reasons,
        usage=_total_usage(samples),
        n_samples=len(samples),
        n_valid=len(votes),
        roles=roles,
    )
