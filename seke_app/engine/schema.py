"""The structured answer: its JSON schema, its instructions in words, and its parser.

The schema is written for OpenAI's strict structured outputs: every object lists all
its properties as required and forbids others, and there are no numeric bounds (strict
mode does not support them), so the ranges are stated in descriptions and checked by
the parser. Properties are ordered so that a model generating them in order reasons
from fine to coarse: the evidence first, then the AUs, the expression, and VA last.

The parser is the single judge of validity for every backend. It accepts a reply in
the same shape from endpoints without structured outputs, including one wrapped in a
Markdown code fence, and rejects anything else with a reason in words.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, cast

from seke_app.engine.types import Answer, Intensity
from seke_app.engine.vocab import AU_NAMES, Vocabulary

ANSWER_SCHEMA_NAME = "seke_answer"
VERIFICATION_SCHEMA_NAME = "seke_verification"

INTENSITIES: tuple[Intensity, ...] = ("A", "B", "C", "D", "E")
# The grains a verification reply gives a verdict on, from fine to coarse.
GRAINS: tuple[str, ...] = ("aus", "expression", "va")
VERDICTS: tuple[str, ...] = ("confirm", "revise")

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_AU_KEY = re.compile(r"AU([0-9]+)")


class AnswerError(ValueError):
    """A reply that is not a valid answer; the message says why, in words."""


# --- Schemas ---------------------------------------------------------------------------


def _strict_object(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def _au_property(au: int) -> dict[str, Any]:
    return _strict_object(
        {
            "present": {"type": "boolean"},
            "intensity": {
                "anyOf": [{"type": "string", "enum": list(INTENSITIES)}, {"type": "null"}],
                "description": "FACS intensity A (trace) to E (maximum); null when absent",
            },
        },
        description=f"AU{au} {AU_NAMES[au]}",
    )


def _evidence_schema() -> dict[str, Any]:
    return _strict_object(
        {
            "aus": {"type": "string", "description": "what moves on the face, briefly"},
            "expression": {"type": "string", "description": "why this expression, briefly"},
            "va": {"type": "string", "description": "why this valence and arousal, briefly"},
        },
        description="Short evidence for each grain, written before the labels",
    )


def _answer_properties(vocabulary: Vocabulary) -> dict[str, Any]:
    return {
        "evidence": _evidence_schema(),
        "aus": _strict_object({f"AU{au}": _au_property(au) for au in vocabulary.aus}),
        "expression": {"type": "string", "enum": list(vocabulary.expressions)},
        "valence": {
            "type": "number",
            "description": "from -1 (very unpleasant) to +1 (very pleasant)",
        },
        "arousal": {
            "type": "number",
            "description": "from -1 (very calm, sleepy) to +1 (very excited, activated)",
        },
    }


def answer_json_schema(vocabulary: Vocabulary) -> dict[str, Any]:
    """The JSON schema of one answer, for strict structured outputs."""
    return _strict_object(_answer_properties(vocabulary))


def verification_json_schema(vocabulary: Vocabulary) -> dict[str, Any]:
    """The JSON schema of a verification reply: a verdict per grain, then the final answer."""
    verdict = _strict_object({"verdict": {"type": "string", "enum": list(VERDICTS)}})
    return _strict_object(
        {
            "verdicts": _strict_object({grain: verdict for grain in GRAINS}),
            "answer": answer_json_schema(vocabulary),
        }
    )


# --- Instructions for endpoints without structured outputs -----------------------------


def _example_answer(vocabulary: Vocabulary) -> dict[str, Any]:
    smiling = "happiness" in vocabulary.expressions
    active = {6: "C", 12: "D"} if smiling else {}
    return {
        "evidence": {
            "aus": "cheeks raised with crow's feet, lip corners pulled up" if smiling else "",
            "expression": "a felt smile" if smiling else "",
            "va": "pleasant, moderately activated" if smiling else "",
        },
        "aus": {
            f"AU{au}": {"present": au in active, "intensity": active.get(au)}
            for au in vocabulary.aus
        },
        "expression": "happiness" if smiling else vocabulary.expressions[0],
        "valence": 0.7 if smiling else 0.0,
        "arousal": 0.3 if smiling else 0.0,
    }


def _field_rules(vocabulary: Vocabulary) -> str:
    aus = ", ".join(f"AU{au}" for au in vocabulary.aus)
    return (
        f'- "aus": exactly these keys, each {{"present": true or false, "intensity": one '
        f'of "A"-"E" or null}}: {aus}.\n'
        f'- "expression": one of {", ".join(vocabulary.expressions)}.\n'
        '- "valence" and "arousal": numbers from -1 to +1.\n'
        '- "evidence": {"aus": ..., "expression": ..., "va": ...}, one short sentence each.'
    )


def answer_instructions(vocabulary: Vocabulary) -> str:
    """How to write the answer as plain JSON, with an example of the format."""
    # One line: a pretty-printed example would cost several times the tokens.
    example = json.dumps(_example_answer(vocabulary))
    return (
        "Reply with one JSON object and nothing else, with these fields:\n"
        f"{_field_rules(vocabulary)}\n"
        "Example of the format only (not of this image):\n"
        f"{example}"
    )


def verification_instructions(vocabulary: Vocabulary) -> str:
    """How to write a verification reply as plain JSON."""
    return (
        "Reply with one JSON object and nothing else: "
        '{"verdicts": {"aus": {"verdict": "confirm" or "revise"}, "expression": {...}, '
        '"va": {...}}, "answer": the final answer}, where the final answer has these '
        f"fields:\n{_field_rules(vocabulary)}"
    )


# --- Parsing ---------------------------------------------------------------------------


def parse_answer(text: str | None, vocabulary: Vocabulary) -> Answer:
    """Parse and validate one answer; raise AnswerError with the reason otherwise."""
    return _answer_from(_load_object(text), vocabulary)


def parse_verification(text: str | None, vocabulary: Vocabulary) -> tuple[Answer, dict[str, str]]:
    """Parse a verification reply into the final answer and the verdict per grain."""
    data = _load_object(text)
    verdicts = _verdicts_from(_field(data, "verdicts"))
    answer = _field(data, "answer")
    if not isinstance(answer, dict):
        raise AnswerError("answer must be a JSON object")
    return _answer_from(answer, vocabulary), verdicts


def _load_object(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        raise AnswerError("the reply is empty")
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"the reply is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise AnswerError("the reply is not a JSON object")
    return cast(dict[str, Any], data)


def _field(data: Mapping[str, Any], name: str) -> Any:
    if name not in data:
        raise AnswerError(f"the field {name!r} is missing")
    return data[name]


def _answer_from(data: Mapping[str, Any], vocabulary: Vocabulary) -> Answer:
    aus, intensity = _aus_from(_field(data, "aus"), vocabulary)
    return Answer(
        expression=_expression_from(_field(data, "expression"), vocabulary),
        valence=_va_from("valence", _field(data, "valence")),
        arousal=_va_from("arousal", _field(data, "arousal")),
        aus=aus,
        au_intensity=intensity,
        evidence=_evidence_from(data.get("evidence", {})),
    )


def _expression_from(value: Any, vocabulary: Vocabulary) -> str:
    # Case and surrounding spaces carry no meaning, so "Happiness " is accepted.
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in vocabulary.expressions:
        known = ", ".join(vocabulary.expressions)
        raise AnswerError(f"expression {value!r} is not one of {known}")
    return str(name)


def _va_from(name: str, value: Any) -> float:
    # JSON booleans arrive as Python bools, which are ints; they are not numbers here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnswerError(f"{name} {value!r} is not a number")
    if not math.isfinite(value):
        raise AnswerError(f"{name} {value} is not a finite number")
    if not -1.0 <= value <= 1.0:
        raise AnswerError(f"{name} {value} is outside [-1, 1]")
    return float(value)


def _au_number(key: str, vocabulary: Vocabulary) -> int:
    match = _AU_KEY.fullmatch(key)
    if match is None or int(match.group(1)) not in AU_NAMES:
        raise AnswerError(f"{key!r} is not an AU name like 'AU12'")
    number = int(match.group(1))
    if number not in vocabulary.aus:
        raise AnswerError(f"{key} is not in this vocabulary's AUs")
    return number


def _aus_from(value: Any, vocabulary: Vocabulary) -> tuple[dict[int, bool], dict[int, Intensity]]:
    if not isinstance(value, dict):
        raise AnswerError("aus must be a JSON object with one entry per AU")
    coded = {_au_number(key, vocabulary): entry for key, entry in value.items()}
    missing = [f"AU{au}" for au in vocabulary.aus if au not in coded]
    if missing:
        raise AnswerError(f"AUs missing from the answer: {', '.join(missing)}")
    aus: dict[int, bool] = {}
    intensity: dict[int, Intensity] = {}
    for au in vocabulary.aus:
        aus[au], grade = _au_entry(au, coded[au])
        if aus[au] and grade is not None:
            intensity[au] = grade
    return aus, intensity


def _au_entry(au: int, entry: Any) -> tuple[bool, Intensity | None]:
    # A bare true or false, a shape models often write without structured outputs, is
    # unambiguous: the AU's occurrence without an intensity.
    if isinstance(entry, bool):
        return entry, None
    if not isinstance(entry, dict):
        raise AnswerError(f"AU{au} must be an object with 'present' and 'intensity'")
    present = entry.get("present")
    if not isinstance(present, bool):
        raise AnswerError(f"AU{au} 'present' must be true or false, not {present!r}")
    # An intensity left out means the same as null: not graded.
    grade = entry.get("intensity")
    if grade is not None and grade not in INTENSITIES:
        raise AnswerError(f"AU{au} intensity {grade!r} is not one of A-E or null")
    return present, cast(Intensity | None, grade)


def _evidence_from(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise AnswerError("evidence must be an object of short texts")
    return {str(k): v for k, v in value.items()}


def _verdicts_from(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise AnswerError("verdicts must be a JSON object with one entry per grain")
    verdicts = {}
    for grain in GRAINS:
        entry = value.get(grain)
        verdict = entry.get("verdict") if isinstance(entry, dict) else entry
        if verdict not in VERDICTS:
            raise AnswerError(f"the verdict on {grain} is {verdict!r}, not confirm or revise")
        verdicts[grain] = str(verdict)
    return verdicts


def answer_to_schema_json(answer: Answer) -> dict[str, Any]:
    """An answer in the schema's own shape, for showing it back to the model."""
    return {
        "evidence": dict(answer.evidence),
        "aus": {
            f"AU{au}": {"present": on, "intensity": answer.au_intensity.get(au) if on else None}
            for au, on in sorted(answer.aus.items())
        },
        "expression": answer.expression,
        "valence": answer.valence,
        "arousal": answer.arousal,
    }
