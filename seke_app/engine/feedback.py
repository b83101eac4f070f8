"""Learning from reviewers' corrections: exemplars, rule notes and recalibration.

Plain Python. The input is a list of ``Correction`` records (what the machine said,
how sure it was, what the expert decided); the output is the content SEKE proposes
for the next prompt version. Everything here is computed from the corrections;
nothing is written by hand.

Definitions (this project's own):

* A case is *confidently wrong* for the expression when the expert changed the
  expression and the machine's expression confidence was at least
  ``confident_at`` (default 0.5).
* Exemplars cover the most frequent confusions first and at most
  ``per_confusion`` cases of one confusion (default 1 per round), taken round-robin
  over the confusions ordered by frequency, most confident mistake first, so that
  ten copies of the same confusion never crowd out the others.
* A rule note is written for each confusion seen at least ``min_count`` times:
  "fear answered as surprise in 14 of 40 corrections; check AU4 and AU20 before
  answering surprise". The AUs to check are those whose CK+ occurrence rate
  separates the two expressions most (``AU_RATES``), taken from the vocabulary.
  AU notes report AUs the machine missed or added most often; a VA note reports a
  mean bias larger than 0.15.
* Recalibration (for the offline annotator, which reads no prompt): class log-prior
  offsets and a temperature for its expression distribution, fitted jointly on
  the corrections by maximising the likelihood of the experts' labels under the
  machine's smoothed Monte Carlo vote shares (``recalibrate``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seke_app.engine.knowledge import AU_RATES, BASE_AU_RATE
from seke_app.engine.vocab import Vocabulary

VA_BIAS_NOTE = 0.15
# The recalibration's fit: ridge penalty on the class offsets (per case), the
# temperatures it may choose from, and the most gradient steps.
OFFSET_RIDGE = 0.01
TEMPERATURE_RANGE = (0.2, 5.0)
FIT_STEPS = 2000
# The fit stops early once no parameter moves by more than this in a step.
FIT_TOLERANCE = 1e-7


@dataclass(frozen=True)
class Correction:
    """One reviewed annotation: the machine's answer and the expert's decision."""

    image_ref: str
    machine_expression: str | None
    human_expression: str | None
    expression_confidence: float
    # The samples' votes per expression: summed probabilities where the samples
    # carried them (SV-UAMC's masses), else whole votes.
    votes: Mapping[str, float] = field(default_factory=dict)
    machine_va: tuple[float, float] | None = None
    human_va: tuple[float, float] | None = None
    machine_aus: Mapping[int, bool] = field(default_factory=dict)
    human_aus: Mapping[int, bool] | None = None
    note: str = ""
    image_url: str | None = None


@dataclass(frozen=True)
class FeedbackOptions:
    max_exemplars: int = 6
    per_confusion: int = 1
    confident_at: float = 0.5
    min_count: int = 2
    send_images: bool = False


@dataclass(frozen=True)
class Proposal:
    exemplars: list[dict[str, Any]]
    rule_notes: str
    calibration: dict[str, Any]
    confusions: list[tuple[str, str, int]]
    n_corrections: int


def confusions(corrections: Sequence[Correction]) -> Counter[tuple[str, str]]:
    """(machine, human) expression pairs where the expert changed the expression."""
    return Counter(
        (c.machine_expression, c.human_expression)
        for c in corrections
        if c.machine_expression
        and c.human_expression
        and c.machine_expression != c.human_expression
    )


def _exemplar(c: Correction, send_images: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "expression": c.human_expression,
        "machine_expression": c.machine_expression,
        "image_ref": c.image_ref,
    }
    if c.human_va is not None:
        item["valence"], item["arousal"] = c.human_va
    if c.human_aus is not None:
        item["aus"] = sorted(au for au, on in c.human_aus.items() if on)
    item["note"] = c.note or f"not {c.machine_expression}: {c.human_expression}"
    if send_images and c.image_url:
        item["image_url"] = c.image_url
    return item


def choose_exemplars(
    corrections: Sequence[Correction], options: FeedbackOptions
) -> list[dict[str, Any]]:
    pools: dict[tuple[str, str], list[Correction]] = defaultdict(list)
    for c in corrections:
        pair = (c.machine_expression or "", c.human_expression or "")
        if (
            pair[0]
            and pair[1]
            and pair[0] != pair[1]
            and (c.expression_confidence >= options.confident_at)
        ):
            pools[pair].append(c)
    for pool in pools.values():
        pool.sort(key=lambda c: (-c.expression_confidence, c.image_ref))
    order = sorted(pools, key=lambda pair: (-len(pools[pair]), pair))
    chosen: list[dict[str, Any]] = []
    while len(chosen) < options.max_exemplars and any(pools[p] for p in order):
        for pair in order:
            taken = 0
            while pools[pair] and taken < options.per_confusion:
                chosen.append(_exemplar(pools[pair].pop(0), options.send_images))
                taken += 1
                if len(chosen) >= options.max_exemplars:
                    return chosen
    return chosen


def distinguishing_aus(machine: str, human: str, vocabulary: Vocabulary, k: int = 2) -> list[int]:
    """The AUs whose CK+ rates separate ``human`` from ``machine`` the most."""

    def rate(expression: str, au: int) -> float:
        return AU_RATES.get(expression, {}).get(au, BASE_AU_RATE)

    gaps = sorted(vocabulary.aus, key=lambda au: (-(rate(human, au) - rate(machine, au)), au))
    return sorted(au for au in gaps[:k] if rate(human, au) - rate(machine, au) > 0.1)


def rule_notes(
    corrections: Sequence[Correction], vocabulary: Vocabulary, options: FeedbackOptions
) -> str:
    total = len(corrections)
    lines: list[str] = []
    for (machine, human), count in confusions(corrections).most_common():
        if count < options.min_count:
            continue
        aus = distinguishing_aus(machine, human, vocabulary)
        check = (
            f"; check {' and '.join(f'AU{a}' for a in aus)} before answering {machine}"
            if aus
            else ""
        )
        lines.append(f"{human} answered as {machine} in {count} of {total} corrections{check}.")
    lines.extend(_au_notes(corrections, options))
    va = _va_note(corrections)
    if va:
        lines.append(va)
    if not lines:
        return ""
    return "Lessons from expert review:\n" + "\n".join(f"- {line}" for line in lines)


def _au_notes(corrections: Sequence[Correction], options: FeedbackOptions) -> list[str]:
    missed: Counter[int] = Counter()
    added: Counter[int] = Counter()
    coded = 0
    for c in corrections:
        if c.human_aus is None:
            continue
        coded += 1
        for au, on in c.human_aus.items():
            machine_on = bool(c.machine_aus.get(au, False))
            if on and not machine_on:
                missed[au] += 1
            elif machine_on and not on:
                added[au] += 1
    notes = [
        f"AU{au} was missed in {n} of {coded} corrected AU codings; look for it."
        for au, n in missed.most_common(3)
        if n >= options.min_count
    ]
    notes += [
        f"AU{au} was marked present but absent in {n} of {coded} corrected AU codings."
        for au, n in added.most_common(3)
        if n >= options.min_count
    ]
    return notes


def _va_note(corrections: Sequence[Correction]) -> str:
    pairs = [(c.machine_va, c.human_va) for c in corrections if c.machine_va and c.human_va]
    if len(pairs) < 2:
        return ""
    dv = sum(h[0] - m[0] for m, h in pairs) / len(pairs)
    da = sum(h[1] - m[1] for m, h in pairs) / len(pairs)
    parts = []
    if abs(dv) > VA_BIAS_NOTE:
        parts.append(f"valence {'higher' if dv > 0 else 'lower'} by {abs(dv):.2f}")
    if abs(da) > VA_BIAS_NOTE:
        parts.append(f"arousal {'higher' if da > 0 else 'lower'} by {abs(da):.2f}")
    if not parts:
        return ""
    return f"Experts set {' and '.join(parts)} on average ({len(pairs)} corrections)."


def _shares(votes: Mapping[str, float], expressions: Sequence[str]) -> list[float]:
    total = sum(votes.get(e, 0) for e in expressions)
    # Add-half smoothing: a class no sample voted for is unlikely, not impossible.
    return [(votes.get(e, 0) + 0.5) / (total + 0.5 * len(expressions)) for e in expressions]


def recalibrate(corrections: Sequence[Correction], vocabulary: Vocabulary) -> dict[str, Any]:
    """Class log-prior offsets and a temperature fitted on the reviewed cases.

    The model's probabilities for a case are its vote shares (summed probabilities
    where the samples carried them, add-half smoothed); the recalibrated
    probabilities are ``softmax(log(shares) / T + offsets)``. Offsets and ``1 / T``
    are fitted jointly by maximum likelihood of the reviewers' expressions, with a
    ridge penalty ``OFFSET_RIDGE * |offsets|^2`` per case that pulls each offset
    towards zero when few cases speak for it. The fit is concave in both, so plain
    gradient ascent from "no change" (offsets 0, T = 1) reaches the optimum; ``T``
    is kept within ``TEMPERATURE_RANGE``. This joint fit replaced a first
    version (offsets from the ratio of human to machine counts, then a grid of
    temperatures); the two were compared with
    ``python bench/feedback_loop.py --data ../shared/data``, figures in
    ``bench/README.md``.
    """
    expressions = list(vocabulary.expressions)
    rows = [
        (_shares(c.votes, expressions), expressions.index(c.human_expression))
        for c in corrections
        if c.human_expression in expressions and c.votes
    ]
    if not rows:
        return {}
    log_shares = np.log(np.array([shares for shares, _ in rows]))
    truth = np.eye(len(expressions))[[t for _, t in rows]]
    offsets = np.zeros(len(expressions))
    inverse_t = 1.0
    low, high = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    for _ in range(FIT_STEPS):
        logits = log_shares * inverse_t + offsets
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        residual = truth - probs
        offsets_step = 0.5 * (residual.mean(axis=0) - 2.0 * OFFSET_RIDGE * offsets)
        moved_t = min(
            high, max(low, inverse_t + 0.05 * float((residual * log_shares).sum(1).mean()))
        )
        offsets += offsets_step
        converged = max(abs(offsets_step).max(), abs(moved_t - inverse_t)) < FIT_TOLERANCE
        inverse_t = moved_t
        if converged:
            break
    return {
        "class_log_prior": {
            e: round(float(o), 4) for e, o in zip(expressions, offsets, strict=True)
        },
        "temperature": round(1.0 / inverse_t, 3),
        "fitted_on": len(rows),
    }


def propose(
    corrections: Sequence[Correction], vocabulary: Vocabulary, options: FeedbackOptions
) -> Proposal:
    return Proposal(
        exemplars=choose_exemplars(corrections, options),
        rule_notes=rule_notes(corrections, vocabulary, options),
        calibration=recalibrate(corrections, vocabulary),
        confusions=[(m, h, n) for (m, h), n in confusions(corrections).most_common()],
        n_corrections=len(corrections),
    )
