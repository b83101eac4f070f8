"""FEAB's evaluator: read a model's answers and score them against the answer keys.

A prediction may be structured (a JSON object, or text holding one) or free text
that names the label. What counts, as SEKE defines it:

* Expression: a structured ``expression`` field, else the first expression that
  the text names (synonyms such as "happy" or "afraid" included) that is not
  negated ("not happy"). An answer that names none counts as wrong, as does a
  question left unanswered.
* Valence-arousal: structured ``valence`` and ``arousal``, else the numbers that
  follow the words "valence" and "arousal" in the text. Scored on the answered
  questions only (CCC and RMSE per axis); the share answered is reported.
* AUs: a structured ``aus`` map (``{"AU12": true}``, ``{"12": {"present": true}}``)
  or list of active AUs, else the AUs the text mentions, clause by clause: a clause
  with a negation ("absent", "not", "no") marks its AUs inactive. An AU not
  mentioned, and every AU of an unanswered question, counts as inactive.
  F1 per AU over the AUs the key codes; the mean is over the AUs that occur at
  least once in the keys (an AU that never occurs has no defined F1).
* Macro-F1 is over the expressions that occur in the keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from seke_app.engine import metrics
from seke_app.engine.vocab import EXPRESSIONS

UNPARSED = "(no answer)"

SYNONYMS: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "expressionless", "no emotion", "no particular emotion"),
    "happiness": ("happiness", "happy", "joy", "joyful", "joyous", "smiling", "delighted"),
    "sadness": ("sadness", "sad", "sorrow", "sorrowful", "unhappy", "unhappiness"),
    "surprise": ("surprise", "surprised", "astonished", "astonishment", "amazed", "amazement"),
    "fear": ("fear", "fearful", "afraid", "scared", "frightened", "terrified", "terror"),
    "disgust": ("disgust", "disgusted", "revulsion", "repulsed"),
    "anger": ("anger", "angry", "furious", "rage", "enraged"),
    "contempt": ("contempt", "contemptuous", "disdain", "disdainful", "scorn", "scornful"),
}
_WORD_TO_LABEL = {word: label for label, words in SYNONYMS.items() for word in words}
_EXPRESSION_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _WORD_TO_LABEL), key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
# A label is negated by a negation up to one word before it ("not very happy").
_NEGATED_BEFORE = re.compile(
    r"\b(?:not|no|never|isn't|aren't|nor|rather than)\s+(?:\w+\s+)?$", re.IGNORECASE
)
_NEGATION = re.compile(r"\b(?:absent|not|no|none|inactive|without|neither|nor)\b", re.IGNORECASE)
_AU_RE = re.compile(r"\bAU\s*0*(\d{1,2})\b", re.IGNORECASE)
_NUMBER = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))"
_VA_RE = {
    axis: re.compile(rf"\b{axis}\b[^0-9+\-.]{{0,40}}{_NUMBER}", re.IGNORECASE)
    for axis in ("valence", "arousal")
}
_CLAUSE_SPLIT = re.compile(r"[.;\n]+(?!\d)|\b(?:but|whereas|while)\b", re.IGNORECASE)


def structured(value: Any) -> dict[str, Any] | None:
    """The JSON object a prediction is or holds (also inside a ``` fence), if any."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.DOTALL)
    candidate = fenced.group(1) if fenced else text
    if not candidate.startswith("{"):
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            return None
        candidate = candidate[start : end + 1]
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _expression_word(value: str) -> str | None:
    return _WORD_TO_LABEL.get(value.strip().lower())


def parse_expression(value: Any, labels: Sequence[str] = EXPRESSIONS) -> str | None:
    """The expression a prediction names, or None."""
    data = structured(value)
    if data is not None and isinstance(data.get("expression"), str):
        label = _expression_word(data["expression"])
        return label if label in labels else None
    if not isinstance(value, str):
        return None
    for match in _EXPRESSION_RE.finditer(value):
        if _NEGATED_BEFORE.search(value[: match.start()]):
            continue
        label = _WORD_TO_LABEL[match.group(1).lower()]
        if label in labels:
            return label
    return None


def _va_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_va(value: Any) -> tuple[float, float] | None:
    """(valence, arousal) from a prediction, or None when either is missing."""
    data = structured(value)
    if data is not None:
        nested = data.get("va")
        source: Mapping[str, Any] = nested if isinstance(nested, Mapping) else data
        valence, arousal = _va_number(source.get("valence")), _va_number(source.get("arousal"))
        return (valence, arousal) if valence is not None and arousal is not None else None
    if not isinstance(value, str):
        return None
    found = [_VA_RE[axis].search(value) for axis in ("valence", "arousal")]
    if found[0] is None or found[1] is None:
        return None
    return float(found[0].group(1)), float(found[1].group(1))


def _au_number(key: Any) -> int | None:
    match = re.fullmatch(r"\s*(?:AU)?\s*0*(\d{1,2})\s*", str(key), re.IGNORECASE)
    return int(match.group(1)) if match else None


def _present(entry: Any) -> bool:
    if isinstance(entry, Mapping):
        entry = entry.get("present", entry.get("active", False))
    if isinstance(entry, str):
        return entry.strip().lower() in ("1", "true", "yes", "present", "active")
    return bool(entry)


def _structured_aus(aus: Any) -> dict[int, bool] | None:
    if isinstance(aus, Mapping):
        parsed = {_au_number(k): _present(v) for k, v in aus.items()}
        return {au: on for au, on in parsed.items() if au is not None}
    if isinstance(aus, list):
        return {au: True for au in map(_au_number, aus) if au is not None}
    return None


def parse_aus(value: Any) -> dict[int, bool] | None:
    """The AUs a prediction marks active (True) or inactive (False); None if unreadable."""
    data = structured(value)
    if data is not None:
        return _structured_aus(data.get("aus", data.get("action_units")))
    if not isinstance(value, str):
        return None
    result: dict[int, bool] = {}
    for clause in _CLAUSE_SPLIT.split(value):
        negated = bool(_NEGATION.search(_AU_RE.sub(" ", clause)))
        for match in _AU_RE.finditer(clause):
            result[int(match.group(1))] = not negated
    return result


# --- Scoring ------------------------------------------------------------------------


@dataclass
class _Collected:
    truth_expr: list[str] = field(default_factory=list)
    pred_expr: list[str] = field(default_factory=list)
    va_truth: list[tuple[float, float]] = field(default_factory=list)
    va_pred: list[tuple[float, float]] = field(default_factory=list)
    va_total: int = 0
    au_truth: list[dict[int, bool]] = field(default_factory=list)
    au_pred: list[dict[int, bool]] = field(default_factory=list)
    au_answered: int = 0
    unanswered: dict[str, int] = field(default_factory=lambda: {"expression": 0, "va": 0, "aus": 0})
    unreadable: dict[str, int] = field(default_factory=lambda: {"expression": 0, "va": 0, "aus": 0})


def predictions_by_id(lines: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Map question id (``image/grain``) or image id to the prediction it carries.

    The prediction is the first of ``prediction``, ``answer``, ``response``,
    ``output`` and ``text`` present on the line.
    """
    found: dict[str, Any] = {}
    for entry in lines:
        key = entry.get("id")
        if key is None:
            continue
        for name in ("prediction", "answer", "response", "output", "text"):
            if name in entry:
                found[str(key)] = entry[name]
                break
    return found


def _prediction_for(key: Mapping[str, Any], predictions: Mapping[str, Any]) -> Any:
    if key["id"] in predictions:
        return predictions[key["id"]]
    # A whole-image prediction answers every grain of the image.
    return predictions.get(str(key.get("image")))


def _collect(keys: Iterable[Mapping[str, Any]], predictions: Mapping[str, Any]) -> _Collected:
    c = _Collected()
    for key in keys:
        grain, answer = key["grain"], key["answer"]
        prediction = _prediction_for(key, predictions)
        if prediction is None:
            c.unanswered[grain] += 1
        if grain == "expression":
            predicted = parse_expression(prediction) if prediction is not None else None
            if predicted is None and prediction is not None:
                c.unreadable[grain] += 1
            c.truth_expr.append(answer["expression"])
            c.pred_expr.append(predicted or UNPARSED)
        elif grain == "va":
            c.va_total += 1
            pair = parse_va(prediction) if prediction is not None else None
            if pair is None:
                c.unreadable[grain] += prediction is not None
                continue
            c.va_truth.append((answer["valence"], answer["arousal"]))
            c.va_pred.append(pair)
        elif grain == "aus":
            truth = {_au_number(k): bool(v) for k, v in answer["aus"].items()}
            aus = parse_aus(prediction) if prediction is not None else None
            if aus is None and prediction is not None:
                c.unreadable[grain] += 1
            c.au_answered += aus is not None
            c.au_truth.append({au: on for au, on in truth.items() if au is not None})
            c.au_pred.append(aus or {})
    return c


def _expression_scores(c: _Collected) -> dict[str, Any] | None:
    if not c.truth_expr:
        return None
    labels = [e for e in EXPRESSIONS if e in set(c.truth_expr)]
    classes = metrics.per_class_scores(c.truth_expr, c.pred_expr, labels)
    return {
        "n": len(c.truth_expr),
        "accuracy": metrics.accuracy(c.truth_expr, c.pred_expr),
        "macro_f1": metrics.macro_f1(c.truth_expr, c.pred_expr, labels),
        "per_class_recall": {str(s.label): s.recall for s in classes},
        "support": {str(s.label): s.support for s in classes},
        "unanswered": c.unanswered["expression"],
        "unreadable": c.unreadable["expression"],
    }


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _va_scores(c: _Collected) -> dict[str, Any] | None:
    if not c.va_total:
        return None
    scores: dict[str, Any] = {
        "n": c.va_total,
        "answered": len(c.va_pred),
        "coverage": len(c.va_pred) / c.va_total,
        "unanswered": c.unanswered["va"],
        "unreadable": c.unreadable["va"],
    }
    for index, axis in enumerate(("valence", "arousal")):
        truth = [pair[index] for pair in c.va_truth]
        pred = [pair[index] for pair in c.va_pred]
        scores[axis] = (
            {"ccc": _finite_or_none(metrics.ccc(truth, pred)), "rmse": metrics.rmse(truth, pred)}
            if truth
            else None
        )
    return scores


def _au_scores(c: _Collected) -> dict[str, Any] | None:
    if not c.au_truth:
        return None
    coded = sorted({au for truth in c.au_truth for au in truth})
    per_au: dict[str, Any] = {}
    for au in coded:
        rows = [
            (t[au], p.get(au, False)) for t, p in zip(c.au_truth, c.au_pred, strict=True) if au in t
        ]
        truth = [t for t, _ in rows]
        per_au[f"AU{au}"] = {
            "f1": metrics.binary_f1(truth, [p for _, p in rows]),
            "support": sum(truth),
            "n": len(rows),
        }
    occurring = [entry["f1"] for entry in per_au.values() if entry["support"] > 0]
    return {
        "n": len(c.au_truth),
        "answered": c.au_answered,
        "per_au": per_au,
        "mean_f1": sum(occurring) / len(occurring) if occurring else None,
        "unanswered": c.unanswered["aus"],
        "unreadable": c.unreadable["aus"],
    }


def score(keys: Iterable[Mapping[str, Any]], predictions: Mapping[str, Any]) -> dict[str, Any]:
    """Every FEAB metric for the answer keys and the predictions by id."""
    collected = _collect(keys, predictions)
    return {
        "expression": _expression_scores(collected),
        "va": _va_scores(collected),
        "aus": _au_scores(collected),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _va_row(axis: str, scores: Mapping[str, Any] | None) -> str:
    scores = scores or {}
    return f"| {axis} | {_fmt(scores.get('ccc'))} | {_fmt(scores.get('rmse'))} |"


def markdown(report: Mapping[str, Any], title: str = "FEAB evaluation") -> str:
    """The report as a Markdown page."""
    lines = [f"# {title}", ""]
    expression, va, aus = report.get("expression"), report.get("va"), report.get("aus")
    if expression:
        lines += [
            "## Expression",
            "",
            f"{expression['n']} questions; accuracy **{_fmt(expression['accuracy'])}**,"
            f" macro-F1 **{_fmt(expression['macro_f1'])}**; {expression['unanswered']} unanswered,"
            f" {expression['unreadable']} unreadable.",
            "",
            "| expression | recall | support |",
            "|---|---|---|",
            *(
                f"| {label} | {_fmt(recall)} | {expression['support'][label]} |"
                for label, recall in expression["per_class_recall"].items()
            ),
            "",
        ]
    if va:
        lines += [
            "## Valence-arousal",
            "",
            f"{va['answered']} of {va['n']} questions answered (coverage {_fmt(va['coverage'])}).",
            "",
            "| axis | CCC | RMSE |",
            "|---|---|---|",
            *(_va_row(axis, va[axis]) for axis in ("valence", "arousal")),
            "",
        ]
    if aus:
        lines += [
            "## Action units",
            "",
            f"{aus['answered']} of {aus['n']} questions answered; mean F1 over the AUs that"
            f" occur: **{_fmt(aus['mean_f1'])}**.",
            "",
            "| AU | F1 | positives | coded |",
            "|---|---|---|---|",
            *(
                f"| {au} | {_fmt(entry['f1'])} | {entry['support']} | {entry['n']} |"
                for au, entry in aus["per_au"].items()
            ),
            "",
        ]
    if not (expression or va or aus):
        lines.append("No answer key to score.")
    return "\n".join(lines)
