"""Ask an OpenAI-compatible endpoint what it supports, with a few cheap calls.

OpenAI, Azure OpenAI, vLLM, Ollama and LM Studio differ in what they take:
several choices per request (``n``), strict JSON-schema structured outputs,
token log-probabilities, OpenAI's Batch API, even images (a text-only model
behind a vision-capable server). ``probe_endpoint`` finds out by asking, so
that runs can start with the right request settings instead of learning from
400s, and so that the admin sees what the endpoint lacks before starting a run.

The calls, in order, each sent once (``VLLMClient.attempt``), with replies of at
most a few dozen tokens:

1. a plain text question: the endpoint answers at all (else ``ProbeFailed``:
   unreachable, credentials refused, model unknown), and its time is the
   *single call* latency;
2. **images**: a 16x16 generated PNG with a question; yes when answered with text;
3. **n**: ``n=2``; yes when two choices come back (one choice: the endpoint
   ignores ``n``, as Ollama does);
4. **JSON schema**: ``response_format`` ``json_schema`` with ``strict``; yes when
   accepted and the reply parses as the schema's object;
5. **JSON object** (only when the schema was refused): ``json_object`` mode, the
   client's next step down;
6. **log-probabilities**: ``logprobs=True, top_logprobs=5``; yes when accepted
   *and* every choice carries per-token log-probabilities (some servers accept
   the field and send none);
7. **Batch API**: ``GET {base_url}/batches?limit=1`` answers 200 with a list.
   Nothing is created or uploaded; a server that lists batches may still limit
   which models a batch can use (Azure needs a batch deployment).

A refusal (400 or another 4xx) is a *no*, with the server's text as evidence; a
call that got no answer (timeout, 429 or 5xx) is *unknown*, with the reason.
The *median* latency is over every chat call that was answered.
"""

from __future__ import annotations

import base64
import enum
import io
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from seke_app.engine.llm.client import Attempt, FormatMode, VLLMClient, VLLMError
from seke_app.engine.types import Usage

# Enough for a one-word answer, and for the small JSON object of the schema check.
_SHORT_REPLY_TOKENS = 5
_JSON_REPLY_TOKENS = 40
_TOP_LOGPROBS = 5

_QUESTION = "Reply with one word: ok."
_IMAGE_QUESTION = "What colour is the square in this image? Reply with one word."
_JSON_QUESTION = 'Reply with the JSON object {"word": "ok"}.'
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"word": {"type": "string"}},
    "required": ["word"],
    "additionalProperties": False,
}

# The capabilities in the order they are checked and shown, with their names in words.
CAPABILITIES: dict[str, str] = {
    "images": "images",
    "n": "n choices",
    "json_schema": "JSON schema",
    "json_object": "JSON object",
    "logprobs": "log-probs",
    "batch": "Batch API",
}


class Answer(enum.StrEnum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Finding:
    """One capability's answer; ``evidence`` says why for a no or an unknown."""

    answer: Answer
    evidence: str = ""

    @classmethod
    def yes(cls) -> Finding:
        return cls(Answer.YES)


NOT_CHECKED = Finding(Answer.UNKNOWN, "not checked")


class ProbeFailed(Exception):
    """The endpoint did not answer a plain question: nothing else can be learnt."""


@dataclass(frozen=True)
class ProbeResult:
    """What the endpoint supports, how fast it answers and what the probe cost."""

    model: str
    findings: dict[str, Finding]
    single_call_s: float
    median_call_s: float
    calls: int  # chat requests sent (the Batch API's GET is not one)
    priced: bool
    usage: Usage = field(default_factory=Usage)

    def answer(self, capability: str) -> Answer:
        return self.findings[capability].answer


# The plain call, then one step per capability (JSON object counts when skipped).
STEPS = 1 + len(CAPABILITIES)


def probe_endpoint(
    client: VLLMClient, *, progress: Callable[[int], None] | None = None
) -> ProbeResult:
    """Run the checks of the module docstring against ``client``'s endpoint and model.

    ``progress`` is told how many of ``STEPS`` are done after each one. Raises
    ``ProbeFailed`` when the first, plain call gets no answer.
    """
    first = _first_call(client)
    attempts: list[Attempt] = [first]
    findings: dict[str, Finding] = {}

    def done(name: str, finding: Finding) -> None:
        findings[name] = finding
        if progress is not None:
            progress(1 + len(findings))

    def run(send: Callable[[VLLMClient], Attempt], judge: Callable[[Attempt], Finding]) -> Finding:
        try:
            attempt = send(client)
        except VLLMError as err:
            return Finding(Answer.UNKNOWN, f"no answer: {err.message}")
        attempts.append(attempt)
        if not attempt.answered:
            return Finding(Answer.NO, f"refused ({attempt.status}): {attempt.error}")
        return judge(attempt)

    if progress is not None:
        progress(1)
    done("images", run(_images, _has_text))
    done("n", run(_n, _two_choices))
    done("json_schema", run(_json_schema, _follows_schema))
    schema_refused = findings["json_schema"].answer == Answer.NO
    done("json_object", run(_json_object, _is_json_object) if schema_refused else NOT_CHECKED)
    done("logprobs", run(_logprobs, _carries_logprobs))
    done("batch", _batch(client))
    answered = [a.seconds for a in attempts if a.answered]
    return ProbeResult(
        model=client.model,
        findings=findings,
        single_call_s=first.seconds,
        median_call_s=statistics.median(answered),
        calls=len(attempts),
        priced=client.priced,
        usage=sum((a.usage for a in attempts), Usage()),
    )


def format_mode(findings: dict[str, Finding]) -> FormatMode | None:
    """The structured-output mode to start a client with, or None when unknown."""
    schema = findings["json_schema"].answer
    if schema == Answer.YES:
        return "json_schema"
    if schema == Answer.UNKNOWN:
        return None
    json_object = findings["json_object"].answer
    if json_object == Answer.UNKNOWN:
        return None
    return "json_object" if json_object == Answer.YES else "none"


def tiny_image_url() -> str:
    """A 16x16 PNG (a red square on white) as a data URL: one image tile, few tokens."""
    image = Image.new("RGB", (16, 16), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((4, 4, 11, 11), fill=(220, 20, 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _text(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}]


def _first_call(client: VLLMClient) -> Attempt:
    try:
        attempt = client.attempt(_text(_QUESTION), max_tokens=_SHORT_REPLY_TOKENS)
    except VLLMError as err:
        raise ProbeFailed(f"the endpoint did not answer a plain question: {err.message}") from None
    if not attempt.answered:
        raise ProbeFailed(
            f"the endpoint refused a plain question ({attempt.status}): {attempt.error}"
        )
    return attempt


def _images(client: VLLMClient) -> Attempt:
    content = [
        {"type": "text", "text": _IMAGE_QUESTION},
        {"type": "image_url", "image_url": {"url": tiny_image_url(), "detail": "low"}},
    ]
    return client.attempt([{"role": "user", "content": content}], max_tokens=_SHORT_REPLY_TOKENS)


def _n(client: VLLMClient) -> Attempt:
    return client.attempt(_text(_QUESTION), max_tokens=_SHORT_REPLY_TOKENS, n=2)


def _json_schema(client: VLLMClient) -> Attempt:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "seke_probe", "schema": _SCHEMA, "strict": True},
    }
    return client.attempt(
        _text(_JSON_QUESTION), max_tokens=_JSON_REPLY_TOKENS, response_format=response_format
    )


def _json_object(client: VLLMClient) -> Attempt:
    return client.attempt(
        _text(_JSON_QUESTION),
        max_tokens=_JSON_REPLY_TOKENS,
        response_format={"type": "json_object"},
    )


def _logprobs(client: VLLMClient) -> Attempt:
    return client.attempt(
        _text(_QUESTION), max_tokens=_SHORT_REPLY_TOKENS, top_logprobs=_TOP_LOGPROBS
    )


def _has_text(attempt: Attempt) -> Finding:
    if not any(choice.text for choice in attempt.choices):
        return Finding(Answer.NO, "accepted, but the reply has no text")
    return Finding.yes()


def _two_choices(attempt: Attempt) -> Finding:
    got = len(attempt.choices)
    return Finding.yes() if got >= 2 else Finding(Answer.NO, f"asked for 2 choices, got {got}")


def _carries_logprobs(attempt: Attempt) -> Finding:
    if attempt.logprobs and all(attempt.logprobs):
        return Finding.yes()
    return Finding(Answer.NO, "accepted, but the reply carries no log-probabilities")


def _follows_schema(attempt: Attempt) -> Finding:
    found = _is_json_object(attempt)
    if found.answer != Answer.YES:
        return found
    text = next(c.text for c in attempt.choices if c.text)
    if not isinstance(json.loads(text).get("word"), str):
        return Finding(
            Answer.NO, f"accepted, but the reply does not follow the schema: {text[:80]!r}"
        )
    return found


def _is_json_object(attempt: Attempt) -> Finding:
    # json_object mode promises an object, not a schema: any object will do.
    text = next((c.text for c in attempt.choices if c.text), None)
    if text is None:
        return Finding(Answer.NO, "accepted, but the reply has no text")
    try:
        value = json.loads(text)
    except ValueError:
        return Finding(Answer.NO, f"accepted, but the reply is not JSON: {text[:80]!r}")
    if not isinstance(value, dict):
        return Finding(Answer.NO, f"accepted, but the reply is not a JSON object: {text[:80]!r}")
    return Finding.yes()


def _batch(client: VLLMClient) -> Finding:
    try:
        attempt = client.attempt_batches()
    except VLLMError as err:
        return Finding(Answer.UNKNOWN, f"no answer: {err.message}")
    if attempt.answered:
        return Finding.yes()
    if attempt.status == 200:
        return Finding(Answer.NO, f"GET /batches answered, but {attempt.error}")
    if attempt.status in (408, 429) or attempt.status >= 500:
        return Finding(Answer.UNKNOWN, f"GET /batches: {attempt.status} {attempt.error}")
    return Finding(Answer.NO, f"GET /batches: {attempt.status} {attempt.error}")
