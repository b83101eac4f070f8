"""Completion benchmarks: ``evaluate(given=...)`` and ``seke_evaluate --given``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from seke_app.engine.evaluate import EvalItem, evaluate, read_manifest
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    KnownLabels,
    Sample,
    VerificationRequest,
)
from seke_app.engine.uamc import UAMCParams
from seke_app.engine.vocab import Vocabulary

VOCAB = Vocabulary()
# file, expression, valence, arousal, au_6, au_12 (the last image has no VA nor AUs)
ROWS = [
    ("a.png", "happiness", "0.7", "0.1", "1", "1"),
    ("b.png", "sadness", "-0.5", "-0.3", "0", "0"),
    ("c.png", "anger", "-0.4", "0.6", "0", "0"),
    ("d.png", "fear", "", "", "", ""),
]
# What the backend answers for every image: wrong expression, wrong VA, wrong AUs.
WRONG = Answer("surprise", 0.9, 0.9, {au: au in (1, 2) for au in VOCAB.aus})


class RecordingBackend:
    """Answers ``WRONG`` every time and records the known labels it was handed."""

    name = "scripted"
    model = "script-1"
    observed_grains = frozenset({"expression", "va", "aus"})

    def __init__(self) -> None:
        self.known: dict[bytes, KnownLabels] = {}

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        self.known[request.image_bytes] = request.known
        return [Sample(kind="sample", raw="{}", answer=WRONG)] * k

    def verify(self, verification: VerificationRequest) -> Sample:
        verdict = {"expression": "confirm", "va": "confirm", "aus": "confirm"}
        answer = verification.aggregate
        return Sample(kind="verification", raw="{}", answer=answer, verdict=verdict)


@pytest.fixture
def root(tmp_path: Path, face_bytes: Callable[..., bytes]) -> Path:
    (tmp_path / "images").mkdir()
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "expression", "valence", "arousal", "au_6", "au_12"])
        for seed, (name, *labels) in enumerate(ROWS):
            (tmp_path / "images" / name).write_bytes(face_bytes(seed=seed))
            writer.writerow([f"images/{name}", *labels])
    return tmp_path


def _items(root: Path) -> list[EvalItem]:
    return read_manifest(root / "manifest.csv", root)


def test_it_hands_the_given_grains_to_the_backend_and_nothing_else(root: Path) -> None:
    items = _items(root)
    backend = RecordingBackend()
    evaluate(backend, items, UAMCParams(), VOCAB, given=["va", "aus"])
    first = backend.known[items[0].image_bytes]
    assert first == KnownLabels(valence=0.7, arousal=0.1, aus={6: True, 12: True})
    last = backend.known[items[3].image_bytes]
    assert last.is_empty()


def test_given_va_scores_the_expression_and_not_va(root: Path) -> None:
    report = evaluate(RecordingBackend(), _items(root), UAMCParams(), VOCAB, given=["va"])
    assert report.given == {"va": 3}
    assert report.va is None
    # The wrong answer "surprise" is scored on all four images.
    assert report.expression["n"] == 4 and report.expression["accuracy"] == 0.0
    assert report.aus is not None and report.aus["n"] == 3
    text = report.to_markdown()
    assert "Given as known labels: valence/arousal (3 of 4 images)" in text
    assert "| valence/arousal | given |" in text
    assert "| expression accuracy | 0.000 |" in text


def test_given_expression_scores_va_and_aus_and_not_the_expression(root: Path) -> None:
    report = evaluate(RecordingBackend(), _items(root), UAMCParams(), VOCAB, given=["expression"])
    assert report.given == {"expression": 4}
    assert report.expression == {"given": True}
    assert report.confidence["auroc"] is None and report.confidence["error_rate"] is None
    assert report.va is not None and report.va["n"] == 3
    assert report.aus is not None
    text = report.to_markdown()
    assert "| expression | given |" in text
    assert "Scored: valence/arousal, AUs" in text


def test_given_aus_leaves_the_aus_unscored(root: Path) -> None:
    report = evaluate(RecordingBackend(), _items(root), UAMCParams(), VOCAB, given=["aus"])
    assert report.given == {"aus": 3}
    assert report.aus is None and report.va is not None
    assert "| AUs | given |" in report.to_markdown()


def test_nothing_given_is_said_and_everything_is_scored(root: Path) -> None:
    backend = RecordingBackend()
    report = evaluate(backend, _items(root), UAMCParams(), VOCAB)
    assert report.given == {}
    assert all(known.is_empty() for known in backend.known.values())
    assert report.va is not None and report.aus is not None
    assert "Nothing given" in report.to_markdown()


def test_an_unknown_grain_is_refused_in_words(root: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown grain\(s\) to give: valence; choose from expression"
    ):
        evaluate(RecordingBackend(), _items(root), UAMCParams(), VOCAB, given=["valence"])


def test_the_command_takes_given_grains_and_reports_them(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    stdout = io.StringIO()
    call_command(
        "seke_evaluate",
        "--images",
        str(root),
        "--manifest",
        str(root / "manifest.csv"),
        "--given",
        "expression,va",
        "--no-verify",
        "--out",
        str(out),
        stdout=stdout,
    )
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["given"] == {"expression": 4, "va": 3}
    assert report["expression"] == {"given": True} and report["va"] is None
    assert report["aus"] is not None
    assert "Given as known labels: expression (4 of 4 images), valence/arousal" in (
        stdout.getvalue()
    )
    with pytest.raises(CommandError, match="unknown grain"):
        call_command(
            "seke_evaluate",
            "--images",
            str(root),
            "--manifest",
            str(root / "manifest.csv"),
            "--given",
            "mood",
            stdout=io.StringIO(),
        )
