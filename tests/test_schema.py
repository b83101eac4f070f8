"""The answer's JSON schema, its plain-JSON instructions and its parser."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from seke_app.engine.schema import (
    AnswerError,
    answer_instructions,
    answer_json_schema,
    answer_to_schema_json,
    parse_answer,
    parse_verification,
    verification_json_schema,
)
from seke_app.engine.types import Answer
from seke_app.engine.vocab import EXPRESSIONS, FEID_AUS, Vocabulary

FEID = Vocabulary()
RAF_DB = Vocabulary(expressions=EXPRESSIONS[:7])


def _reply(**changes: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "evidence": {"aus": "cheeks up, lip corners up", "expression": "smile", "va": "pleasant"},
        "aus": {
            f"AU{au}": {"present": au in (6, 12), "intensity": {6: "B", 12: "D"}.get(au)}
            for au in FEID_AUS
        },
        "expression": "happiness",
        "valence": 0.7,
        "arousal": 0.2,
    }
    reply.update(changes)
    return reply


def _text(reply: dict[str, Any]) -> str:
    return json.dumps(reply)


def test_it_parses_a_valid_answer() -> None:
    answer = parse_answer(_text(_reply()), FEID)

    assert answer.expression == "happiness"
    assert answer.valence == 0.7
    assert answer.active_aus() == [6, 12]
    assert list(answer.aus) == list(FEID_AUS)
    assert answer.au_intensity == {6: "B", 12: "D"}
    assert answer.evidence["expression"] == "smile"


@pytest.mark.parametrize("fence", ["```json\n{}\n```", "Here it is:\n```\n{}\n```\nDone."])
def test_it_accepts_json_in_a_code_fence(fence: str) -> None:
    answer = parse_answer(fence.replace("{}", _text(_reply())), FEID)

    assert answer.expression == "happiness"


def test_it_reads_a_bare_boolean_as_an_au_without_intensity() -> None:
    reply = _reply()
    reply["aus"]["AU12"] = True

    answer = parse_answer(_text(reply), FEID)

    assert answer.aus[12] is True
    assert 12 not in answer.au_intensity


def test_it_ignores_the_intensity_of_an_absent_au() -> None:
    reply = _reply()
    reply["aus"]["AU4"] = {"present": False, "intensity": "C"}

    assert 4 not in parse_answer(_text(reply), FEID).au_intensity


def _without(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda reply: reply.pop(field)


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(reply: dict[str, Any]) -> None:
        target = reply
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _rename_au(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    return lambda reply: reply["aus"].__setitem__(new, reply["aus"].pop(old))


REJECTIONS: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_without("expression"), "the field 'expression' is missing"),
    (_without("valence"), "the field 'valence' is missing"),
    (_without("arousal"), "the field 'arousal' is missing"),
    (_without("aus"), "the field 'aus' is missing"),
    (_set(("expression",), "joy"), "expression 'joy' is not one of neutral, happiness"),
    (_set(("expression",), 3), "expression 3 is not one of"),
    (_set(("valence",), 1.7), "valence 1.7 is outside [-1, 1]"),
    (_set(("arousal",), -1.4), "arousal -1.4 is outside [-1, 1]"),
    (_set(("valence",), "high"), "valence 'high' is not a number"),
    (_set(("arousal",), None), "arousal None is not a number"),
    (_set(("valence",), True), "valence True is not a number"),
    (_set(("aus",), [6, 12]), "aus must be a JSON object"),
    (_rename_au("AU12", "AU99"), "'AU99' is not an AU name like 'AU12'"),
    (_rename_au("AU12", "AU 12"), "'AU 12' is not an AU name like 'AU12'"),
    (_rename_au("AU12", "smile"), "'smile' is not an AU name like 'AU12'"),
    (_rename_au("AU12", "AU11"), "AU11 is not in this vocabulary's AUs"),
    (lambda reply: reply["aus"].pop("AU25"), "AUs missing from the answer: AU25"),
    (_set(("aus", "AU6"), "yes"), "AU6 must be an object with 'present' and 'intensity'"),
    (_set(("aus", "AU6"), {"intensity": "B"}), "AU6 'present' must be true or false, not None"),
    (_set(("aus", "AU6", "present"), "true"), "AU6 'present' must be true or false"),
    (_set(("aus", "AU6", "intensity"), "F"), "AU6 intensity 'F' is not one of A-E or null"),
    (_set(("aus", "AU6", "intensity"), 3), "AU6 intensity 3 is not one of A-E or null"),
    (_set(("evidence",), "because"), "evidence must be an object of short texts"),
    (_set(("evidence", "va"), 0.5), "evidence must be an object of short texts"),
]


@pytest.mark.parametrize(("change", "reason"), REJECTIONS)
def test_it_rejects_an_invalid_answer_with_its_reason(
    change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    reply = copy.deepcopy(_reply())
    change(reply)

    with pytest.raises(AnswerError) as caught:
        parse_answer(_text(reply), FEID)

    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "the reply is empty"),
        ("  ", "the reply is empty"),
        ("Sure! The person looks happy.", "the reply is not JSON"),
        ('{"expression": "happiness",', "the reply is not JSON"),
        ("[1, 2]", "the reply is not a JSON object"),
    ],
)
def test_it_rejects_a_reply_that_is_not_a_json_object(text: str | None, reason: str) -> None:
    with pytest.raises(AnswerError, match=reason):
        parse_answer(text, FEID)


def test_it_rejects_an_expression_outside_a_smaller_vocabulary() -> None:
    with pytest.raises(AnswerError, match="'contempt' is not one of"):
        parse_answer(_text(_reply(expression="contempt")), RAF_DB)


def test_it_raises_a_value_error() -> None:
    # Callers that catch ValueError also catch an invalid answer.
    assert issubclass(AnswerError, ValueError)


def _objects(schema: Any) -> list[dict[str, Any]]:
    if isinstance(schema, list):
        return [o for item in schema for o in _objects(item)]
    if not isinstance(schema, dict):
        return []
    found = [schema] if schema.get("type") == "object" else []
    return found + [o for value in schema.values() for o in _objects(value)]


@pytest.mark.parametrize("build", [answer_json_schema, verification_json_schema])
def test_it_writes_a_schema_valid_for_strict_mode(build: Callable[[Vocabulary], Any]) -> None:
    schema = build(FEID)
    objects = _objects(schema)

    assert schema["type"] == "object"
    assert len(objects) > len(FEID_AUS)
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert sorted(obj["required"]) == sorted(obj["properties"])
    assert "minimum" not in json.dumps(schema)


def test_it_puts_the_vocabulary_into_the_schema() -> None:
    schema = answer_json_schema(Vocabulary.named("disfa12", expressions=EXPRESSIONS[:7]))

    assert schema["properties"]["expression"]["enum"] == list(EXPRESSIONS[:7])
    assert list(schema["properties"]["aus"]["properties"]) == [
        f"AU{au}" for au in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
    ]
    assert "-1" in schema["properties"]["valence"]["description"]


def test_it_orders_the_schema_from_fine_to_coarse() -> None:
    order = list(answer_json_schema(FEID)["properties"])

    assert order.index("aus") < order.index("expression") < order.index("valence")


def test_it_gives_instructions_whose_example_parses() -> None:
    text = answer_instructions(FEID)
    example = text.split("Example of the format only (not of this image):\n", 1)[1]

    assert parse_answer(example, FEID).expression == "happiness"
    assert "AU26" in text


def test_it_parses_a_verification() -> None:
    reply = {
        "verdicts": {
            "aus": {"verdict": "confirm"},
            "expression": {"verdict": "revise"},
            "va": {"verdict": "confirm"},
        },
        "answer": _reply(expression="surprise"),
    }

    answer, verdicts = parse_verification(f"```json\n{json.dumps(reply)}\n```", FEID)

    assert answer.expression == "surprise"
    assert verdicts == {"aus": "confirm", "expression": "revise", "va": "confirm"}


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({"answer": _reply()}, "the field 'verdicts' is missing"),
        ({"verdicts": {"aus": "confirm"}, "answer": _reply()}, "the verdict on expression"),
        (
            {
                "verdicts": {g: {"verdict": "maybe"} for g in ("aus", "expression", "va")},
                "answer": _reply(),
            },
            "the verdict on aus is 'maybe', not confirm or revise",
        ),
        (
            {"verdicts": {g: "confirm" for g in ("aus", "expression", "va")}, "answer": "ok"},
            "answer must be a JSON object",
        ),
    ],
)
def test_it_rejects_an_invalid_verification(reply: dict[str, Any], reason: str) -> None:
    with pytest.raises(AnswerError, match=reason):
        parse_verification(json.dumps(reply), FEID)


def test_it_shows_an_answer_back_in_the_schema_shape() -> None:
    answer = Answer(
        expression="anger",
        valence=-0.4,
        arousal=0.6,
        aus={au: au in (4, 7) for au in FEID_AUS},
        au_intensity={4: "C"},
    )

    assert parse_answer(json.dumps(answer_to_schema_json(answer)), FEID) == answer
