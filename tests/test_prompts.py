"""The knowledge-enhanced annotation and verification prompts."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw

from seke_app.engine.knowledge import knowledge_text
from seke_app.engine.prompts import (
    SYSTEM_ROLE,
    build_messages,
    build_system_prompt,
    build_verification_messages,
    prompt_fingerprint,
)
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    KnownLabels,
    VerificationRequest,
)
from seke_app.engine.vocab import FEID_AUS, Vocabulary

FEID = Vocabulary()
IMAGE_URL = "data:image/png;base64,AAAA"


def _face_png() -> bytes:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 4, 56, 60), outline="black")
    draw.arc((20, 30, 44, 50), start=20, end=160, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _request(**changes: Any) -> AnnotationRequest:
    fields: dict[str, Any] = {"image_bytes": _face_png(), "vocabulary": FEID, "image_id": "img-1"}
    fields.update(changes)
    return AnnotationRequest(**fields)


def _user_text(messages: list[dict[str, Any]]) -> str:
    parts = messages[1]["content"]
    return "\n".join(p["text"] for p in parts if p["type"] == "text")


def _image_urls(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    parts = messages[1]["content"]
    return [
        (p["image_url"]["url"], p["image_url"]["detail"]) for p in parts if p["type"] == "image_url"
    ]


def test_it_builds_a_system_and_a_user_message_with_the_image() -> None:
    messages = build_messages(_request(), IMAGE_URL, detail="low")

    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith(SYSTEM_ROLE)
    assert _image_urls(messages) == [(IMAGE_URL, "low")]
    assert messages[1]["content"][-1]["type"] == "image_url"


def test_it_uses_the_default_knowledge_unless_the_request_has_its_own() -> None:
    default = build_messages(_request(), IMAGE_URL)[0]["content"]
    custom = build_messages(_request(knowledge_text="Rule: smiles are happy."), IMAGE_URL)

    assert knowledge_text(FEID) in default
    assert "Rule: smiles are happy." in custom[0]["content"]
    assert "AU9 nose wrinkler:" not in custom[0]["content"]


def test_it_gives_no_anchors_when_nothing_is_known() -> None:
    assert "Known human labels" not in _user_text(build_messages(_request(), IMAGE_URL))


def test_it_anchors_only_the_known_grains() -> None:
    known = KnownLabels(expression="happiness")

    text = _user_text(build_messages(_request(known=known), IMAGE_URL))

    assert "Known human labels" in text
    assert "- expression: happiness" in text
    assert "- valence:" not in text
    assert "- arousal:" not in text
    assert "- action units:" not in text


def test_it_anchors_va_and_aus_of_the_vocabulary() -> None:
    known = KnownLabels(valence=-0.25, arousal=0.5, aus={4: True, 7: False, 11: True})

    text = _user_text(build_messages(_request(known=known), IMAGE_URL))

    assert "- valence: -0.25" in text
    assert "- arousal: +0.50" in text
    assert "- action units: present AU4; absent AU7" in text
    assert "AU11" not in text  # outside the FEID vocabulary
    assert "- expression:" not in text


def test_it_lists_exemplars_and_shows_their_images() -> None:
    exemplars = (
        {"expression": "fear", "valence": -0.3, "aus": [1, 2, 4, 5, 20], "note": "not surprise"},
        {"expression": "contempt", "aus": {14: True, 12: False}, "image_url": "data:ex2"},
    )

    messages = build_messages(_request(exemplars=exemplars), IMAGE_URL)

    system = messages[0]["content"]
    assert (
        "Example 1: expression fear; valence -0.30; active AUs AU1, AU2, AU4, AU5, AU20" in system
    )
    assert "Reviewer's note: not surprise" in system
    assert "Example 2: expression contempt; active AUs AU14 (its image is shown" in system
    assert _image_urls(messages) == [("data:ex2", "low"), (IMAGE_URL, "high")]
    assert "Image of example 2:" in _user_text(messages)


def test_it_asks_for_the_grains_from_fine_to_coarse() -> None:
    system = build_messages(_request(), IMAGE_URL)[0]["content"]
    procedure = system[system.index("Procedure") :]

    assert procedure.index("Action units") < procedure.index("Expression")
    assert procedure.index("Expression") < procedure.index("Valence and arousal")


def test_it_spells_out_the_format_for_endpoints_without_schemas() -> None:
    structured = _user_text(build_messages(_request(), IMAGE_URL))
    plain = _user_text(build_messages(_request(), IMAGE_URL, structured=False))

    assert "Reply with one JSON object" not in structured
    assert "Reply with one JSON object" in plain


def test_it_is_deterministic_and_fingerprinted() -> None:
    exemplars = ({"expression": "anger", "aus": {23: True, 4: True}},)
    first = build_messages(_request(exemplars=exemplars), IMAGE_URL)
    again = build_messages(_request(exemplars=exemplars), IMAGE_URL)
    system = build_system_prompt(knowledge_text(FEID), FEID, exemplars)

    assert first == again
    assert first[0]["content"] == system
    assert prompt_fingerprint(system) == prompt_fingerprint(first[0]["content"])
    assert len(prompt_fingerprint(system)) == 64
    assert prompt_fingerprint(system) != prompt_fingerprint(system + " ")


def _verification(**request_changes: Any) -> VerificationRequest:
    aggregate = Answer(
        expression="surprise",
        valence=0.1,
        arousal=0.7,
        aus={au: au in (1, 2, 5, 26) for au in FEID_AUS},
    )
    return VerificationRequest(
        request=_request(**request_changes),
        aggregate=aggregate,
        disagreement="expression split 3/2 between surprise and fear",
    )


def test_it_shows_the_aggregate_and_the_disagreement_for_verification() -> None:
    known = KnownLabels(valence=-0.1, arousal=0.8)

    messages = build_verification_messages(_verification(known=known), IMAGE_URL)

    text = _user_text(messages)
    assert '"expression": "surprise"' in text
    assert '"AU26": {' in text
    assert "expression split 3/2 between surprise and fear" in text
    assert "confirm it or revise it" in text
    assert "- arousal: +0.80" in text
    assert "- valence: -0.10" in text
    assert "- expression:" not in text
    assert knowledge_text(FEID) in messages[0]["content"]
    assert _image_urls(messages) == [(IMAGE_URL, "high")]


def test_it_spells_out_the_verification_format_without_schemas() -> None:
    text = _user_text(build_verification_messages(_verification(), IMAGE_URL, structured=False))

    assert '"verdicts"' in text
    assert build_verification_messages(_verification(), IMAGE_URL) == build_verification_messages(
        _verification(), IMAGE_URL
    )
