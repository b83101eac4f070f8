"""FEID: curated labels as instruction-tuning conversations.

Three published shapes, one JSON object per line:

* ``llava``: LLaVA's ``{"id", "image", "conversations": [{"from": "human" | "gpt",
  "value"}]}``. One human question and one gpt answer per grain, in the order
  expression, valence-arousal, AUs. The ``<image>`` placeholder opens the first
  human turn only: LLaVA's loader expects it once per image, and the later turns
  are about the same picture.
* ``openai``: OpenAI chat fine-tuning, ``{"messages": [{"role", "content"}]}``, a
  system message, then user and assistant turns; the image is an ``image_url``
  part of the first user message (a data URL or a URL/file reference).
* ``sharegpt``: LLaMA-Factory's multimodal ShareGPT, ``{"conversations": [...],
  "system", "images": [path]}`` with ``<image>`` once in the first human turn.

Every LLaVA and ShareGPT line also carries ``labels`` and ``provenance``; an
OpenAI training file holds ``messages`` only (the upload accepts nothing else), so
its labels go to a companion file, line by line in the same order.

Questions are drawn from a pool of paraphrases with a random generator seeded
by the export seed and the image's code, so a record's questions do not depend
on which other images are exported or in which order. Answers are fixed
sentences that state the structured label exactly (see ``answer_text``).
"""

from __future__ import annotations

import random
from typing import Any

from seke_app.engine.formats.records import VA_DECIMALS, CuratedRecord, au_key, round_va
from seke_app.engine.formats.words import with_article
from seke_app.engine.vocab import AU_NAMES

FORMATS: tuple[str, ...] = ("llava", "openai", "sharegpt")
IMAGE_TOKEN = "<image>"

SYSTEM_PROMPT = (
    "You are an expert in facial expression analysis. You describe a face's emotion"
    " as its discrete expression, its valence and arousal on scales from -1 to 1, and"
    " the FACS action units that are active."
)

QUESTIONS: dict[str, tuple[str, ...]] = {
    "expression": (
        "What facial expression does this person show?",
        "Which emotion is expressed by the face in this image?",
        "Identify the facial expression of the person in the picture.",
        "What is the discrete emotion category of this face?",
        "Look at the face. Which basic expression does it display?",
        "Classify the expression on this face.",
        "Which emotion best describes this facial expression?",
        "What emotion can you read from this person's face?",
    ),
    "va": (
        "Estimate the valence and arousal of this face on a scale from -1 to 1.",
        "How pleasant and how activated does this person look? Give valence and arousal"
        " between -1 and 1.",
        "Rate the emotional valence and arousal shown by this face, each from -1 to 1.",
        "What are the valence and arousal values of this facial expression?",
        "On the circumplex model, where does this face lie? Report valence and arousal.",
        "Give the valence (unpleasant to pleasant) and arousal (calm to excited) of this face.",
    ),
    "aus": (
        "Which facial action units are active in this face?",
        "List the FACS action units that are present in this image.",
        "Which action units of the Facial Action Coding System does this face show?",
        "Describe this face in terms of its active FACS action units.",
        "What muscle movements (action units) can you detect on this face?",
        "Identify the action units that are activated in this facial expression.",
    ),
}


def record_rng(seed: int, image: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random, so this is stable
    # across processes and Python versions (unlike hash()).
    return random.Random(f"{seed}:{image}")


# Valence and arousal in words: below -LEVEL_BAND, within it, above it.
LEVEL_BAND = 0.1
VALENCE_WORDS = ("unpleasant", "neutral", "pleasant")
AROUSAL_WORDS = ("calm", "moderately activated", "activated")


def _level(value: float, words: tuple[str, str, str]) -> str:
    low, middle, high = words
    if value > LEVEL_BAND:
        return high
    if value < -LEVEL_BAND:
        return low
    return middle


def _number(value: float) -> str:
    # The shortest exact text of the rounded value: 0.5, -0.125, 0.
    return f"{round_va(value):.{VA_DECIMALS}f}".rstrip("0").rstrip(".")


def au_phrase(au: int) -> str:
    name = AU_NAMES.get(au)
    return f"{au_key(au)} ({name})" if name else au_key(au)


def answer_text(record: CuratedRecord, grain: str) -> str:
    """A sentence that states the grain's structured label exactly.

    Expression: the label's name. VA: both numbers with ``VA_DECIMALS`` decimals,
    then words for them. AUs: every active AU with its FACS name, then every other
    coded AU as absent, so the full occurrence map can be read back.
    """
    if grain == "expression":
        return f"The facial expression is {record.expression}."
    if grain == "va":
        assert record.valence is not None and record.arousal is not None
        mood = _level(record.valence, VALENCE_WORDS)
        energy = _level(record.arousal, AROUSAL_WORDS)
        return (
            f"Valence is {_number(record.valence)} and arousal is {_number(record.arousal)},"
            f" on scales from -1 to 1: {with_article(f'{mood}, {energy} state')}."
        )
    active = record.active_aus()
    absent = sorted(au for au, on in (record.aus or {}).items() if not on)
    first = (
        "Active action units: " + ", ".join(au_phrase(au) for au in active) + "."
        if active
        else "No action unit is active."
    )
    if not absent:
        return first
    return f"{first} Absent: {', '.join(au_key(au) for au in absent)}."


def turns(record: CuratedRecord, seed: int) -> list[tuple[str, str]]:
    """(question, answer) for each grain the record has, questions drawn with the seed."""
    rng = record_rng(seed, record.image)
    return [(rng.choice(QUESTIONS[grain]), answer_text(record, grain)) for grain in record.grains()]


def _sharegpt_turns(record: CuratedRecord, seed: int) -> list[dict[str, str]]:
    conversations = []
    for index, (question, answer) in enumerate(turns(record, seed)):
        value = f"{IMAGE_TOKEN}\n{question}" if index == 0 else question
        conversations.append({"from": "human", "value": value})
        conversations.append({"from": "gpt", "value": answer})
    return conversations


def llava_line(record: CuratedRecord, image_ref: str, seed: int) -> dict[str, Any]:
    return {
        "id": record.image,
        "image": image_ref,
        "conversations": _sharegpt_turns(record, seed),
        "labels": record.labels_json(),
        "provenance": record.provenance_json(),
    }


def sharegpt_line(record: CuratedRecord, image_ref: str, seed: int) -> dict[str, Any]:
    return {
        "id": record.image,
        "conversations": _sharegpt_turns(record, seed),
        "system": SYSTEM_PROMPT,
        "images": [image_ref],
        "labels": record.labels_json(),
        "provenance": record.provenance_json(),
    }


def openai_line(record: CuratedRecord, image_url: str, seed: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for index, (question, answer) in enumerate(turns(record, seed)):
        if index == 0:
            content: Any = [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]
        else:
            content = question
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def labels_line(record: CuratedRecord) -> dict[str, Any]:
    """The companion line of an OpenAI training line: the same record's labels."""
    return {
        "id": record.image,
        "labels": record.labels_json(),
        "provenance": record.provenance_json(),
    }


def line(fmt: str, record: CuratedRecord, image_ref: str, seed: int) -> dict[str, Any]:
    if fmt == "llava":
        return llava_line(record, image_ref, seed)
    if fmt == "sharegpt":
        return sharegpt_line(record, image_ref, seed)
    if fmt == "openai":
        return openai_line(record, image_ref, seed)
    raise ValueError(f"unknown FEID format {fmt!r}; known: {', '.join(FORMATS)}")


def llama_factory_dataset_info(file_name: str, name: str = "feid") -> dict[str, Any]:
    """The ``dataset_info.json`` entry LLaMA-Factory needs to load the ShareGPT file."""
    return {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system", "images": "images"},
        }
    }
