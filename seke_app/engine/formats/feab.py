"""FEAB: a held-out benchmark split with questions and answer keys.

The split, as SEKE defines it:

* When any image has a subject, the split is subject-disjoint: the subjects are
  shuffled with the seed and whole subjects go to the test side until it holds at
  least ``test_fraction`` of the images; an image without a subject counts as a
  subject of its own.
* Otherwise it is stratified by expression: within each curated expression (and
  among the images without one) ``round(test_fraction * n)`` images, drawn with
  the seed, are held out.

Questions are fixed per grain (the first FEID paraphrase plus the answer format
asked for), so every model is asked the same thing. A question's id is
``<image code>/<grain>``; its answer key carries the structured label and its
provenance.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seke_app.engine.formats.feid import QUESTIONS, au_phrase
from seke_app.engine.formats.records import CuratedRecord
from seke_app.engine.vocab import EXPRESSIONS


@dataclass(frozen=True)
class SplitItem:
    """What the split needs to know of one image."""

    image: str
    subject: str = ""
    expression: str | None = None


@dataclass(frozen=True)
class Split:
    test: frozenset[str]
    method: str
    n_groups: int

    def to_json(self, n_total: int, test_fraction: float, seed: int) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": seed,
            "test_fraction": test_fraction,
            "n_images": n_total,
            "n_test": len(self.test),
            "n_train": n_total - len(self.test),
            "n_groups": self.n_groups,
        }


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _subject_split(items: Sequence[SplitItem], fraction: float, rng: random.Random) -> Split:
    groups: dict[str, list[str]] = defaultdict(list)
    for item in items:
        groups[f"s:{item.subject}" if item.subject else f"i:{item.image}"].append(item.image)
    names = sorted(groups)
    rng.shuffle(names)
    target = _half_up(fraction * len(items))
    test: list[str] = []
    for name in names:
        if len(test) >= target:
            break
        test.extend(groups[name])
    return Split(test=frozenset(test), method="subject-disjoint", n_groups=len(groups))


def _stratified_split(items: Sequence[SplitItem], fraction: float, rng: random.Random) -> Split:
    strata: dict[str, list[str]] = defaultdict(list)
    for item in items:
        strata[item.expression or ""].append(item.image)
    test: list[str] = []
    for name in sorted(strata):
        members = sorted(strata[name])
        rng.shuffle(members)
        test.extend(members[: _half_up(fraction * len(members))])
    return Split(test=frozenset(test), method="stratified by expression", n_groups=len(strata))


def benchmark_split(items: Sequence[SplitItem], *, test_fraction: float, seed: int) -> Split:
    """The held-out images, deterministic for the same items, fraction and seed."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("the test fraction must lie strictly between 0 and 1")
    rng = random.Random(f"feab:{seed}")
    if any(item.subject for item in items):
        return _subject_split(items, test_fraction, rng)
    return _stratified_split(items, test_fraction, rng)


def question_text(grain: str, aus: Sequence[int] = ()) -> str:
    base = QUESTIONS[grain][0]
    if grain == "expression":
        return f"{base} Answer with one of: {', '.join(EXPRESSIONS)}."
    if grain == "va":
        return f"{base} Answer as 'valence: V, arousal: A'."
    coded = ", ".join(au_phrase(au) for au in aus)
    return f"{base} Consider {coded}. List the active ones."


def questions(record: CuratedRecord, image_ref: str) -> list[dict[str, Any]]:
    """One question per grain the record has."""
    lines = []
    for grain in record.grains():
        aus = sorted(record.aus or {}) if grain == "aus" else []
        entry: dict[str, Any] = {
            "id": f"{record.image}/{grain}",
            "image": image_ref,
            "grain": grain,
            "question": question_text(grain, aus),
        }
        if grain == "expression":
            entry["options"] = list(EXPRESSIONS)
        if grain == "aus":
            entry["options"] = [f"AU{au}" for au in aus]
        lines.append(entry)
    return lines


def answer_keys(record: CuratedRecord) -> list[dict[str, Any]]:
    """One answer key per grain the record has, with the label's provenance."""
    provenance = record.provenance_json()
    return [
        {
            "id": f"{record.image}/{grain}",
            "image": record.image,
            "grain": grain,
            "answer": record.grain_label(grain),
            "provenance": provenance.get(grain, {}),
        }
        for grain in record.grains()
    ]
