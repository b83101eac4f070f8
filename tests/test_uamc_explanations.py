"""SV-UAMC's flag reasons agree with the answer they explain, over many scripted runs.

Seeded random sample sets mix hard and soft votes, invalid replies, verifications
that confirm, revise or fail, known grains and a backend that does not observe
AUs. Each result is run twice: at the default review threshold, and at a
threshold a hair above its own confidence, where a careless format would print
"0.70 under 0.70".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from seke_app.engine.knowledge import PROTOTYPES, VA_PRIORS
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    KnownLabels,
    Sample,
    VerificationRequest,
)
from seke_app.engine.uamc import FlagReason, UAMCParams, UAMCResult, run_uamc
from seke_app.engine.uamc.params import GRAIN_NAMES
from seke_app.engine.vocab import DEFAULT_VOCABULARY

VOCAB = DEFAULT_VOCABULARY
CASES = 500
NUMBER = r"(\d+(?:\.\d+)?)"


@dataclass
class Spec:
    """Everything one scripted run needs, so that it can be replayed."""

    script: list[Answer | str | tuple[Answer, dict[str, float]]]
    verdict: dict[str, str] | None = None
    revision: Answer | None = None
    verification_error: str | None = None
    verifier_probs: dict[str, float] | None = None
    known: KnownLabels = field(default_factory=KnownLabels)
    observes_aus: bool = True
    params: dict[str, Any] = field(default_factory=dict)


class Scripted:
    """A backend that replays a ``Spec``; it may leave AUs unobserved."""

    name = "scripted"
    model = "script-1"

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.script = list(spec.script)
        grains = {"expression", "va", "aus"} if spec.observes_aus else {"expression", "va"}
        self.observed_grains = frozenset(grains)

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        drawn = []
        for _ in range(k):
            item = self.script.pop(0) if self.script else "script exhausted"
            if isinstance(item, str):
                drawn.append(Sample(kind="sample", raw=item, error=item))
            elif isinstance(item, tuple):
                drawn.append(
                    Sample(kind="sample", raw="{}", answer=item[0], expression_probs=item[1])
                )
            else:
                drawn.append(Sample(kind="sample", raw="{}", answer=item))
        return drawn

    def verify(self, verification: VerificationRequest) -> Sample:
        spec = self.spec
        if spec.verification_error is not None:
            return Sample(kind="verification", raw="?", error=spec.verification_error)
        verdict = spec.verdict or {"expression": "confirm", "va": "confirm", "aus": "confirm"}
        return Sample(
            kind="verification",
            raw="{}",
            answer=spec.revision or verification.aggregate,
            verdict=verdict,
            expression_probs=spec.verifier_probs,
        )


def _answer(rng: np.random.Generator, expression: str) -> Answer:
    prior = VA_PRIORS[expression]
    active = {au for au in PROTOTYPES[expression] if rng.random() < 0.8}
    active |= {int(au) for au in rng.choice(VOCAB.aus, size=int(rng.integers(0, 3)))}
    return Answer(
        expression=expression,
        valence=float(np.clip(prior.valence + rng.normal(0, 0.3), -1, 1)),
        arousal=float(np.clip(prior.arousal + rng.normal(0, 0.3), -1, 1)),
        aus={au: au in active for au in VOCAB.aus},
        evidence={"expression": f"looks like {expression}"},
    )


def _probs(rng: np.random.Generator, classes: list[str]) -> dict[str, float]:
    shares = rng.dirichlet(np.ones(len(classes)) * 0.7)
    return {e: float(p) for e, p in zip(classes, shares, strict=True)}


def _known(rng: np.random.Generator) -> KnownLabels:
    expression = str(rng.choice(VOCAB.expressions)) if rng.random() < 0.3 else None
    valence, arousal = (
        (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
        if rng.random() < 0.25
        else (None, None)
    )
    if rng.random() < 0.1:
        arousal = None  # a lone valence gives no grain
    aus = None
    if rng.random() < 0.2:
        coded = rng.choice(VOCAB.aus, size=int(rng.integers(1, len(VOCAB.aus) + 1)), replace=False)
        aus = {int(au): bool(rng.random() < 0.3) for au in coded}
    return KnownLabels(expression, valence, arousal, aus)


def _verification(rng: np.random.Generator, spec: Spec) -> None:
    roll = rng.random()
    if roll < 0.1:
        spec.verification_error = "the reply could not be read"
        return
    verdict = {g: "confirm" for g in ("expression", "va", "aus")}
    if roll < 0.5:
        for grain in verdict:
            if rng.random() < 0.5:
                verdict[grain] = "revise"
        spec.revision = _answer(rng, str(rng.choice(VOCAB.expressions)))
    spec.verdict = verdict
    if rng.random() < 0.4:
        spec.verifier_probs = _probs(rng, list(rng.choice(VOCAB.expressions, 3, replace=False)))


def random_spec(seed: int) -> Spec:
    rng = np.random.default_rng(seed)
    classes = [str(e) for e in rng.choice(VOCAB.expressions, size=3, replace=False)]
    soft = rng.random() < 0.5
    script: list[Answer | str | tuple[Answer, dict[str, float]]] = []
    for _ in range(12):
        if rng.random() < 0.08:
            script.append("not JSON")
            continue
        expression = str(rng.choice(classes, p=[0.6, 0.25, 0.15]))
        answer = _answer(rng, expression)
        if soft:
            pool = [*classes, str(rng.choice(VOCAB.expressions))]
            script.append((answer, _probs(rng, list(dict.fromkeys(pool)))))
        else:
            script.append(answer)
    spec = Spec(
        script=script,
        known=_known(rng),
        observes_aus=bool(rng.random() < 0.6),
        params={
            "strategy": str(rng.choice(["uamc", "fixed", "single"])),
            "kmax": int(rng.integers(1, 7)),
            "k0": 1,
        },
    )
    if rng.random() < 0.5:
        spec.params["k0"] = min(3, spec.params["kmax"])
    _verification(rng, spec)
    return spec


def run_spec(spec: Spec, threshold: float) -> UAMCResult:
    request = AnnotationRequest(image_bytes=b"face", vocabulary=VOCAB, known=spec.known)
    params = UAMCParams(review_threshold=threshold, **spec.params)
    return run_uamc(Scripted(spec), request, params)


# --- The checks --------------------------------------------------------------------

WHY = (
    "chosen by the largest mean probability",
    "chosen by the knowledge",
    "revised by the verification",
)
WINNER = [
    re.compile(r"expression split [\d/]+ between (\w+)"),
    re.compile(r"all \d+ samples chose (\w+)"),
    re.compile(r"only 1 valid sample, which chose (\w+)"),
    re.compile(r"mean probabilities over the \d+ samples (\w+) "),
]


def problems_of(result: UAMCResult, threshold: float, known: KnownLabels) -> list[str]:
    """Every way the result's reasons disagree with its answer; empty when none."""
    found = []
    answer = result.answer
    for reason in result.flag_reasons:
        for value, limit in re.findall(rf"{NUMBER} under {NUMBER}", reason):
            if not float(value) < float(limit):
                found.append(f"not visibly under: {reason}")
        for pattern in WINNER:
            match = pattern.search(reason)
            winner = match.group(1) if match else None
            if (
                answer
                and winner
                and winner != answer.expression
                and not any(w in reason for w in WHY)
            ):
                found.append(f"names {winner} for {answer.expression} without saying why: {reason}")
        for shares in re.findall(r"mean probabilit(?:y|ies)[^;]*", reason):
            found += [
                f"probability above 1: {reason}"
                for p in re.findall(NUMBER, shares)[1:]
                if float(p) > 1
            ]
        for part in re.findall(r"components: [^;]*", reason):
            found += [
                f"component above 1: {reason}" for p in re.findall(NUMBER, part) if float(p) > 1
            ]
        if "too few to be sure" in reason or "contradicts" in reason:
            found.append(f"stale wording: {reason}")
    for grain in (*result.roles.given, *result.roles.inferred_from):
        name = GRAIN_NAMES[grain]
        own = [r for r in result.reasons if r.grain == grain]
        own += [r for r in result.reasons if r.text.startswith(f"{name} confidence")]
        found += [
            f"a reason for the {result.roles.provenance[grain]} grain {grain}: {r.text}"
            for r in own
        ]
    if answer is not None:
        found += _agreement_problems(result, threshold, known)
    if result.held != any(r.kind not in ("low_confidence", "knowledge") for r in result.reasons):
        found.append("held does not follow the reasons' kinds")
    return found


def _agreement_problems(result: UAMCResult, threshold: float, known: KnownLabels) -> list[str]:
    found = []
    flagged_grains = {r.grain for r in result.reasons if r.kind == "low_confidence"}
    for grain in result.roles.predicted:
        under = result.confidence.of(grain) < threshold
        if under != (grain in flagged_grains):
            found.append(f"{grain} at {result.confidence.of(grain)} and flagged={not under}")
    for grain in result.roles.given:
        if result.confidence.of(grain) != 1.0:
            found.append(f"given {grain} has confidence {result.confidence.of(grain)}")
    assert result.answer is not None
    if "expression" in result.roles.given and result.answer.expression != known.expression:
        found.append("the given expression was re-predicted")
    if "va" in result.roles.given and (result.answer.valence, result.answer.arousal) != known.va():
        found.append("the given valence/arousal were re-predicted")
    for grain, source in result.roles.inferred_from.items():
        if result.confidence.of(grain) != result.confidence.of(source):
            found.append(f"inferred {grain} does not follow {source}")
    return found


@pytest.mark.parametrize("block", range(5))
def test_every_reason_agrees_with_its_answer(block: int) -> None:
    problems: list[str] = []
    kinds: set[str] = set()
    for seed in range(block * CASES // 5, (block + 1) * CASES // 5):
        spec = random_spec(seed)
        first = run_spec(spec, 0.7)
        # A threshold a hair above the confidence the result reached.
        tight = min(
            1.0, first.overall_confidence + float(np.random.default_rng(seed).uniform(1e-4, 4e-3))
        )
        for result, threshold in ((first, 0.7), (run_spec(spec, tight), tight)):
            kinds |= {r.kind for r in result.reasons}
            problems += [f"seed {seed}: {p}" for p in problems_of(result, threshold, spec.known)]
    assert not problems, "\n".join(problems[:20])
    # The scripts reach the kinds of reason the checks are about.
    assert {"low_confidence", "revised"} <= kinds


def test_the_checks_catch_the_wrong_texts_the_issue_lists() -> None:
    spec = Spec(script=[Answer("neutral", 0.0, 0.0, {au: False for au in VOCAB.aus})] * 3)
    result = run_spec(spec, 0.7)
    wrong = [
        "expression split 2/1 between happiness and anger (summed probabilities contempt 0.84)",
        "expression confidence 0.70 under 0.70: all 3 samples chose contempt",
        "expression confidence 0.60 under 0.70: mean probabilities over the 3 samples anger 3.02",
        "expression confidence 0.60 under 0.70: all 3 samples chose neutral, too few to be sure",
    ]
    for text in wrong:
        broken = replace(result, reasons=[FlagReason("low_confidence", text, "expression")])
        assert problems_of(broken, 0.7, spec.known), text
    assert problems_of(result, 0.7, spec.known) == []
