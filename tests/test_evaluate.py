"""The evaluation harness on a scripted backend and a manifest of drawn faces."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from seke_app.engine.evaluate import EvalReport, evaluate, read_manifest
from seke_app.engine.llm.client import VLLMClient
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    KnownLabels,
    Sample,
    Usage,
    VerificationRequest,
)
from seke_app.engine.uamc import UAMCParams
from seke_app.engine.vocab import Vocabulary
from seke_app.runs import backends
from tests.fake_openai import FakeOpenAI

VOCAB = Vocabulary()
USAGE = Usage(requests=1, prompt_tokens=300, completion_tokens=80, cost_usd=0.001)
VOTE_COLUMNS = ["votes_happiness", "votes_sadness", "votes_anger", "votes_fear", "votes_unknown"]


def _answer(expression: str, valence: float, arousal: float, aus: tuple[int, ...]) -> Answer:
    return Answer(expression, valence, arousal, {au: au in aus for au in VOCAB.aus})


# Per image: the truth written to the manifest and what the backend answers.
ROWS = [
    # file, expression, valence, arousal, au_6, au_12,
    # votes (happiness, sadness, anger, fear, unknown)
    ("a.png", "happiness", "0.7", "0.1", "1", "1", (8, 0, 0, 0, 2)),
    ("b.png", "sadness", "-0.5", "-0.3", "0", "0", (0, 6, 2, 0, 2)),
    ("c.png", "anger", "-0.4", "0.6", "0", "0", (0, 1, 4, 3, 2)),
    ("d.png", "fear", "", "", "", "", (0, 0, 1, 9, 0)),
]
ANSWERS: dict[str, Answer | None] = {
    "a.png": _answer("happiness", 0.6, 0.2, (6, 12)),
    "b.png": _answer("sadness", -0.6, -0.2, (1, 4, 15)),
    # Disgust with a pleasant valence contradicts the knowledge, so confidence is low.
    "c.png": _answer("disgust", 0.7, 0.4, (6, 9)),
    "d.png": None,
}


class ImageScriptedBackend:
    """Answers every sample of an image with that image's scripted answer (None: invalid)."""

    name = "scripted"
    model = "script-1"

    def __init__(self, by_bytes: dict[bytes, Answer | None]) -> None:
        self.by_bytes = by_bytes
        self.known_seen: list[KnownLabels] = []

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        self.known_seen.append(request.known)
        answer = self.by_bytes[request.image_bytes]
        if answer is None:
            return [Sample(kind="sample", raw="", error="refused", usage=USAGE)] * k
        return [Sample(kind="sample", raw="{}", answer=answer, usage=USAGE)] * k

    def verify(self, verification: VerificationRequest) -> Sample:
        verdict = {"expression": "confirm", "va": "confirm", "aus": "confirm"}
        return Sample(
            kind="verification",
            raw="{}",
            answer=verification.aggregate,
            verdict=verdict,
            usage=USAGE,
        )


@pytest.fixture
def dataset(
    tmp_path: Path, face_bytes: Callable[..., bytes]
) -> tuple[Path, dict[bytes, Answer | None]]:
    (tmp_path / "images").mkdir()
    by_bytes: dict[bytes, Answer | None] = {}
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["file", "expression", "valence", "arousal", "au_6", "au_12", *VOTE_COLUMNS]
        )
        for seed, (name, expression, v, a, au6, au12, votes) in enumerate(ROWS):
            image = face_bytes(seed=seed, smile=expression == "happiness")
            (tmp_path / "images" / name).write_bytes(image)
            by_bytes[image] = ANSWERS[name]
            writer.writerow([f"images/{name}", expression, v, a, au6, au12, *votes])
    return tmp_path, by_bytes


def _report(
    dataset: tuple[Path, dict[bytes, Answer | None]],
) -> tuple[EvalReport, list[tuple[int, int]]]:
    root, by_bytes = dataset
    items = read_manifest(root / "manifest.csv", root)
    calls: list[tuple[int, int]] = []
    backend = ImageScriptedBackend(by_bytes)
    report = evaluate(
        backend,
        items,
        UAMCParams(),
        VOCAB,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert all(known.is_empty() for known in backend.known_seen)
    return report, calls


def test_it_reads_a_manifest(dataset: tuple[Path, dict[bytes, Answer | None]]) -> None:
    root, by_bytes = dataset
    items = read_manifest(root / "manifest.csv", root)
    assert [i.name for i in items] == [f"images/{row[0]}" for row in ROWS]
    first, last = items[0], items[3]
    assert first.image_bytes in by_bytes
    assert (first.expression, first.valence, first.arousal) == ("happiness", 0.7, 0.1)
    assert first.aus == {6: True, 12: True}
    assert first.votes == {"happiness": 8, "sadness": 0, "anger": 0, "fear": 0, "unknown": 2}
    assert first.vote_share() == pytest.approx(0.8)
    assert (last.valence, last.arousal, last.aus) == (None, None, None)


def test_it_scores_expressions_by_hand(dataset: tuple[Path, dict[bytes, Answer | None]]) -> None:
    report, calls = _report(dataset)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert (report.n_items, report.n_answered) == (4, 3)
    assert report.expression["accuracy"] == pytest.approx(0.5)
    assert report.expression["labels"] == ["happiness", "sadness", "fear", "anger"]
    # F1: happiness 1, sadness 1, fear 0 (unanswered), anger 0 (called disgust).
    assert report.expression["macro_f1"] == pytest.approx(0.5)
    assert report.confidence["error_rate"] == pytest.approx(0.5)


def test_it_scores_va_and_aus_by_hand(dataset: tuple[Path, dict[bytes, Answer | None]]) -> None:
    report, _ = _report(dataset)
    assert report.va is not None and report.va["n"] == 3
    assert report.va["rmse_valence"] == pytest.approx(math.sqrt((0.01 + 0.01 + 1.21) / 3))
    assert report.va["rmse_arousal"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.04) / 3))
    # Arousal truth (0.1, -0.3, 0.6) against (0.2, -0.2, 0.4): population moments.
    t, p = (0.1, -0.3, 0.6), (0.2, -0.2, 0.4)
    mt, mp = sum(t) / 3, sum(p) / 3
    cov = sum((x - mt) * (y - mp) for x, y in zip(t, p, strict=True)) / 3
    vt = sum((x - mt) ** 2 for x in t) / 3
    vp = sum((y - mp) ** 2 for y in p) / 3
    assert report.va["ccc_arousal"] == pytest.approx(2 * cov / (vt + vp + (mt - mp) ** 2))
    assert report.aus is not None
    # AU6: one hit (a) and one false alarm (c) -> 2/3; AU12: one hit -> 1.
    assert report.aus["f1"] == {"6": pytest.approx(2 / 3), "12": pytest.approx(1.0)}
    assert report.aus["mean_f1"] == pytest.approx(5 / 6)


def test_it_counts_cost_per_image(dataset: tuple[Path, dict[bytes, Answer | None]]) -> None:
    report, _ = _report(dataset)
    # Three unanimous images: 3 samples + verification; the refused one: 10 samples.
    assert report.cost["samples_per_image"] == pytest.approx((4 * 3 + 10) / 4)
    assert report.cost["requests_per_image"] == pytest.approx(5.5)
    assert report.cost["prompt_tokens_per_image"] == pytest.approx(5.5 * 300)
    assert report.cost["cost_per_image_usd"] == pytest.approx(5.5 * 0.001)


def test_it_scores_the_confidence(dataset: tuple[Path, dict[bytes, Answer | None]]) -> None:
    report, _ = _report(dataset)
    by_name = {o.name: o for o in report.items}
    conf = {name[7:]: o.expression_confidence for name, o in by_name.items()}
    assert conf["d.png"] == 0.0
    assert min(conf["a.png"], conf["b.png"]) > conf["c.png"] > 0.0
    # Both right answers are more confident than both wrong ones.
    assert report.confidence["auroc"] == pytest.approx(1.0)
    # A 50% budget sends c and d to review; the two accepted are right.
    assert report.confidence["accepted_error_rate"]["50%"] == pytest.approx(0.0)
    assert report.confidence["accepted_error_rate"]["20%"] == pytest.approx(1 / 3)
    # a and b are unanimous and fit the knowledge perfectly, so their confidences tie.
    assert conf["a.png"] == conf["b.png"]
    # Confidence ranks (a, b, c, d) = (3.5, 3.5, 2, 1); vote-share ranks for shares
    # (0.8, 0.6, 0.4, 0.9) = (3, 2, 1, 4). Pearson on the ranks:
    expected = -1.5 / math.sqrt(4.5 * 5.0)
    assert report.confidence["spearman_vote_share"] == pytest.approx(expected)


def test_it_exports_json_and_markdown(dataset: tuple[Path, dict[bytes, Answer | None]]) -> None:
    report, _ = _report(dataset)
    data = json.loads(json.dumps(report.to_json(include_items=True)))
    assert data["expression"]["accuracy"] == 0.5
    assert len(data["items"]) == 4 and data["items"][0]["correct"] is True
    assert "items" not in report.to_json()
    text = report.to_markdown()
    assert "| expression accuracy | 0.500 |" in text
    assert "| AU12 | 1.000 |" in text


# --- The seke_evaluate command ------------------------------------------------------


def _evaluate_command(root: Path, *args: str) -> None:
    manifest = str(root / "manifest.csv")
    call_command(
        "seke_evaluate", "--images", str(root), "--manifest", manifest, *args, stdout=io.StringIO()
    )


def test_it_names_the_offline_annotator_offline(tmp_path: Path) -> None:
    from seke_app.management.commands.seke_evaluate import Command

    parser = Command().create_parser("manage.py", "seke_evaluate")
    options = parser.parse_args(["--images", str(tmp_path), "--manifest", "manifest.csv"])
    assert options.backend == "offline"
    with pytest.raises(CommandError, match="invalid choice: 'local'"):
        _evaluate_command(tmp_path, "--backend", "local")


def test_the_command_refuses_bad_sampling_options_in_words(tmp_path: Path) -> None:
    words = r"invalid SV-UAMC parameters: kmax \(most samples\) must be at least k0"
    with pytest.raises(CommandError, match=words):
        _evaluate_command(tmp_path, "--k0", "5", "--kmax", "2")


# backend_for reads the endpoint's latest check (seke_app.runs.probes) from the database.
@pytest.mark.django_db
def test_the_command_closes_the_vllm_client_when_it_ends(
    dataset: tuple[Path, dict[bytes, Answer | None]],
    fake_openai: FakeOpenAI,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    built: list[VLLMClient] = []

    class RecordedClient(VLLMClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(backends, "VLLMClient", RecordedClient)
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "sk-test", fake_openai.base_url
    settings.OPENAI_RPM = settings.OPENAI_TPM = 0
    root, _ = dataset
    out = tmp_path / "report"

    _evaluate_command(
        root, "--backend", "openai", "--model", "gpt-4o", "--no-verify", "--out", str(out)
    )

    report = json.loads(out.with_suffix(".json").read_text())
    assert (report["backend"], report["n_items"]) == ("openai", 4)
    assert report["params"]["verify"] is False
    assert fake_openai.request_count > 0
    assert len(built) == 1 and built[0].closed
