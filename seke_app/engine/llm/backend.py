"""The OpenAI-compatible backend: SV-UAMC's samples and verifications from a VLLM.

It builds the knowledge-enhanced prompt, sends it through ``VLLMClient`` and turns every
choice into a ``Sample``. A reply that is refused, cut off or not a valid answer
becomes an invalid sample with its reason, never an exception, so that SV-UAMC can
count it. A ``VLLMError`` (the request itself failed) propagates: whether to retry
later or give up is the job layer's decision.

When the endpoint returns token log-probabilities, a valid sample (and the
verification reply) carries the model's probability of each expression, read at
the expression value's first token (``logprobs.read_expression``): SV-UAMC counts
a sample's as a soft vote and grades the verification by the verifier's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Self

from seke_app.engine.llm.client import (
    ChatResult,
    Choice,
    VLLMClient,
    chat_request_body,
    image_data_url,
)
from seke_app.engine.llm.logprobs import ANSWER_PATH, VERIFICATION_PATH, expression_probs
from seke_app.engine.prompts import build_messages, build_verification_messages
from seke_app.engine.schema import (
    ANSWER_SCHEMA_NAME,
    VERIFICATION_SCHEMA_NAME,
    AnswerError,
    answer_json_schema,
    parse_answer,
    parse_verification,
    verification_json_schema,
)
from seke_app.engine.types import (
    ALL_GRAINS,
    AnnotationRequest,
    Answer,
    Sample,
    SampleKind,
    Usage,
    VerificationRequest,
)
from seke_app.engine.vocab import Vocabulary

# Room for the evidence texts and an entry per AU of the largest vocabulary (24 AUs).
DEFAULT_MAX_TOKENS = 1500

# Cost shares are rounded down to a multiple of this power of two (about 1e-9 USD), so
# that the shares and the remainder add up to the call's cost exactly, in any order.
_COST_QUANTUM = 2.0**-30


def split_usage(usage: Usage, parts: int) -> list[Usage]:
    """Split one call's usage into ``parts`` shares whose sum is exactly the usage.

    Every share gets an equal part of each count and the first share also gets the
    remainder. Cost shares are multiples of a small power of two, so that the shares
    add up to the call's cost exactly in floating point, whatever the order.
    """
    if parts < 1:
        raise ValueError("parts must be at least 1")
    columns = zip(
        _split_count(usage.requests, parts),
        _split_count(usage.prompt_tokens, parts),
        _split_count(usage.completion_tokens, parts),
        _split_cost(usage.cost_usd, parts),
        strict=True,
    )
    return [
        Usage(requests=r, prompt_tokens=p, completion_tokens=c, cost_usd=cost)
        for r, p, c, cost in columns
    ]


def _split_count(total: int, parts: int) -> list[int]:
    share = total // parts
    return [total - share * (parts - 1)] + [share] * (parts - 1)


def _split_cost(total: float, parts: int) -> list[float]:
    share = math.floor(total / parts / _COST_QUANTUM) * _COST_QUANTUM
    return [total - share * (parts - 1)] + [share] * (parts - 1)


def choice_problem(choice: Choice) -> str | None:
    """Why a choice cannot hold an answer (refused, filtered, cut off), or None."""
    if choice.refusal:
        return f"the model refused: {choice.refusal}"
    if choice.finish_reason == "content_filter":
        return "the reply was blocked by the endpoint's content filter"
    if choice.finish_reason == "length":
        return "the reply was cut off at the token limit"
    return None


class OpenAIBackend:
    """A ``Backend`` on any OpenAI-compatible endpoint, through ``VLLMClient``."""

    name = "openai"
    # A vision LLM reads every grain from the image.
    observed_grains = ALL_GRAINS

    def __init__(
        self,
        client: VLLMClient,
        *,
        model: str,
        max_side: int = 512,
        detail: str = "high",
        structured: bool = True,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        if detail not in ("high", "low", "auto"):
            raise ValueError(f"detail must be high, low or auto, not {detail!r}")
        self.client = client
        self.model = model
        self.max_side = max_side
        self.detail = detail
        self.structured = structured
        self.max_tokens = max_tokens

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and its connection pool: the backend owns the client it
        was given."""
        self.client.close()

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        """Draw ``k`` answers with one request (``n=k``); the client splits it if it must."""
        messages, schema = self._sample_prompt(request)
        result = self.client.chat(
            messages,
            n=k,
            temperature=temperature,
            json_schema=schema,
            schema_name=ANSWER_SCHEMA_NAME,
            max_tokens=self.max_tokens,
        )
        return self.samples_from(result, request.vocabulary)

    def verify(self, verification: VerificationRequest) -> Sample:
        """Ask once, at temperature 0, to confirm or revise each grain of the aggregate."""
        messages, schema = self._verification_prompt(verification)
        result = self.client.chat(
            messages,
            n=1,
            temperature=0.0,
            json_schema=schema,
            schema_name=VERIFICATION_SCHEMA_NAME,
            max_tokens=self.max_tokens,
        )
        return self.verification_from(result, verification.request.vocabulary)

    # -- the same calls as request bodies and replies, for the Batch API ----------

    def sample_body(self, request: AnnotationRequest, k: int, temperature: float) -> dict[str, Any]:
        """The chat-completions body ``sample`` would send (strict JSON schema, and the
        log-probabilities the client asks for)."""
        messages, schema = self._sample_prompt(request)
        return chat_request_body(
            self.client.model,
            messages,
            n=k,
            temperature=temperature,
            json_schema=schema,
            schema_name=ANSWER_SCHEMA_NAME,
            max_tokens=self.max_tokens,
            top_logprobs=self.client.top_logprobs,
        )

    def verify_body(self, verification: VerificationRequest) -> dict[str, Any]:
        """The chat-completions body ``verify`` would send."""
        messages, schema = self._verification_prompt(verification)
        return chat_request_body(
            self.client.model,
            messages,
            n=1,
            temperature=0.0,
            json_schema=schema,
            schema_name=VERIFICATION_SCHEMA_NAME,
            max_tokens=self.max_tokens,
            top_logprobs=self.client.top_logprobs,
        )

    def samples_from(self, result: ChatResult, vocabulary: Vocabulary) -> list[Sample]:
        """One sample per choice, the call's usage split among them."""
        shares = split_usage(result.usage, len(result.choices))
        return [
            self._answer_sample(choice, vocabulary, share)
            for choice, share in zip(result.choices, shares, strict=True)
        ]

    def verification_from(self, result: ChatResult, vocabulary: Vocabulary) -> Sample:
        return self._verification_sample(result.choices[0], vocabulary, result.usage)

    def _sample_prompt(
        self, request: AnnotationRequest
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        messages = build_messages(
            request, self._image_url(request), detail=self.detail, structured=self.structured
        )
        return messages, answer_json_schema(request.vocabulary) if self.structured else None

    def _verification_prompt(
        self, verification: VerificationRequest
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        request = verification.request
        messages = build_verification_messages(
            verification,
            self._image_url(request),
            detail=self.detail,
            structured=self.structured,
        )
        schema = verification_json_schema(request.vocabulary) if self.structured else None
        return messages, schema

    def _image_url(self, request: AnnotationRequest) -> str:
        return image_data_url(request.image_bytes, max_side=self.max_side)

    def _answer_sample(self, choice: Choice, vocabulary: Vocabulary, usage: Usage) -> Sample:
        def parse(text: str | None) -> tuple[Answer, dict[str, str] | None]:
            return parse_answer(text, vocabulary), None

        return _sample_of("sample", choice, vocabulary, usage, parse, ANSWER_PATH)

    def _verification_sample(self, choice: Choice, vocabulary: Vocabulary, usage: Usage) -> Sample:
        def parse(text: str | None) -> tuple[Answer, dict[str, str] | None]:
            return parse_verification(text, vocabulary)

        return _sample_of("verification", choice, vocabulary, usage, parse, VERIFICATION_PATH)


def _sample_of(
    kind: SampleKind,
    choice: Choice,
    vocabulary: Vocabulary,
    usage: Usage,
    parse: Callable[[str | None], tuple[Answer, dict[str, str] | None]],
    path: tuple[str, ...],
) -> Sample:
    """The sample a choice gives: its answer (and verdict) with the expression's
    soft vote where the reply's log-probabilities give one, or invalid with why."""
    raw = choice.text or choice.refusal or ""
    problem = choice_problem(choice)
    if problem is not None:
        return _invalid(kind, raw, problem, usage)
    try:
        answer, verdict = parse(choice.text)
    except AnswerError as err:
        return _invalid(kind, raw, str(err), usage)
    probs = expression_probs(choice.tokens, vocabulary.expressions, answer.expression, path=path)
    return Sample(
        kind=kind,
        raw=raw,
        answer=answer,
        verdict=verdict,
        usage=usage,
        expression_probs=probs,
        probs_source="logprobs" if probs is not None else None,
    )


def _invalid(kind: SampleKind, raw: str, reason: str, usage: Usage) -> Sample:
    return Sample(kind=kind, raw=raw, error=reason, usage=usage)
