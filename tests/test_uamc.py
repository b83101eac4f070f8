"""SV-UAMC on a scripted backend: stopping, aggregation, confidence, flags, strategies."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from seke_app.engine.knowledge import AU_RATES, PROTOTYPES, VA_PRIORS
from seke_app.engine.types import (
    ALL_GRAINS,
    AnnotationRequest,
    Answer,
    KnownLabels,
    ProbsSource,
    Sample,
    Usage,
    VerificationRequest,
    observed_grains,
)
from seke_app.engine.uamc import (
    ConfidenceWeights,
    UAMCParams,
    UAMCResult,
    plurality_posterior,
    run_uamc,
)
from seke_app.engine.uamc import params as confidence_module
from seke_app.engine.uamc.uncertainty import effective_votes
from seke_app.engine.vocab import DEFAULT_VOCABULARY

VOCAB = DEFAULT_VOCABULARY
USAGE = Usage(requests=1, prompt_tokens=100, completion_tokens=50, cost_usd=0.001)


def answer(
    expression: str,
    valence: float | None = None,
    arousal: float | None = None,
    aus: Sequence[int] | None = None,
) -> Answer:
    """A prototypical answer: the expression's mean VA and prototype AUs unless given."""
    prior = VA_PRIORS[expression]
    active = set(PROTOTYPES[expression] if aus is None else aus)
    return Answer(
        expression=expression,
        valence=prior.valence if valence is None else valence,
        arousal=prior.arousal if arousal is None else arousal,
        aus={au: au in active for au in VOCAB.aus},
        au_intensity={au: "B" for au in active if au in VOCAB.aus},
        evidence={"expression": f"looks like {expression}"},
    )


class ScriptedBackend:
    """Returns scripted samples in order; a string in the script is an invalid reply."""

    name = "scripted"
    model = "script-1"
    observed_grains = ALL_GRAINS

    def __init__(
        self,
        script: Sequence[Answer | str | tuple[Answer, dict[str, float]]],
        *,
        verdict: dict[str, str] | None = None,
        revision: Answer | None = None,
        verification_error: str | None = None,
        verifier_probs: dict[str, float] | None = None,
        probs_source: ProbsSource | None = None,
    ) -> None:
        self.script = list(script)
        self.probs_source = probs_source
        self.calls: list[int] = []
        self.verdict = verdict
        self.revision = revision
        self.verification_error = verification_error
        self.verifier_probs = verifier_probs
        self.verifications: list[VerificationRequest] = []

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        self.calls.append(k)
        drawn = []
        for _ in range(k):
            item = self.script.pop(0)
            if isinstance(item, str):
                drawn.append(Sample(kind="sample", raw=item, error=item, usage=USAGE))
            elif isinstance(item, tuple):
                reply, probs = item
                raw = json.dumps(reply.to_json())
                drawn.append(
                    Sample(
                        kind="sample",
                        raw=raw,
                        answer=reply,
                        usage=USAGE,
                        expression_probs=probs,
                        probs_source=self.probs_source,
                    )
                )
            else:
                raw = json.dumps(item.to_json())
                drawn.append(Sample(kind="sample", raw=raw, answer=item, usage=USAGE))
        return drawn

    def verify(self, verification: VerificationRequest) -> Sample:
        self.verifications.append(verification)
        if self.verification_error is not None:
            return Sample(kind="verification", raw="?", error=self.verification_error)
        verdict = self.verdict or {"expression": "confirm", "va": "confirm", "aus": "confirm"}
        reply = self.revision or verification.aggregate
        return Sample(
            kind="verification",
            raw="{}",
            answer=reply,
            verdict=verdict,
            usage=USAGE,
            expression_probs=self.verifier_probs,
        )


def request(known: KnownLabels | None = None) -> AnnotationRequest:
    return AnnotationRequest(image_bytes=b"face", vocabulary=VOCAB, known=known or KnownLabels())


def run(backend: ScriptedBackend, known: KnownLabels | None = None, **params: object) -> UAMCResult:
    return run_uamc(backend, request(known), UAMCParams(**params))  # type: ignore[arg-type]


def alternating(a: str, b: str, n: int) -> list[Answer | str]:
    return [answer(a if i % 2 == 0 else b) for i in range(n)]


# --- Stopping rule -----------------------------------------------------------------


def test_it_stops_at_k0_when_unanimous() -> None:
    backend = ScriptedBackend([answer("happiness")] * 10)
    result = run(backend)
    assert backend.calls == [3]
    assert result.n_samples == 4
    assert result.n_valid == 3
    assert [s.kind for s in result.samples] == ["sample"] * 3 + ["verification"]
    assert not result.flagged, result.flag_reasons


def test_it_draws_by_step_while_split_and_never_exceeds_kmax() -> None:
    backend = ScriptedBackend(alternating("fear", "surprise", 20))
    result = run(backend, futility=False)
    assert backend.calls == [3, 2, 2, 2, 1]
    assert result.n_samples == 11
    assert result.rounds == [3, 2, 2, 2, 1]


def test_it_stops_once_the_split_resolves() -> None:
    script = [answer("fear"), answer("surprise")] + [answer("fear")] * 10
    backend = ScriptedBackend(script)
    run(backend, futility=False)
    # 2/1 is unsure, 4/1 after one more round is settled.
    assert backend.calls == [3, 2]


def test_futility_stops_a_split_the_next_round_would_not_settle() -> None:
    # 2/1 projects to 3.3/1.7 after two more votes: posterior 0.60, under 0.7.
    backend = ScriptedBackend([answer("fear"), answer("surprise")] + [answer("fear")] * 10)
    result = run(backend)
    assert backend.calls == [3]
    assert result.flagged
    assert any("split 2/1 between fear and surprise" in r for r in result.flag_reasons)


def test_futility_keeps_drawing_when_the_next_round_may_settle() -> None:
    # 3/1 projects to 4.5/1.5 after two more votes: posterior above 0.7, so draw.
    script = [answer("fear")] * 3 + [answer("surprise")] + [answer("fear")] * 10
    backend = ScriptedBackend(script)
    result = run(backend, k0=4)
    assert backend.calls == [4, 2]
    assert result.uncertainty.expression.votes == {"fear": 5, "surprise": 1}


def test_futility_stops_a_split_too_even_for_the_entropy_threshold() -> None:
    # 4/1/1: the posterior projects above 0.7 (0.84), but the entropy (0.42) stays
    # above 0.35 for any number of votes split the same way.
    script = [answer("fear")] * 4 + [answer("surprise"), answer("anger")] + [answer("fear")] * 10
    backend = ScriptedBackend(script)
    result = run(backend, k0=6)
    assert backend.calls == [6]
    assert result.uncertainty.expression.entropy > 0.35
    # Without the futility stop the same votes draw on until the split settles.
    backend = ScriptedBackend(list(script))
    run(backend, k0=6, futility=False)
    assert backend.calls == [6, 2, 2]


def test_futility_stops_for_va_only_when_kmax_could_not_narrow_it() -> None:
    wide = [answer("neutral", valence=v) for v in (-0.9, 0.0, 0.9, *[0.0] * 7)]
    backend = ScriptedBackend(wide)
    run(backend)
    # sd 0.9: even ten votes leave a standard error of 0.28 > 0.15.
    assert backend.calls == [3]
    narrow = [answer("neutral", valence=v) for v in (-0.3, 0.0, 0.3, *[0.0] * 7)]
    backend = ScriptedBackend(narrow)
    run(backend)
    # sd 0.3: the standard error is 0.17 now and would be 0.09 at ten votes.
    assert backend.calls[0] == 3 and len(backend.calls) > 1


def test_it_respects_a_small_kmax_with_a_large_step() -> None:
    backend = ScriptedBackend(alternating("fear", "anger", 20))
    result = run(backend, kmax=6, step=4)
    assert backend.calls == [3, 3]
    assert result.n_valid == 6


def test_it_keeps_drawing_while_va_is_spread() -> None:
    script = [answer("neutral", valence=v) for v in (-0.6, 0.0, 0.6, *[0.0] * 7)]
    backend = ScriptedBackend(script)
    result = run(backend, futility=False)
    assert backend.calls[0] == 3 and len(backend.calls) > 1
    assert result.uncertainty.va.valence.sem is not None


def test_it_tolerates_one_disputed_au_but_not_two() -> None:
    one = [answer("happiness", aus=(6, 12, 25) if i % 2 else (6, 12)) for i in range(10)]
    backend = ScriptedBackend(one)
    result = run(backend, k0=4)
    assert backend.calls == [4]
    assert result.uncertainty.aus.unsure_aus == (25,)
    assert not result.uncertainty.aus.unsure
    two = [answer("happiness", aus=(6, 12, 25, 26) if i % 2 else (6, 12)) for i in range(10)]
    backend = ScriptedBackend(two)
    result = run(backend, k0=4, futility=False)
    assert backend.calls == [4, 2, 2, 2]
    assert result.uncertainty.aus.unsure_aus == (25, 26)


# --- Aggregation -------------------------------------------------------------------


def test_it_aggregates_plurality_median_va_and_au_rates() -> None:
    script: list[Answer | str] = [
        answer("happiness", 0.5, 0.1, aus=(6, 12)),
        answer("happiness", 0.9, 0.3, aus=(6, 12, 25)),
        answer("happiness", 0.7, 0.0, aus=(12,)),
        answer("surprise", 0.2, 0.8, aus=(1, 2, 12)),
        answer("happiness", 0.6, 0.2, aus=(6, 12, 25)),
    ]
    result = run(ScriptedBackend(script), strategy="fixed", kmax=5)
    assert result.answer is not None
    assert result.answer.expression == "happiness"
    assert result.answer.valence == pytest.approx(0.6)
    assert result.answer.arousal == pytest.approx(0.2)
    assert result.answer.active_aus() == [6, 12]
    assert result.uncertainty.aus.rates[6] == pytest.approx(0.6)
    assert result.uncertainty.aus.rates[25] == pytest.approx(0.4)
    assert result.uncertainty.expression.votes == {"happiness": 4, "surprise": 1}
    assert result.answer.au_intensity == {6: "B", 12: "B"}


def test_it_breaks_ties_by_knowledge() -> None:
    # Two votes each; the aggregated VA and AUs decide which class explains them better.
    fear_like = dict(valence=-0.12, arousal=0.74, aus=(1, 2, 4, 5, 20, 25))
    surprise_like = dict(valence=0.2, arousal=0.7, aus=(1, 2, 5, 25, 26))
    for shape, expected in ((fear_like, "fear"), (surprise_like, "surprise")):
        script = [answer(e, **shape) for e in ("surprise", "fear", "surprise", "fear")]  # type: ignore[arg-type]
        result = run(ScriptedBackend(script), strategy="fixed", kmax=4)
        assert result.answer is not None
        assert result.answer.expression == expected


# --- Confidence --------------------------------------------------------------------


def test_it_gives_more_confidence_to_more_agreement() -> None:
    confidences = []
    for n_fear in (5, 4, 3):
        script = [answer("fear")] * n_fear + [answer("surprise")] * (5 - n_fear)
        result = run(ScriptedBackend(script), strategy="fixed", kmax=5)
        confidences.append(result.confidence.expression)
        assert 0.0 <= result.overall_confidence <= 1.0
        assert result.overall_confidence == min(
            result.confidence.expression, result.confidence.va, result.confidence.aus
        )
    assert confidences[0] > confidences[1] > confidences[2]


def test_a_verifiers_probability_grades_the_expression_confidence() -> None:
    votes = [(answer("fear"), {"fear": 0.8, "surprise": 0.2})] * 3
    fixed = {"strategy": "fixed", "kmax": 3}
    sure = run(ScriptedBackend(votes, verifier_probs={"fear": 0.9, "surprise": 0.1}), **fixed)
    hesitant = run(ScriptedBackend(votes, verifier_probs={"fear": 0.45, "surprise": 0.4}), **fixed)
    bare = run(ScriptedBackend(votes), **fixed)
    for result in (sure, hesitant, bare):
        assert result.verification is not None
        assert result.verification.verdict["expression"] == "confirm"
    assert sure.confidence.components["expression"]["verification"] == pytest.approx(0.9)
    # Renormalised over the vocabulary: 0.45 of 0.85.
    assert hesitant.confidence.components["expression"]["verification"] == pytest.approx(
        0.45 / 0.85
    )
    assert bare.confidence.components["expression"]["verification"] == 1.0
    assert sure.confidence.expression > hesitant.confidence.expression
    # The graded weights apply to the expression only; the other grains keep theirs.
    assert sure.confidence.va == pytest.approx(bare.confidence.va)
    components = hesitant.confidence.components["expression"]
    expected = math.exp(
        sum(
            confidence_module.GRADED_WEIGHTS[name] * math.log(value)
            for name, value in components.items()
        )
    )
    assert hesitant.confidence.expression == pytest.approx(expected)


def test_a_bare_confirmation_does_not_carry_a_split() -> None:
    # A 2/1 split confirmed without probabilities keeps the verdict's small weight.
    script = [answer("fear"), answer("surprise"), answer("fear")]
    result = run(ScriptedBackend(script), strategy="fixed", kmax=3)
    assert result.confidence.expression < 0.7
    assert result.flagged


def test_it_computes_the_plurality_posterior_exactly_for_two_classes() -> None:
    # Two classes: P(p_a > p_b) = P(Beta(4, 2) > 1/2) = P(Binomial(5, 1/2) <= 3) = 26/32.
    assert plurality_posterior([3, 1], 0) == pytest.approx(26 / 32, abs=1e-6)
    assert plurality_posterior([2, 2], 0) == pytest.approx(0.5, abs=1e-6)


def test_it_agrees_with_a_monte_carlo_plurality_posterior() -> None:
    counts = [3, 2, 0, 0, 0, 0, 0, 0]
    draws = np.random.default_rng(0).dirichlet(np.array(counts) + 1.0, size=200_000)
    expected = float(np.mean(draws.argmax(axis=1) == 0))
    assert plurality_posterior(counts, 0) == pytest.approx(expected, abs=0.005)


# --- Flags -------------------------------------------------------------------------


def test_it_flags_a_split_in_words() -> None:
    script = [answer("fear")] * 3 + [answer("surprise")] * 2
    result = run(ScriptedBackend(script), strategy="fixed", kmax=5)
    assert result.flagged
    assert any("expression split 3/2 between fear and surprise" in r for r in result.flag_reasons)


def test_it_flags_and_applies_a_verification_revision() -> None:
    backend = ScriptedBackend(
        [answer("surprise")] * 3,
        verdict={"expression": "revise", "va": "confirm", "aus": "confirm"},
        revision=answer("fear"),
    )
    result = run(backend)
    assert result.answer is not None and result.aggregate is not None
    assert result.aggregate.expression == "surprise"
    assert result.answer.expression == "fear"
    assert result.flagged
    assert "verification revised the expression from surprise to fear" in result.flag_reasons
    assert "3 of 3 samples were valid" in backend.verifications[0].disagreement
    assert result.verification is not None and result.verification.revised == ("expression",)


def test_it_flags_a_failed_verification() -> None:
    result = run(ScriptedBackend([answer("happiness")] * 3, verification_error="timeout"))
    assert result.flagged
    assert "verification failed: timeout" in result.flag_reasons
    assert result.samples[-1].kind == "verification"


def test_it_flags_happiness_without_au12() -> None:
    result = run(ScriptedBackend([answer("happiness", aus=())] * 3))
    assert result.flagged
    assert any("AU12 absent but happiness" in r for r in result.flag_reasons)
    assert result.confidence.aus < 0.7


def test_it_does_not_flag_an_agreeing_known_label() -> None:
    known = KnownLabels(expression="happiness")
    result = run(ScriptedBackend([answer("happiness")] * 3), known=known)
    assert not result.flagged


# --- Known grains ------------------------------------------------------------------


def test_a_known_grain_is_carried_not_re_predicted_or_flagged() -> None:
    known = KnownLabels(expression="sadness", valence=-0.6, arousal=-0.2)
    result = run(ScriptedBackend([answer("happiness")] * 3), known=known)
    assert result.answer is not None
    assert (result.answer.expression, result.answer.valence, result.answer.arousal) == (
        "sadness",
        -0.6,
        -0.2,
    )
    assert result.given_grains == ("expression", "va")
    assert result.roles.provenance == {"expression": "dataset", "va": "dataset", "aus": "model"}
    assert result.confidence.expression == result.confidence.va == 1.0
    assert result.confidence.components["expression"] == {"given": 1.0}
    assert result.answer.evidence["expression"] == "given: the dataset's label"
    assert not any("contradicts" in r for r in result.flag_reasons)
    assert not any(r.startswith(("expression", "valence/arousal")) for r in result.flag_reasons)
    # The predicted AUs (a smile's) fit the known sadness badly: the knowledge lowers
    # their confidence, which a known happiness would not.
    agreeing = run(ScriptedBackend([answer("happiness")] * 3), known=KnownLabels("happiness"))
    assert result.confidence.aus < agreeing.confidence.aus
    assert result.confidence.components["aus"]["knowledge"] < 0.5


def test_a_known_grain_does_not_keep_the_sampler_drawing() -> None:
    shared = {"valence": 0.1, "arousal": 0.7, "aus": (1, 2, 5)}
    script = [answer(e, **shared) for e in ["fear", "surprise"] * 10]  # type: ignore[arg-type]
    unknown = ScriptedBackend(list(script))
    run(unknown, futility=False)
    assert len(unknown.calls) > 1
    known = ScriptedBackend(list(script))
    result = run(known, known=KnownLabels(expression="surprise"), futility=False)
    assert known.calls == [3]
    assert result.answer is not None and result.answer.expression == "surprise"
    assert not result.flagged, result.flag_reasons


def test_the_verification_never_revises_a_given_grain() -> None:
    backend = ScriptedBackend(
        [answer("fear")] * 3,
        verdict={"expression": "revise", "va": "confirm", "aus": "confirm"},
        revision=answer("surprise"),
    )
    result = run(backend, known=KnownLabels(expression="fear"))
    assert result.answer is not None and result.answer.expression == "fear"
    assert result.verification is not None
    assert result.verification.revised == () and result.verification.ignored == ("expression",)
    assert not result.flagged and not result.held
    # The verifier was shown the known expression in the aggregate.
    assert backend.verifications[0].aggregate.expression == "fear"
    assert "expression is given by the dataset" in backend.verifications[0].disagreement


def test_every_grain_given_needs_no_call() -> None:
    known = KnownLabels("anger", -0.5, 0.6, {au: au in PROTOTYPES["anger"] for au in VOCAB.aus})
    backend = ScriptedBackend([])
    result = run(backend, known=known)
    assert backend.calls == [] and not backend.verifications
    assert result.n_samples == 0 and result.usage.requests == 0
    assert result.answer is not None and result.answer.active_aus() == sorted(PROTOTYPES["anger"])
    assert result.overall_confidence == 1.0 and not result.flagged
    json.dumps(result.to_json())


def test_partly_coded_aus_keep_the_models_answer_for_the_rest() -> None:
    result = run(
        ScriptedBackend([answer("happiness", aus=(6, 12, 25))] * 3),
        known=KnownLabels(aus={6: False, 12: True}),
    )
    assert result.answer is not None
    assert result.answer.active_aus() == [12, 25]
    assert result.given_grains == ("aus",)
    assert "AU25" in result.answer.evidence["aus"] and "not coded" in result.answer.evidence["aus"]


def test_a_lone_valence_gives_no_grain() -> None:
    result = run(ScriptedBackend([answer("happiness")] * 3), known=KnownLabels(valence=-0.9))
    assert result.given_grains == ()
    assert result.answer is not None and result.answer.valence == VA_PRIORS["happiness"].valence


# --- Grains a backend does not observe ---------------------------------------------


class ExpressionOnlyBackend(ScriptedBackend):
    """Like the offline annotator: AUs follow the expression and are not observed."""

    observed_grains = frozenset({"expression", "va"})


def test_a_backend_that_does_not_say_observes_every_grain() -> None:
    assert observed_grains(object()) == ALL_GRAINS
    assert observed_grains(ExpressionOnlyBackend([])) == {"expression", "va"}


def test_an_unobserved_grain_follows_its_source_and_raises_no_flag() -> None:
    # AU14 in 2 of 5 samples, the expression unanimous.
    script = [answer("neutral", aus=(14,) if i < 2 else ()) for i in range(5)]
    observed = run(ScriptedBackend(list(script)), strategy="fixed", kmax=5)
    assert observed.confidence.aus < 0.7 and any("AU14" in r for r in observed.flag_reasons)
    result = run(ExpressionOnlyBackend(list(script)), strategy="fixed", kmax=5)
    assert result.roles.inferred_from == {"aus": "expression"}
    assert result.confidence.aus == result.confidence.expression
    assert result.confidence.components["aus"] == {"inferred": result.confidence.expression}
    assert not result.flagged, result.flag_reasons


def test_an_inferred_grain_follows_the_expression_the_answer_gives() -> None:
    # Two views drew happiness but leant to neutral; the probabilities choose neutral.
    leaning = {"neutral": 0.6, "happiness": 0.4}
    script = [(answer("happiness"), leaning)] * 2 + [(answer("neutral"), {"neutral": 0.9})]
    observed = run(ScriptedBackend(list(script)), strategy="fixed", kmax=3)
    inferred = run(ExpressionOnlyBackend(list(script)), strategy="fixed", kmax=3)
    for result in (observed, inferred):
        assert result.answer is not None and result.answer.expression == "neutral"
    # Observed AUs are the votes' (a smile in 2 of 3); inferred ones are neutral's.
    assert observed.answer is not None and observed.answer.active_aus() == [6, 12]
    assert inferred.answer is not None and inferred.answer.active_aus() == []
    # Nor do AUs made from the votes' expressions count as evidence against neutral.
    assert inferred.consistency is not None and inferred.consistency.au_score == 1.0
    assert not any("AU" in r for r in inferred.flag_reasons)
    # Where no vote chose the answer's expression, the AUs are the knowledge's for it.
    hesitant = [(answer("happiness"), {"surprise": 0.6, "happiness": 0.4})] * 3
    drawn_by_none = run(ExpressionOnlyBackend(hesitant), strategy="fixed", kmax=3)
    assert drawn_by_none.answer is not None and drawn_by_none.answer.expression == "surprise"
    typical = [au for au in VOCAB.aus if AU_RATES["surprise"].get(au, 0.0) >= 0.5]
    assert drawn_by_none.answer.active_aus() == typical
    assert "no sample chose surprise" in drawn_by_none.answer.evidence["aus"]


def test_an_unobserved_grain_is_revised_only_with_its_source() -> None:
    verdict = {"expression": "revise", "va": "confirm", "aus": "revise"}
    backend = ExpressionOnlyBackend(
        [answer("surprise")] * 3, verdict=verdict, revision=answer("fear")
    )
    result = run(backend)
    assert result.verification is not None and result.verification.revised == ("expression", "aus")
    assert result.answer is not None and result.answer.active_aus() == sorted(PROTOTYPES["fear"])
    assert (
        "verification revised the expression from surprise to fear; "
        "the AUs, inferred from it, follow it"
    ) in result.flag_reasons
    assert not any(
        r.startswith(("AU", "verification revised the AUs")) for r in result.flag_reasons
    )
    known = ExpressionOnlyBackend(
        [answer("surprise")] * 3, verdict=verdict, revision=answer("fear")
    )
    kept = run(known, known=KnownLabels(expression="surprise"))
    assert kept.verification is not None and kept.verification.ignored == ("expression", "aus")
    assert kept.answer is not None and kept.answer.active_aus() == sorted(PROTOTYPES["surprise"])


# --- Held reasons ------------------------------------------------------------------


def test_it_holds_only_for_reasons_no_threshold_lifts() -> None:
    split = run(ScriptedBackend([answer("fear"), answer("surprise"), answer("fear")]), kmax=3)
    assert split.flagged and not split.held
    assert {r.kind for r in split.reasons} <= {"low_confidence", "knowledge"}
    revised = run(
        ScriptedBackend(
            [answer("surprise")] * 3,
            verdict={"expression": "revise", "va": "confirm", "aus": "confirm"},
            revision=answer("fear"),
        )
    )
    assert revised.held and "revised" in {r.kind for r in revised.reasons}
    failed = run(ScriptedBackend([answer("happiness")] * 3, verification_error="timeout"))
    assert failed.held and [r.kind for r in failed.reasons] == ["verification_failed"]
    empty = run(ScriptedBackend(["refused"] * 10))
    assert empty.held and [r.kind for r in empty.reasons] == ["no_answer"]
    assert run(ScriptedBackend([answer("happiness")] * 3)).held is False


# --- Invalid samples ---------------------------------------------------------------


def test_it_counts_and_keeps_invalid_samples() -> None:
    script: list[Answer | str] = ["not JSON", *[answer("happiness")] * 9]
    result = run(ScriptedBackend(script))
    assert result.samples[0].error == "not JSON"
    assert result.n_valid == sum(s.valid and s.kind == "sample" for s in result.samples)
    assert result.n_invalid == 1
    assert result.n_samples == len(result.samples) == result.n_valid + 2
    assert result.usage.requests == result.n_samples


def test_it_returns_no_answer_when_every_sample_is_invalid() -> None:
    backend = ScriptedBackend(["refused"] * 10)
    result = run(backend)
    assert result.answer is None
    assert result.overall_confidence == 0.0
    assert result.flagged
    assert result.flag_reasons == ["all 10 samples were invalid (first error: refused)"]
    assert sum(backend.calls) == 10
    assert not backend.verifications
    json.dumps(result.to_json())


def test_it_does_not_count_expressions_outside_the_vocabulary() -> None:
    rafdb = VOCAB.__class__(expressions=VOCAB.expressions[:7], aus=VOCAB.aus)
    script = [answer("contempt")] + [answer("anger")] * 9
    backend = ScriptedBackend(script)
    result = run_uamc(backend, AnnotationRequest(b"x", rafdb), UAMCParams())
    assert result.answer is not None and result.answer.expression == "anger"
    assert result.n_invalid == 1


# --- Strategies and parameters -----------------------------------------------------


def test_it_runs_fixed_n_without_adaptivity() -> None:
    backend = ScriptedBackend([answer("happiness")] * 10)
    result = run(backend, strategy="fixed", kmax=10)
    assert backend.calls == [10]
    assert result.n_samples == 11
    unverified = ScriptedBackend([answer("happiness")] * 10)
    result = run(unverified, strategy="fixed", verify=False)
    assert result.n_samples == 10 and result.verification is None
    assert not unverified.verifications


def test_it_runs_single_shot_without_verification() -> None:
    backend = ScriptedBackend([answer("happiness")] * 2)
    result = run(backend, strategy="single")
    assert backend.calls == [1]
    assert result.n_samples == 1
    assert not backend.verifications
    # One vote says little: the expression posterior of one vote among eight classes.
    assert result.confidence.expression < 0.7 and result.flagged


def test_it_stores_the_result_as_plain_json() -> None:
    result = run(ScriptedBackend(alternating("fear", "surprise", 10)), futility=False)
    data = json.loads(json.dumps(result.to_json()))
    assert data["n_samples"] == 11
    assert data["samples"][-1]["kind"] == "verification"
    assert data["uncertainty"]["expression"]["votes"] == {"fear": 5, "surprise": 5}
    assert math.isclose(data["usage"]["cost_usd"], 0.011)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"strategy": "best"}, "strategy must be one of uamc, fixed, single"),
        ({"k0": 0}, "k0 (initial samples) must be at least 1"),
        ({"k0": 5, "kmax": 4}, "kmax (most samples) must be at least k0"),
        ({"step": 0}, "step"),
        ({"temperature": 0.0}, "temperature"),
        ({"au_band": 0.7}, "au_band"),
        ({"review_threshold": 1.5}, "review_threshold"),
    ],
)
def test_it_validates_params_in_words(params: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        UAMCParams(**params)  # type: ignore[arg-type]


def test_it_round_trips_params_through_json() -> None:
    params = UAMCParams(strategy="fixed", kmax=7)
    assert UAMCParams.from_json(params.to_json()) == params
    with pytest.raises(ValueError, match="unknown SV-UAMC parameters: colour"):
        UAMCParams.from_json({"colour": 1})


def test_it_builds_params_from_options_passed_whole() -> None:
    options = {
        "dataset": "drawn",
        "verbosity": 1,
        "strategy": "fixed",
        "k0": "4",
        "kmax": 8.0,
        "temperature": "0.5",
        "review_threshold": None,
        "verify": False,
        "futility": "off",
        "graded_weights": {"agreement": 0.5, "verification": 0.4, "knowledge": 0.1},
    }
    params = UAMCParams.from_options(options)
    assert params == UAMCParams(
        strategy="fixed",
        k0=4,
        kmax=8,
        temperature=0.5,
        verify=False,
        futility=False,
        graded_weights=ConfidenceWeights(0.5, 0.4, 0.1),
    )
    assert UAMCParams.from_options({}) == UAMCParams()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"k0": "three"}, "k0 must be a whole number, not 'three'"),
        ({"k0": 2.5}, "k0 must be a whole number, not 2.5"),
        ({"kmax": True}, "kmax must be a whole number, not True"),
        ({"temperature": "hot"}, "temperature must be a finite number, not 'hot'"),
        ({"review_threshold": math.nan}, "review_threshold must be a finite number, not nan"),
        ({"verify": "maybe"}, "verify must be true or false, not 'maybe'"),
        ({"k0": 5, "kmax": 2}, "kmax (most samples) must be at least k0"),
        ({"strategy": "best"}, "strategy must be one of uamc, fixed, single"),
        (
            {"weights": {"agreement": 1.0}},
            "weights must give exactly agreement, verification, knowledge, not agreement",
        ),
        ({"weights": "heavy"}, "weights must map agreement, verification, knowledge to numbers"),
        ({"weights": (1, "x", 0)}, "weights.verification must be a finite number, not 'x'"),
        (
            {"graded_weights": (0.5, -0.1, 0.1)},
            "graded_weights must all be finite and not negative",
        ),
        ({"weights": (0, 1, 0)}, "weights: agreement and knowledge must not both be 0"),
    ],
)
def test_it_refuses_bad_options_with_a_message(options: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError) as caught:
        UAMCParams.from_options(options)
    message = str(caught.value)
    assert message.startswith("invalid SV-UAMC parameters: ")
    assert words in message


def test_it_reports_every_bad_option_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        UAMCParams.from_options({"k0": "x", "step": "y", "verify": 3})
    message = str(caught.value)
    assert "k0 must be a whole number" in message
    assert "step must be a whole number" in message
    assert "verify must be true or false" in message


def test_it_loads_params_stored_before_the_weights_were_parameters() -> None:
    stored = {
        "strategy": "uamc",
        "k0": 3,
        "kmax": 8,
        "step": 2,
        "temperature": 1.0,
        "entropy_threshold": 0.35,
        "plurality_threshold": 0.7,
        "va_sem_threshold": 0.15,
        "au_band": 0.15,
        "au_max_unsure": 1,
        "review_threshold": 0.7,
        "verify": True,
        "futility": True,
    }
    params = UAMCParams.from_json(stored)
    assert params == UAMCParams(kmax=8)
    assert params.weights == ConfidenceWeights(0.7, 0.15, 0.15)
    assert params.graded_weights == ConfidenceWeights(0.45, 0.45, 0.1)


def test_it_round_trips_the_weights_through_json() -> None:
    params = UAMCParams(
        weights=ConfidenceWeights(0.6, 0.2, 0.2), graded_weights=ConfidenceWeights(0.3, 0.6, 0.1)
    )
    stored = json.loads(json.dumps(params.to_json()))
    assert stored["graded_weights"] == {"agreement": 0.3, "verification": 0.6, "knowledge": 0.1}
    assert UAMCParams.from_json(stored) == params


def _weighted(components: dict[str, float], weights: ConfidenceWeights) -> float:
    total = sum(weights[name] for name in components)
    return math.exp(sum(weights[name] * math.log(v) for name, v in components.items()) / total)


def test_it_weighs_the_confidence_with_the_params_weights() -> None:
    # Spread VA and a disputed AU, so that no grain's components are all 1.
    fear = PROTOTYPES["fear"]
    votes = [
        (answer("fear", valence=v, aus=fear if i else (*fear, 25)), {"fear": 0.8, "surprise": 0.2})
        for i, v in enumerate((-0.4, 0.0, 0.3))
    ]
    probs = {"fear": 0.45, "surprise": 0.4}
    bare = ConfidenceWeights(agreement=0.3, verification=0.1, knowledge=0.6)
    graded = ConfidenceWeights(agreement=0.2, verification=0.7, knowledge=0.1)
    fixed: dict[str, object] = {"strategy": "fixed", "kmax": 3}
    default = run(ScriptedBackend(votes, verifier_probs=probs), **fixed)
    chosen = run(
        ScriptedBackend(votes, verifier_probs=probs), weights=bare, graded_weights=graded, **fixed
    )
    # The components do not depend on the weights; only how they are combined does.
    assert chosen.confidence.components == default.confidence.components
    components = chosen.confidence.components
    assert chosen.confidence.expression == pytest.approx(
        _weighted(components["expression"], graded)
    )
    assert chosen.confidence.va == pytest.approx(_weighted(components["va"], bare))
    assert chosen.confidence.aus == pytest.approx(_weighted(components["aus"], bare))
    for grain in ("expression", "va", "aus"):
        assert chosen.confidence.of(grain) != pytest.approx(default.confidence.of(grain))


# --- Soft votes --------------------------------------------------------------------


def test_soft_votes_decide_the_plurality_by_summed_probability() -> None:
    # Every view drew fear, but each gave surprise the larger probability.
    hesitant = {"surprise": 0.55, "fear": 0.45}
    backend = ScriptedBackend([(answer("fear"), hesitant)] * 10)
    result = run(backend, kmax=3)
    stats = result.uncertainty.expression
    assert stats.votes == {"fear": 3}
    assert stats.mass == {"surprise": 1.65, "fear": 1.35}
    assert result.aggregate is not None and result.aggregate.expression == "surprise"
    assert "largest mean probability" in result.aggregate.evidence["expression"]
    assert any(
        "mean probabilities over the 3 samples surprise 0.55, fear 0.45" in r
        and "surprise chosen by the largest mean probability" in r
        for r in result.flag_reasons
    )


def test_soft_votes_make_confidence_follow_the_backends_certainty() -> None:
    sure = ScriptedBackend([(answer("happiness"), {"happiness": 0.97, "neutral": 0.03})] * 10)
    unsure = ScriptedBackend([(answer("happiness"), {"happiness": 0.5, "neutral": 0.5})] * 10)
    plain = ScriptedBackend([answer("happiness")] * 10)
    confident, hesitant, hard = run(sure), run(unsure, futility=False), run(plain)
    assert confident.confidence.expression > hesitant.confidence.expression
    # A hard vote is a soft vote of probability one.
    assert hard.confidence.expression >= confident.confidence.expression
    # The hesitant views never settle the plurality: without the futility stop
    # sampling goes on to kmax, with it sampling ends after the first round.
    assert sure.calls == [3] and sum(unsure.calls) == 10
    again = ScriptedBackend([(answer("happiness"), {"happiness": 0.5, "neutral": 0.5})] * 10)
    run(again)
    assert again.calls == [3]


def test_probabilities_outside_the_vocabulary_are_dropped_and_renormalised() -> None:
    vocab = replace(VOCAB, expressions=("neutral", "happiness", "sadness"))
    probs = {"happiness": 0.3, "contempt": 0.4, "neutral": 0.3}
    backend = ScriptedBackend([(answer("happiness"), probs)] * 3)
    result = run_uamc(
        backend,
        AnnotationRequest(image_bytes=b"face", vocabulary=vocab),
        UAMCParams(kmax=3),
    )
    assert result.uncertainty.expression.mass == {"neutral": 1.5, "happiness": 1.5}


# --- Stopping on soft votes from token log-probabilities -----------------------------


def logprob_votes(*votes: tuple[str, dict[str, float]]) -> ScriptedBackend:
    """A backend whose votes carry probabilities read from token log-probabilities."""
    script = [(answer(e), probs) for e, probs in votes]
    return ScriptedBackend(script, probs_source="logprobs")


SURE_HAPPY = ("happiness", {"happiness": 0.9, "sadness": 0.1})
SURE_SAD = ("sadness", {"sadness": 0.9, "happiness": 0.1})


def test_consistent_confident_logprob_votes_stop_after_the_first_round() -> None:
    backend = logprob_votes(*[SURE_HAPPY] * 10)
    result = run(backend)
    margin = result.uncertainty.expression.margin
    assert backend.calls == [3]
    assert margin is not None and (margin.top, margin.runner_up) == ("happiness", "sadness")
    assert margin.mean == pytest.approx(0.8) and margin.spread == pytest.approx(0.0)
    # Without spread three votes are worth the floor's 3 * 4 whole votes.
    assert margin.effective_votes == pytest.approx(12.0)
    assert margin.settled >= 0.7 and not result.uncertainty.expression.unsure
    # Counted as fractional votes (2.7 of 3, a posterior of 0.67), the same
    # probabilities keep the sampler drawing, and so does the confidence.
    assert result.uncertainty.expression.plurality_posterior < 0.7
    counted = ScriptedBackend([(answer("happiness"), SURE_HAPPY[1])] * 10)
    run(counted)
    assert len(counted.calls) > 1


def test_split_logprob_votes_keep_sampling_until_the_plurality_settles() -> None:
    backend = logprob_votes(SURE_HAPPY, SURE_SAD, *[SURE_HAPPY] * 10)
    result = run(backend)
    margin = result.uncertainty.expression.margin
    # 2/1 is unsettled; two more votes spread alike may settle it, and 4/1 does.
    assert backend.calls == [3, 2]
    assert margin is not None and margin.settled >= 0.7
    assert (margin.top, margin.runner_up) == ("happiness", "sadness")
    # The same draws as whole votes: 2/1 would not settle within a round, so
    # sampling stops at once (see the futility tests above).
    whole = ScriptedBackend([answer("happiness"), answer("sadness")] + [answer("happiness")] * 10)
    run(whole)
    assert whole.calls == [3]


def test_a_small_margin_is_not_settled_by_three_votes_that_happen_to_agree() -> None:
    # The margins do not spread at all, but three votes count as at most twelve
    # whole ones, and 0.55 against 0.45 of twelve votes is no certainty. The
    # floor rises more slowly than the votes: five such votes settle it.
    hesitant = ("fear", {"fear": 0.55, "surprise": 0.45})
    backend = logprob_votes(*[hesitant] * 10)
    result = run(backend, kmax=3)
    margin = result.uncertainty.expression.margin
    assert margin is not None and margin.effective_votes == pytest.approx(12.0)
    assert result.uncertainty.expression.unsure
    backend = logprob_votes(*[hesitant] * 10)
    result = run(backend)
    assert backend.calls == [3, 2]
    assert not result.uncertainty.expression.unsure


def test_soft_votes_are_worth_whole_votes_by_the_spread_of_their_margins() -> None:
    # Whole votes split 2/1: margins 1, 1, -1, exactly as spread as whole votes.
    whole_variance = 1.0 - (1 / 3) ** 2
    spread = 2 * (2 / 3) ** 2 + (4 / 3) ** 2
    assert effective_votes(3, whole_variance, spread) == pytest.approx(3.0)
    # No spread: the pseudo-vote caps n votes at n (n + 1).
    for n in (1, 2, 3, 10):
        assert effective_votes(n, 0.5, 0.0) == pytest.approx(n * (n + 1))
    assert effective_votes(3, 0.0, 0.0) == pytest.approx(12.0)
    # More spread than whole votes would have: worth fewer than n.
    assert effective_votes(3, 0.5, 3.0) < 3
    with pytest.raises(ValueError, match="at least one vote"):
        effective_votes(0, 0.5, 0.0)


def test_split_whole_votes_in_a_logprob_run_settle_as_whole_votes_do() -> None:
    votes = [(e, {e: 1.0}) for e in ("fear", "surprise", "fear")]
    result = run(logprob_votes(*votes), kmax=3)
    margin = result.uncertainty.expression.margin
    assert margin is not None and margin.effective_votes == pytest.approx(3.0)
    assert margin.settled == pytest.approx(plurality_posterior([2, 1, 0, 0, 0, 0, 0, 0], 0))


def test_a_whole_vote_among_logprob_votes_enters_the_margin_as_a_certain_one() -> None:
    script: list[Answer | str | tuple[Answer, dict[str, float]]] = [
        (answer("happiness"), SURE_HAPPY[1]),
        answer("sadness"),
        (answer("happiness"), SURE_HAPPY[1]),
    ]
    result = run(ScriptedBackend(script, probs_source="logprobs"), kmax=3)
    margin = result.uncertainty.expression.margin
    assert margin is not None
    assert margin.mean == pytest.approx((0.8 - 1.0 + 0.8) / 3)


@pytest.mark.parametrize("source", [None, "views"])
def test_other_soft_votes_and_whole_votes_keep_the_plurality_posterior_rule(
    source: ProbsSource | None,
) -> None:
    soft = ScriptedBackend([(answer("happiness"), SURE_HAPPY[1])] * 10, probs_source=source)
    whole = ScriptedBackend([answer("happiness")] * 10)
    for backend in (soft, whole):
        result = run(backend)
        assert result.uncertainty.expression.margin is None
    assert len(soft.calls) > 1 and whole.calls == [3]


def test_a_vocabulary_of_one_expression_has_no_margin_to_settle() -> None:
    vocab = replace(VOCAB, expressions=("happiness",))
    backend = ScriptedBackend(
        [(answer("happiness"), {"happiness": 1.0})] * 5, probs_source="logprobs"
    )
    result = run_uamc(
        backend, AnnotationRequest(image_bytes=b"face", vocabulary=vocab), UAMCParams()
    )
    assert result.uncertainty.expression.margin is None
    assert backend.calls == [3]


def test_the_probabilities_source_and_the_margin_are_stored() -> None:
    stored = run(logprob_votes(*[SURE_HAPPY] * 10)).to_json()
    assert [s["probs_source"] for s in stored["samples"]] == ["logprobs"] * 3 + [None]
    margin = stored["uncertainty"]["expression"]["margin"]
    assert margin["top"] == "happiness" and margin["settled"] >= 0.7
    whole = run(ScriptedBackend([answer("happiness")] * 10)).to_json()
    assert whole["uncertainty"]["expression"]["margin"] is None


@pytest.mark.parametrize("counts", [[3, 0, 0, 0, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0, 0, 0], [4, 1, 1]])
def test_fractional_counts_join_the_whole_number_posterior(counts: list[int]) -> None:
    exact = plurality_posterior(counts, 0)
    nudged = [c + 0.01 if i == 0 else c for i, c in enumerate(counts)]
    assert plurality_posterior(nudged, 0) == pytest.approx(exact, abs=5e-3)
    # More mass on the plurality class can only make it more probably the largest.
    more = [c + 0.5 if i == 0 else c for i, c in enumerate(counts)]
    assert plurality_posterior(more, 0) > exact
