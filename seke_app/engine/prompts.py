"""The knowledge-enhanced prompts: annotation and self-verification, in OpenAI chat format.

Every text here is a pure function of its inputs, so a prompt version is reproducible
from what was stored and ``prompt_fingerprint`` of its text proves it unchanged. The
model is asked to reason from fine to coarse, as the knowledge is built: AUs first
(what moves on the face), then the expression they form, then valence and arousal.

Exemplars are the expert-reviewed cases a prompt version carries. Each is a mapping
with any of ``expression``, ``valence``, ``arousal``, ``aus`` (a list of active AU
numbers, or a mapping of AU number to True/False), ``note`` (the reviewer's words)
and ``image_url`` (then the exemplar's image is shown beside its description).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from seke_app.engine.knowledge import knowledge_text as default_knowledge_text
from seke_app.engine.schema import (
    answer_instructions,
    answer_to_schema_json,
    verification_instructions,
)
from seke_app.engine.types import AnnotationRequest, KnownLabels, VerificationRequest
from seke_app.engine.vocab import AU_NAMES, Vocabulary

Message = dict[str, Any]

SYSTEM_ROLE = (
    "You are a certified FACS coder and an experienced affect annotator. You annotate "
    "the face in a photograph for a research dataset of facial emotion, at three grains: "
    "the facial action units (AUs) that are active, the emotional expression, and "
    "valence and arousal. You judge only what is visible on the face, and you never try "
    "to identify the person."
)

_PROCEDURE = (
    "Procedure, from fine to coarse:\n"
    "1. Action units: look at brows, eyes, cheeks, nose, lips and chin in turn and decide "
    "for every AU of the task whether it is present, with a FACS intensity from A (trace) "
    "to E (maximum) when it is.\n"
    "2. Expression: choose the expression that the active AUs, the knowledge above and "
    "the whole face support best.\n"
    "3. Valence and arousal: place the face on both scales from -1 to +1, starting from "
    "the chosen expression's typical values and adjusting for what you see.\n"
    "Known human labels given with an image are correct: use them exactly and make the "
    "other grains agree with them."
)

# Exemplar images only illustrate a correction; low detail keeps their cost at the
# fixed minimum so that the image to annotate gets the tokens.
_EXEMPLAR_DETAIL = "low"


def prompt_fingerprint(text: str) -> str:
    """The SHA-256 of a prompt text, hex-encoded."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- System prompt ---------------------------------------------------------------------


def build_system_prompt(
    knowledge_text: str, vocabulary: Vocabulary, exemplars: Sequence[Mapping[str, Any]]
) -> str:
    """The system prompt: role, labels of the task, knowledge, exemplars, procedure."""
    parts = [SYSTEM_ROLE, _labels_text(vocabulary), "Knowledge:\n" + knowledge_text.strip()]
    if exemplars:
        parts.append(_exemplars_text(exemplars))
    parts.append(_PROCEDURE)
    return "\n\n".join(parts)


def _labels_text(vocabulary: Vocabulary) -> str:
    aus = ", ".join(f"AU{au} ({AU_NAMES[au]})" for au in vocabulary.aus)
    return (
        f"Expressions of this task: {', '.join(vocabulary.expressions)}.\n"
        f"Action units of this task: {aus}."
    )


def _exemplars_text(exemplars: Sequence[Mapping[str, Any]]) -> str:
    lines = ["Examples reviewed by human experts (follow their judgement in similar cases):"]
    for number, exemplar in enumerate(exemplars, start=1):
        lines.append(f"Example {number}: {describe_exemplar(exemplar)}")
    return "\n".join(lines)


def describe_exemplar(exemplar: Mapping[str, Any]) -> str:
    """One exemplar in words: its labels, the reviewer's note, whether an image is shown."""
    facts = []
    if exemplar.get("expression") is not None:
        facts.append(f"expression {exemplar['expression']}")
    for name in ("valence", "arousal"):
        if exemplar.get(name) is not None:
            facts.append(f"{name} {float(exemplar[name]):+.2f}")
    if exemplar.get("aus") is not None:
        active = _active_aus(exemplar["aus"])
        facts.append("active AUs " + (", ".join(f"AU{au}" for au in active) or "none"))
    text = "; ".join(facts) if facts else "no labels"
    if exemplar.get("machine_expression"):
        text += f" (a model first answered {exemplar['machine_expression']})"
    if exemplar.get("note"):
        text += f". Reviewer's note: {str(exemplar['note']).strip()}"
    if exemplar.get("image_url"):
        text += " (its image is shown with the request)"
    return text


def _active_aus(aus: Any) -> list[int]:
    if isinstance(aus, Mapping):
        return sorted(int(au) for au, on in aus.items() if on)
    return sorted(int(au) for au in aus)


# --- Anchors ---------------------------------------------------------------------------


def anchors_text(known: KnownLabels, vocabulary: Vocabulary) -> str:
    """The image's known human labels, one line per grain they give; empty when none.

    Exactly the grains SV-UAMC takes as given (``KnownLabels.grains``): valence and
    arousal only together, the expression and AUs only those of the vocabulary.
    """
    lines = []
    if known.expression is not None and known.expression in vocabulary.expressions:
        lines.append(f"- expression: {known.expression}")
    va = known.va()
    if va is not None:
        lines.append(f"- valence: {va[0]:+.2f}")
        lines.append(f"- arousal: {va[1]:+.2f}")
    coded = known.coded_aus(vocabulary)
    if coded:
        lines.append(f"- action units: {_aus_anchor(coded)}")
    if not lines:
        return ""
    header = (
        "Known human labels for this image, from the source dataset. They are correct: do "
        "not contradict them, copy them into your answer, and infer the missing grains "
        "consistently with them:"
    )
    return "\n".join([header, *lines])


def _aus_anchor(coded: Mapping[int, bool]) -> str:
    present = [f"AU{au}" for au in sorted(coded) if coded[au]]
    absent = [f"AU{au}" for au in sorted(coded) if not coded[au]]
    return f"present {', '.join(present) or 'none'}; absent {', '.join(absent) or 'none'}"


# --- Annotation ------------------------------------------------------------------------


def _system_prompt_for(request: AnnotationRequest) -> str:
    knowledge = request.knowledge_text or default_knowledge_text(request.vocabulary)
    return build_system_prompt(knowledge, request.vocabulary, request.exemplars)


def _image_part(url: str, detail: str) -> Message:
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def _text_part(text: str) -> Message:
    return {"type": "text", "text": text}


def _exemplar_parts(exemplars: Sequence[Mapping[str, Any]]) -> list[Message]:
    parts: list[Message] = []
    for number, exemplar in enumerate(exemplars, start=1):
        if exemplar.get("image_url"):
            parts.append(_text_part(f"Image of example {number}:"))
            parts.append(_image_part(str(exemplar["image_url"]), _EXEMPLAR_DETAIL))
    return parts


def _annotation_text(request: AnnotationRequest, structured: bool) -> str:
    parts = [
        "Annotate the face in the image below. Code the action units first, then the "
        "expression, then valence and arousal, and give short evidence for each grain."
    ]
    return _with_anchors(parts, request, answer_instructions if not structured else None)


def _with_anchors(
    parts: list[str],
    request: AnnotationRequest,
    instructions: Callable[[Vocabulary], str] | None,
) -> str:
    """The text's parts, then the image's known labels, then the reply format in words.

    The format is spelled out only where the endpoint cannot enforce the schema.
    """
    anchors = anchors_text(request.known, request.vocabulary)
    if anchors:
        parts.append(anchors)
    if instructions is not None:
        parts.append(instructions(request.vocabulary))
    return "\n\n".join(parts)


def build_messages(
    request: AnnotationRequest,
    image_url: str,
    *,
    detail: str = "high",
    structured: bool = True,
) -> list[Message]:
    """The chat messages that ask for one structured answer for the request's image.

    Without ``structured`` (an endpoint without JSON schemas) the answer's format is
    spelled out in the text instead.
    """
    content = [
        *_exemplar_parts(request.exemplars),
        _text_part(_annotation_text(request, structured)),
        _image_part(image_url, detail),
    ]
    return [
        {"role": "system", "content": _system_prompt_for(request)},
        {"role": "user", "content": content},
    ]


# --- Self-verification -----------------------------------------------------------------


def _verification_text(verification: VerificationRequest, structured: bool) -> str:
    request = verification.request
    aggregate = json.dumps(answer_to_schema_json(verification.aggregate))
    disagreement = verification.disagreement.strip() or "the samples agreed"
    parts = [
        "Several independent annotations of the image below were aggregated into this "
        f"answer:\n{aggregate}",
        f"Where the annotations disagreed: {disagreement}",
        "Check the aggregate against the image and the knowledge, grain by grain from fine "
        "to coarse: the action units, then the expression, then valence and arousal. For "
        "each grain, confirm it or revise it, then give the final answer with the revisions "
        "applied (identical to the aggregate where you confirm).",
    ]
    return _with_anchors(parts, request, verification_instructions if not structured else None)


def build_verification_messages(
    verification: VerificationRequest,
    image_url: str,
    *,
    detail: str = "high",
    structured: bool = True,
) -> list[Message]:
    """The chat messages of the self-verification call for one image."""
    request = verification.request
    content = [
        *_exemplar_parts(request.exemplars),
        _text_part(_verification_text(verification, structured)),
        _image_part(image_url, detail),
    ]
    return [
        {"role": "system", "content": _system_prompt_for(request)},
        {"role": "user", "content": content},
    ]
