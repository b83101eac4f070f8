"""The FEAB evaluator: reading answers, hand-computed scores, agreement with scikit-learn."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, recall_score

from seke_app.engine.formats import evaluator
from seke_app.engine.vocab import EXPRESSIONS


def key(image: str, grain: str, answer: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{image}/{grain}", "image": image, "grain": grain, "answer": answer}


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The facial expression is happiness.", "happiness"),
        ("She looks happy to me.", "happiness"),
        ("Not happy at all; I would say sad.", "sadness"),
        ("The person is clearly afraid", "fear"),
        ("Contemptuous smirk.", "contempt"),
        ('```json\n{"expression": "Anger"}\n```', "anger"),
        ('Answer: {"expression": "surprise", "valence": 0.2}', "surprise"),
        ({"expression": "disgust"}, "disgust"),
        ("An unhappy face.", "sadness"),
        ("I cannot tell.", None),
        ({"expression": "joyish"}, None),
        (42, None),
    ],
)
def test_it_reads_the_expression_a_prediction_names(text: Any, label: str | None) -> None:
    assert evaluator.parse_expression(text) == label


def test_it_reads_valence_arousal_and_aus_from_text_and_structures() -> None:
    assert evaluator.parse_va("valence: -0.4, arousal: .7") == (-0.4, 0.7)
    assert evaluator.parse_va("Valence is +0.25 and arousal is 0") == (0.25, 0.0)
    assert evaluator.parse_va({"va": {"valence": 0.1, "arousal": "0.2"}}) == (0.1, 0.2)
    assert evaluator.parse_va("valence 0.3 only") is None
    assert evaluator.parse_aus("AU6 and AU12 are active, but AU4 is absent.") == {
        6: True,
        12: True,
        4: False,
    }
    assert evaluator.parse_aus("No action unit is active.") == {}
    assert evaluator.parse_aus({"aus": {"AU12": {"present": True}, "4": False}}) == {
        12: True,
        4: False,
    }
    assert evaluator.parse_aus('{"aus": ["AU1", 2]}') == {1: True, 2: True}
    assert evaluator.parse_aus({"expression": "fear"}) is None


def test_it_scores_a_hand_computed_case() -> None:
    keys = [
        key("a", "expression", {"expression": "happiness"}),
        key("b", "expression", {"expression": "happiness"}),
        key("c", "expression", {"expression": "sadness"}),
        key("d", "expression", {"expression": "fear"}),
        key("a", "va", {"valence": 0.5, "arousal": 0.1}),
        key("b", "va", {"valence": -0.5, "arousal": 0.2}),
        key("c", "va", {"valence": 0.0, "arousal": 0.3}),
        key("d", "va", {"valence": 0.9, "arousal": 0.9}),
        key("a", "aus", {"aus": {"AU1": False, "AU12": True}}),
        key("b", "aus", {"aus": {"AU1": False, "AU12": False}}),
        key("c", "aus", {"aus": {"AU1": False, "AU12": True}}),
    ]
    predictions = {
        "a/expression": "happy",
        "b/expression": "The facial expression is sadness.",
        "c/expression": {"expression": "sadness"},
        # d is unanswered: a wrong expression and a VA left out of the VA scores.
        "a/va": "valence 0.4, arousal 0.1",
        "b/va": {"valence": -0.3, "arousal": 0.2},
        "c/va": "Valence is 0.2 and arousal is 0.3.",
        "a/aus": "AU12 is active.",
        "b/aus": {"aus": {"AU12": True}},
    }
    report = evaluator.score(keys, predictions)
    expression = report["expression"]
    assert expression["accuracy"] == pytest.approx(0.5)
    # F1: happiness 2/3, sadness 2/3, fear 0.
    assert expression["macro_f1"] == pytest.approx(4 / 9)
    assert expression["per_class_recall"] == {"happiness": 0.5, "sadness": 1.0, "fear": 0.0}
    assert expression["unanswered"] == 1
    va = report["va"]
    assert va["answered"] == 3 and va["coverage"] == pytest.approx(0.75)
    assert va["valence"]["rmse"] == pytest.approx(math.sqrt(0.03))
    assert va["valence"]["ccc"] == pytest.approx(0.7 / 0.79)
    assert va["arousal"] == {"ccc": pytest.approx(1.0), "rmse": pytest.approx(0.0)}
    aus = report["aus"]
    assert aus["per_au"]["AU12"] == {"f1": 0.5, "support": 2, "n": 3}
    assert aus["per_au"]["AU1"]["f1"] == 0.0 and aus["per_au"]["AU1"]["support"] == 0
    # AU1 never occurs, so it has no defined F1 and stays out of the mean.
    assert aus["mean_f1"] == 0.5
    assert aus["answered"] == 2 and aus["unanswered"] == 1
    text = evaluator.markdown(report)
    assert "accuracy **0.5000**" in text and "| AU12 | 0.5000 | 2 | 3 |" in text


def test_it_agrees_with_scikit_learn() -> None:
    rng = np.random.default_rng(7)
    n = 300
    truth = rng.choice(EXPRESSIONS[:7], size=n)
    guessed = np.where(rng.random(n) < 0.6, truth, rng.choice(EXPRESSIONS, size=n))
    answered = rng.random(n) < 0.9
    va_truth = rng.uniform(-1, 1, size=(n, 2))
    va_pred = np.clip(va_truth + rng.normal(0, 0.3, size=(n, 2)), -1, 1)
    aus = (1, 2, 4, 12, 25)
    au_truth = rng.random((n, len(aus))) < 0.3
    au_pred = np.where(rng.random((n, len(aus))) < 0.8, au_truth, ~au_truth)
    keys, predictions = [], {}
    for i in range(n):
        image = f"i{i}"
        keys.append(key(image, "expression", {"expression": str(truth[i])}))
        keys.append(key(image, "va", {"valence": va_truth[i, 0], "arousal": va_truth[i, 1]}))
        keys.append(
            key(image, "aus", {"aus": {f"AU{a}": bool(au_truth[i, j]) for j, a in enumerate(aus)}})
        )
        if answered[i]:
            predictions[image] = {
                "expression": str(guessed[i]),
                "valence": float(va_pred[i, 0]),
                "arousal": float(va_pred[i, 1]),
                "aus": {f"AU{a}": bool(au_pred[i, j]) for j, a in enumerate(aus)},
            }
    report = evaluator.score(keys, predictions)

    predicted = np.where(answered, guessed, evaluator.UNPARSED)
    labels = [e for e in EXPRESSIONS if e in set(truth)]
    expression = report["expression"]
    assert abs(expression["accuracy"] - accuracy_score(truth, predicted)) < 1e-9
    sk_macro = f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)
    assert abs(expression["macro_f1"] - sk_macro) < 1e-9
    sk_recall = recall_score(truth, predicted, labels=labels, average=None, zero_division=0)
    for label, value in zip(labels, sk_recall, strict=True):
        assert abs(expression["per_class_recall"][label] - value) < 1e-9

    for j, au in enumerate(aus):
        au_predicted = np.where(answered, au_pred[:, j], False)
        sk_f1 = f1_score(au_truth[:, j], au_predicted, zero_division=0)
        assert abs(report["aus"]["per_au"][f"AU{au}"]["f1"] - sk_f1) < 1e-9

    for index, axis in enumerate(("valence", "arousal")):
        x, y = va_truth[answered, index], va_pred[answered, index]
        sk_rmse = math.sqrt(mean_squared_error(x, y))
        assert abs(report["va"][axis]["rmse"] - sk_rmse) < 1e-9
        # Lin's CCC from numpy's population covariance matrix.
        cov = np.cov(x, y, bias=True)
        lin = 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2)
        assert abs(report["va"][axis]["ccc"] - lin) < 1e-9


def test_it_evaluates_a_benchmark_folder_from_the_command(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    keys = [
        key("a", "expression", {"expression": "happiness"}),
        key("b", "expression", {"expression": "anger"}),
        key("a", "va", {"valence": 0.5, "arousal": 0.1}),
        key("b", "va", {"valence": -0.5, "arousal": 0.6}),
    ]
    (bench / "feab_answers.jsonl").write_text("".join(json.dumps(k) + "\n" for k in keys))
    predictions = tmp_path / "model.jsonl"
    lines = [
        {"id": "a", "prediction": {"expression": "happiness", "valence": 0.4, "arousal": 0.2}},
        {"id": "b/expression", "answer": "Looks angry."},
        {"id": "b/va", "response": "valence -0.4, arousal 0.5"},
    ]
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    call_command("feab_evaluate", benchmark=bench, predictions=predictions, out_dir=out)
    report = json.loads((out / "feab_report.json").read_text())
    assert report["expression"]["accuracy"] == 1.0
    assert report["va"]["answered"] == 2
    assert "# FEAB evaluation" in (out / "feab_report.md").read_text()
