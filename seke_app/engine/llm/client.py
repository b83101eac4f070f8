"""The one place SEKE talks to an OpenAI-compatible vision LLM.

This is the only module that imports ``openai``. It turns a chat request into a
typed ``ChatResult`` (choices, token usage, cost) and turns every failure into a
single ``VLLMError`` that says whether retrying later can help, so that callers
(SV-UAMC, jobs, views) never need to know about HTTP or the SDK's exceptions.

Endpoints differ in what they accept: OpenAI takes ``n`` choices per request,
strict JSON schemas and token log-probabilities; vLLM, Ollama, LM Studio and
proxies accept some, none or all of those. The client starts with the best option,
steps down when the endpoint rejects it with a 400, and remembers what works for
the rest of its life. Log-probabilities are given up first (they only refine the
votes), then ``n``, then the schema. An endpoint that accepts log-probabilities but
returns none (Ollama) is asked again each time: the request is the same either way.
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import httpx2
import openai
from openai.pagination import SyncCursorPage
from openai.types import Batch
from openai.types.chat import ChatCompletion
from PIL import Image, ImageOps, UnidentifiedImageError

from seke_app.engine.llm.logprobs import TokenLogprob
from seke_app.engine.llm.prices import ModelPrice, model_price
from seke_app.engine.types import Usage

log = logging.getLogger(__name__)

# Passed explicitly when the config has no base_url, so that an OPENAI_BASE_URL
# left in the environment cannot silently redirect requests (and the key) elsewhere.
OPENAI_BASE_URL = "https://api.openai.com/v1"

# Error texts that show a 400 was about a parameter the endpoint does not support.
_FORMAT_WORDS = re.compile(r"response_format|json_schema|json_object|structured output", re.I)
_N_WORD = re.compile(r"(?<![\w.-])[`'\"]?n[`'\"]?(?![\w-])")
_LOGPROBS_WORD = re.compile(r"logprobs", re.I)

# OpenAI returns at most 20 alternatives per token.
MAX_TOP_LOGPROBS = 20

# A server's error text goes into exception messages and logs; keep it readable.
_MAX_SERVER_TEXT = 300

_T = TypeVar("_T")

FormatMode = Literal["json_schema", "json_object", "none"]
_FORMAT_FALLBACK: dict[FormatMode, FormatMode] = {
    "json_schema": "json_object",
    "json_object": "none",
}


class VLLMError(Exception):
    """A request to the VLLM failed; ``retryable`` says whether trying later can help.

    ``status`` is the HTTP status of the last response, or None when there was
    none (timeout, connection failure). ``usage`` is what the call had already
    spent when it failed: a call that the client splits into several requests
    (an endpoint without ``n``) may fail after some of them succeeded, and those
    were billed.
    """

    def __init__(
        self, message: str, *, retryable: bool, status: int | None, usage: Usage | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.usage = usage or Usage()

    def __repr__(self) -> str:
        return f"VLLMError({self.message!r}, retryable={self.retryable!r}, status={self.status!r})"


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to call the VLLM; built by the settings layer, never logged whole."""

    base_url: str | None  # None = OpenAI's default
    api_key: str = field(repr=False)
    model: str
    # Applied to each phase of a request (connect, write, each read), not as a
    # total deadline: a server that sends nothing for this long is abandoned.
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_concurrency: int = 4
    prices: Mapping[str, ModelPrice] | None = None  # overrides of prices.DEFAULT_PRICES
    # Total time one call may spend sleeping between retries; past it, give up
    # (retryable) so a job is not stuck for minutes behind a long Retry-After.
    max_total_wait_s: float = 120.0
    # Ask for each token's log-probability and this many alternatives (0: do not
    # ask), so that a sample's expression can count as a soft vote.
    top_logprobs: int = 10
    # What is already known of the endpoint (``manage.py seke_check_endpoint``),
    # so the client starts right instead of learning from 400s. The defaults,
    # unknown and the richest format, keep the stepping down described above.
    supports_n: bool | None = None
    format_mode: FormatMode = "json_schema"
    # Whether replies carry token log-probabilities; None when unknown. A caller
    # that would ask for them reads ``VLLMClient.supports_logprobs`` first.
    supports_logprobs: bool | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("ClientConfig.model must not be empty")
        if self.timeout_s <= 0:
            raise ValueError("ClientConfig.timeout_s must be positive")
        if self.max_retries < 0:
            raise ValueError("ClientConfig.max_retries must not be negative")
        if self.max_concurrency < 1:
            raise ValueError("ClientConfig.max_concurrency must be at least 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.max_total_wait_s < 0:
            raise ValueError("ClientConfig backoff and wait limits must not be negative")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"ClientConfig.top_logprobs must lie in [0, {MAX_TOP_LOGPROBS}]")
        if self.format_mode not in ("json_schema", "json_object", "none"):
            raise ValueError(f"ClientConfig.format_mode {self.format_mode!r} is not a format mode")


@dataclass(frozen=True)
class Choice:
    """One completion as it came back; a refusal or truncation is reported, not raised.

    ``tokens``: the content's tokens with their log-probabilities and top
    alternatives, when the endpoint returned them; None otherwise.
    """

    text: str | None
    refusal: str | None
    finish_reason: str | None
    tokens: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class ChatResult:
    """The choices of one ``chat`` call and what all its requests cost together."""

    choices: list[Choice]
    usage: Usage
    # False when the model is not in the price table: cost_usd is then 0, which
    # means "unknown", not "free" (see ``prices``).
    priced: bool


@dataclass(frozen=True)
class Attempt:
    """One request sent exactly as asked and once, as the endpoint answered it.

    ``status`` is 200 when it was answered, else the HTTP status of the refusal;
    ``error`` is then the server's text. ``logprobs`` says, per choice, whether
    the choice carried token log-probabilities. Made by ``VLLMClient.attempt``
    and ``VLLMClient.attempt_batches`` for finding out what an endpoint accepts.
    """

    status: int
    error: str
    seconds: float
    choices: list[Choice] = field(default_factory=list)
    logprobs: list[bool] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    @property
    def answered(self) -> bool:
        """Answered as asked: a 200 whose body the client could read."""
        return self.status == 200 and not self.error


# The states in which a batch has stopped for good (the Batch API's names).
BATCH_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class BatchState:
    """A batch as the endpoint reports it: its state, files and line counts.

    ``failed`` counts the lines that failed or expired, as the endpoint counts them;
    ``errors`` are the reasons a batch failed as a whole (a malformed input file);
    ``input_file_id`` is the uploaded file the batch answers (None if not said).
    """

    id: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    errors: tuple[str, ...] = ()
    input_file_id: str | None = None

    @property
    def final(self) -> bool:
        return self.status in BATCH_FINAL


def _batch_state(batch: Any) -> BatchState:
    counts = getattr(batch, "request_counts", None)
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return BatchState(
        id=str(batch.id),
        status=str(batch.status),
        output_file_id=getattr(batch, "output_file_id", None),
        error_file_id=getattr(batch, "error_file_id", None),
        total=int(getattr(counts, "total", 0) or 0),
        completed=int(getattr(counts, "completed", 0) or 0),
        failed=int(getattr(counts, "failed", 0) or 0),
        errors=tuple(str(getattr(e, "message", "") or getattr(e, "code", "") or e) for e in errors),
        input_file_id=getattr(batch, "input_file_id", None),
    )


def _metadata_matches(batch: Batch, wanted: Mapping[str, str]) -> bool:
    metadata = batch.metadata or {}
    return all(metadata.get(key) == value for key, value in wanted.items())


def batch_price(
    model: str, overrides: Mapping[str, ModelPrice] | None = None
) -> tuple[float, float] | None:
    """USD per 1M (input, output) tokens for ``model`` through the Batch API, or None
    (the price table's batch prices: half the list price for OpenAI's models)."""
    price = model_price(model, overrides)
    if price is None:
        return None
    return price.batch_input, price.batch_output


def chat_request_body(
    model: str,
    messages: list[dict[str, Any]],
    *,
    n: int,
    temperature: float,
    json_schema: dict[str, Any] | None,
    schema_name: str,
    max_tokens: int,
    mode: FormatMode = "json_schema",
    top_logprobs: int = 0,
) -> dict[str, Any]:
    """The body of one chat-completions request, as ``chat`` sends it and as a batch
    line carries it (``mode`` is the structured-output mode; batches use OpenAI's
    strict JSON schema; ``top_logprobs`` above 0 asks for the tokens' log-probabilities
    with that many alternatives each)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        # max_tokens rather than max_completion_tokens: every
        # OpenAI-compatible server we target understands it.
        "max_tokens": max_tokens,
    }
    if n > 1:
        body["n"] = n
    if top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = top_logprobs
    response_format = _response_format(
        mode if json_schema is not None else "none", json_schema, schema_name
    )
    if response_format is not None:
        body["response_format"] = response_format
    return body


def completion_usage(
    completion: ChatCompletion, price: ModelPrice | None, *, batch: bool = False
) -> Usage:
    """What one answered request billed, priced at ``price`` (cost 0 when None)."""
    raw_usage = getattr(completion, "usage", None)
    prompt = int(getattr(raw_usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(raw_usage, "completion_tokens", 0) or 0)
    cost = 0.0
    if price is not None:
        cost = price.cost(prompt, completion_tokens, batch=batch)
    return Usage(
        requests=1, prompt_tokens=prompt, completion_tokens=completion_tokens, cost_usd=cost
    )


def parse_completion(
    completion: ChatCompletion, price: ModelPrice | None, *, batch: bool = False
) -> tuple[list[Choice], Usage]:
    """The choices of one answered request and its usage, priced at ``price`` (its
    Batch API prices with ``batch``; None: unpriced, cost 0). Raises ``VLLMError``
    (retryable) for a completion without choices, with the usage it billed."""
    usage = completion_usage(completion, price, batch=batch)
    raw_choices = getattr(completion, "choices", None) or []
    if not raw_choices:
        raise VLLMError("the VLLM returned no choices", retryable=True, status=200, usage=usage)
    choices = []
    for raw in sorted(raw_choices, key=lambda c: getattr(c, "index", 0) or 0):
        message = getattr(raw, "message", None)
        choices.append(
            Choice(
                text=getattr(message, "content", None),
                refusal=getattr(message, "refusal", None),
                finish_reason=getattr(raw, "finish_reason", None),
                tokens=_tokens(getattr(raw, "logprobs", None)),
            )
        )
    return choices, usage


def retry_after_seconds(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """The wait a 429/503 response asks for, or None when it does not say.

    ``retry-after-ms`` (OpenAI's finer header) wins over ``Retry-After``, which
    may be seconds or an HTTP date.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class VLLMClient:
    """A thread-safe client for one model on one OpenAI-compatible endpoint."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        http_client: httpx2.Client | None = None,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._owns_http_client = http_client is None
        self._random = random.Random()
        self._semaphore = threading.BoundedSemaphore(config.max_concurrency)
        self._lock = threading.Lock()
        self._supports_n: bool | None = config.supports_n
        self._format_mode: FormatMode = config.format_mode
        # An endpoint found not to give log-probabilities is not asked for them.
        self._top_logprobs = 0 if config.supports_logprobs is False else config.top_logprobs
        self._price = model_price(config.model, config.prices)
        # Retries are ours alone (max_retries=0): the SDK's would hide waits from
        # the injected sleep, double the retry budget and ignore max_total_wait_s.
        self._openai = openai.OpenAI(
            api_key=config.api_key,
            base_url=config.base_url or OPENAI_BASE_URL,
            timeout=config.timeout_s,
            max_retries=0,
            http_client=http_client,
        )

    def __repr__(self) -> str:
        return f"VLLMClient(model={self._config.model!r}, base_url={self._config.base_url!r})"

    def __enter__(self) -> VLLMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool, unless the caller passed its own http_client."""
        if self._owns_http_client:
            self._openai.close()

    @property
    def closed(self) -> bool:
        """Whether the connection pool is closed: then every call fails at once."""
        return self._openai.is_closed()

    @property
    def model(self) -> str:
        return self._config.model

    @property
    def priced(self) -> bool:
        """Whether the model's price is known, so that cost_usd means what it says."""
        return self._price is not None

    @property
    def supports_n(self) -> bool | None:
        """Whether the endpoint returns several choices per request; None until known."""
        return self._supports_n

    @property
    def top_logprobs(self) -> int:
        """How many alternatives per token are asked for; 0 when log-probabilities
        are not asked for (turned off, or rejected by the endpoint)."""
        return self._top_logprobs

    @property
    def response_format_mode(self) -> FormatMode:
        """The structured-output mode currently used for calls with a schema."""
        return self._format_mode

    @property
    def supports_logprobs(self) -> bool | None:
        """Whether the endpoint's replies carry token log-probabilities; None when unknown."""
        return self._config.supports_logprobs

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "seke_answer",
        max_tokens: int = 800,
    ) -> ChatResult:
        """Ask for ``n`` completions of ``messages``; raises only ``VLLMError``.

        With a ``json_schema`` the reply is constrained as strictly as the endpoint
        allows; without one no response_format is sent (the prompt carries the
        format instructions).
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        if self.closed:
            # Otherwise the SDK reports a closed pool as a connection failure, which
            # would be retried with backoff as if the endpoint were down.
            raise VLLMError("the VLLM client has been closed", retryable=False, status=None)
        choices: list[Choice] = []
        usage = Usage()
        while len(choices) < n:
            wanted = n - len(choices)
            batch = wanted if wanted > 1 and self._supports_n is not False else 1
            try:
                got, batch_usage = self._request(
                    messages, batch, temperature, json_schema, schema_name, max_tokens
                )
            except VLLMError as err:
                err.usage = usage + err.usage
                raise
            usage = usage + batch_usage
            if batch > 1:
                # An endpoint that ignores n (Ollama, some proxies) answers with one
                # choice; asking it again for n would waste a request per call.
                self._remember_n(len(got) >= batch)
            choices.extend(got[:wanted])
        return ChatResult(choices=choices, usage=usage, priced=self._price is not None)

    def attempt(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        n: int = 1,
        response_format: dict[str, Any] | None = None,
        top_logprobs: int | None = None,
    ) -> Attempt:
        """Send one chat request as given, with no stepping down, and report the answer.

        A refusal of the request (any 4xx but 401/403) is returned, not raised: it
        is the answer to "does the endpoint take this?". ``VLLMError`` is raised
        when the endpoint refused the credentials or gave no answer (timeout,
        connection failure, 429 or 5xx after the config's retries). With
        ``top_logprobs`` the request asks for log-probabilities with that many
        alternatives per token.
        """
        if self.closed:
            raise VLLMError("the VLLM client has been closed", retryable=False, status=None)
        params: dict[str, Any] = {
            "model": self._config.model,
            "messages": messages,
            "max_tokens": max_tokens,
        }
        if n != 1:
            params["n"] = n
        if response_format is not None:
            params["response_format"] = response_format
        if top_logprobs is not None:
            params.update(logprobs=True, top_logprobs=top_logprobs)
        started = time.perf_counter()
        try:
            completion = self._create_with_retries(params)
        except _BadRequest as err:
            return Attempt(400, err.text, time.perf_counter() - started)
        except VLLMError as err:
            if err.retryable or err.status is None or err.status in (401, 403):
                raise
            return Attempt(err.status, err.message, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        raw_choices = sorted(
            getattr(completion, "choices", None) or [], key=lambda c: getattr(c, "index", 0) or 0
        )
        choices, usage = (
            self._parse(completion)
            if raw_choices
            else ([], completion_usage(completion, self._price))
        )
        logprobs = [_has_logprobs(c) for c in raw_choices]
        return Attempt(200, "", seconds, choices, logprobs, usage)

    def attempt_batches(self) -> Attempt:
        """``GET /batches?limit=1`` (list the newest batch; nothing is created).

        200 means the endpoint serves OpenAI's Batch API; any other status is
        returned with the server's text. ``VLLMError`` (retryable) when there was
        no answer at all.
        """
        if self.closed:
            raise VLLMError("the VLLM client has been closed", retryable=False, status=None)
        started = time.perf_counter()
        try:
            with self._semaphore:
                self._openai.batches.list(limit=1, timeout=self._config.timeout_s)
        except openai.APIStatusError as err:
            text = self._scrub(_server_text(err))
            return Attempt(err.status_code, text, time.perf_counter() - started)
        except openai.APITimeoutError:
            raise VLLMError(
                f"no response within {self._config.timeout_s:g} s", retryable=True, status=None
            ) from None
        except openai.APIConnectionError:
            raise VLLMError(
                "could not connect to the VLLM endpoint", retryable=True, status=None
            ) from None
        except openai.OpenAIError as err:
            # A 200 whose body is not a list of batches (a catch-all page of a proxy).
            text = f"unexpected reply: {self._scrub(str(err))}"
            return Attempt(200, text, time.perf_counter() - started)
        return Attempt(200, "", time.perf_counter() - started)

    def _remember_n(self, supported: bool) -> None:
        with self._lock:
            if self._supports_n is not False:
                self._supports_n = supported

    def _request(
        self,
        messages: list[dict[str, Any]],
        n: int,
        temperature: float,
        json_schema: dict[str, Any] | None,
        schema_name: str,
        max_tokens: int,
    ) -> tuple[list[Choice], Usage]:
        """One logical request, stepping down on a 400 about log-probabilities, ``n``
        or the format."""
        while True:
            mode = self._format_mode if json_schema is not None else "none"
            top_logprobs = self._top_logprobs
            params = chat_request_body(
                self._config.model,
                messages,
                n=n,
                temperature=temperature,
                json_schema=json_schema,
                schema_name=schema_name,
                max_tokens=max_tokens,
                mode=mode,
                top_logprobs=top_logprobs,
            )
            try:
                completion = self._create_with_retries(params)
            except _BadRequest as err:
                if top_logprobs > 0 and err.about_logprobs():
                    self._stop_logprobs()
                    continue
                if n > 1 and err.about_n():
                    log.info("endpoint rejected n=%d; using single requests", n)
                    self._remember_n(False)
                    n = 1
                    continue
                if mode != "none" and err.about_format():
                    self._step_down_format(mode)
                    continue
                raise VLLMError(
                    f"the VLLM rejected the request (400): {err.text}", retryable=False, status=400
                ) from None
            return self._parse(completion)

    # -- the Batch API ---------------------------------------------------------

    def batch_result(self, body: dict[str, Any], n: int) -> ChatResult:
        """The result of one batch line's completion (its ``response.body``), parsed
        as ``chat`` parses a reply and priced at the model's Batch API prices;
        at most ``n`` choices are kept. Raises ``VLLMError`` when the body is not a
        chat completion or has no choices."""
        try:
            completion = ChatCompletion.model_validate(body)
        except ValueError as err:
            raise VLLMError(
                f"a batch line is not a chat completion: {self._scrub(str(err))}",
                retryable=True,
                status=200,
            ) from None
        choices, usage = parse_completion(completion, self._price, batch=True)
        return ChatResult(choices=choices[:n], usage=usage, priced=self._price is not None)

    def batch_upload(self, lines: bytes, *, filename: str) -> str:
        """Upload a batch's JSONL input (``purpose="batch"``); return the file's id."""
        uploaded = self._batch_call(
            lambda: self._openai.files.create(file=(filename, lines), purpose="batch")
        )
        return str(uploaded.id)

    def batch_create(self, input_file_id: str, *, metadata: dict[str, str]) -> BatchState:
        """Create a batch of chat completions over an uploaded input file (24 h window).

        Sent once, never retried: a request that timed out or met a 5xx may still
        have created the batch, and a second one would be paid for again. The
        caller finds such a batch by its ``metadata`` (``batch_find``).
        """
        batch = self._batch_call(
            lambda: self._openai.batches.create(
                input_file_id=input_file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=metadata,
            ),
            retry=False,
        )
        return _batch_state(batch)

    def batch_retrieve(self, batch_id: str) -> BatchState:
        return _batch_state(self._batch_call(lambda: self._openai.batches.retrieve(batch_id)))

    def batch_find(
        self,
        metadata: Mapping[str, str],
        *,
        created_after: datetime | int | None = None,
        max_pages: int = 5,
    ) -> BatchState | None:
        """The newest batch whose metadata holds every key and value of ``metadata``,
        or None.

        This finds a batch that was created but whose id its creator never stored
        (its job died in between). The endpoint lists batches newest first, a page
        of up to 100 at a time; the search stops after ``max_pages`` pages, or at the
        first batch created before ``created_after`` (a datetime, or Unix seconds as
        the endpoint gives them), since every later one is older still.
        """
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        oldest = created_after.timestamp() if isinstance(created_after, datetime) else created_after
        after: str | None = None
        for _ in range(max_pages):
            page = self._batch_page(after)
            for batch in page.data:
                if oldest is not None and int(batch.created_at) < oldest:
                    return None
                if _metadata_matches(batch, metadata):
                    return _batch_state(batch)
            if not page.data or page.has_more is False:
                return None
            after = str(page.data[-1].id)
        return None

    def _batch_page(self, after: str | None) -> SyncCursorPage[Batch]:
        """One page of the endpoint's batches, newest first, after the ``after`` one."""
        cursor = openai.omit if after is None else after
        return self._batch_call(lambda: self._openai.batches.list(limit=100, after=cursor))

    def batch_cancel(self, batch_id: str) -> BatchState:
        return _batch_state(self._batch_call(lambda: self._openai.batches.cancel(batch_id)))

    def file_text(self, file_id: str) -> str:
        """The content of a file (a batch's output or error file)."""
        return self._batch_call(lambda: self._openai.files.content(file_id)).text

    def _batch_call(self, call: Callable[[], _T], *, retry: bool = True) -> _T:
        if self.closed:
            raise VLLMError("the VLLM client has been closed", retryable=False, status=None)
        try:
            return self._with_retries(call, max_retries=None if retry else 0)
        except _BadRequest as err:
            raise VLLMError(
                f"the endpoint rejected the batch request (400): {err.text}",
                retryable=False,
                status=400,
            ) from None

    def _stop_logprobs(self) -> None:
        with self._lock:
            if self._top_logprobs:
                log.info("endpoint rejected logprobs; asking without them")
            self._top_logprobs = 0

    def _step_down_format(self, rejected: FormatMode) -> None:
        with self._lock:
            # Another thread may already have stepped down past this mode.
            if self._format_mode == rejected:
                self._format_mode = _FORMAT_FALLBACK[rejected]
                log.info(
                    "endpoint rejected response_format %s; using %s",
                    rejected,
                    self._format_mode,
                )

    def _create_with_retries(self, params: dict[str, Any]) -> ChatCompletion:
        """Send one request, retrying 429, 5xx, timeouts and connection failures."""

        def create() -> ChatCompletion:
            completion: ChatCompletion = self._openai.chat.completions.create(
                **params, timeout=self._config.timeout_s
            )
            return completion

        return self._with_retries(create)

    def _with_retries(self, call: Callable[[], _T], *, max_retries: int | None = None) -> _T:
        """Make one SDK call, retrying 429, 5xx, timeouts and connection failures (at
        most ``max_retries`` times; the config's number when None)."""
        retries = self._config.max_retries if max_retries is None else max_retries
        attempt = 0
        waited = 0.0
        while True:
            try:
                with self._semaphore:
                    return call()
            except openai.APIStatusError as err:
                failure = self._classify_status(err)
            except openai.APITimeoutError:
                failure = _Failure(f"no response within {self._config.timeout_s:g} s", None, None)
            except openai.APIConnectionError:
                failure = _Failure("could not connect to the VLLM endpoint", None, None)
            except openai.OpenAIError as err:
                # Anything else from the SDK (an unparseable body, ...) is a
                # problem with this endpoint that waiting will not fix.
                raise VLLMError(
                    f"unexpected reply from the VLLM: {self._scrub(str(err))}",
                    retryable=False,
                    status=None,
                ) from None
            delay = self._next_delay(attempt, failure.retry_after)
            out_of_budget = waited + delay > self._config.max_total_wait_s
            if attempt >= retries or out_of_budget:
                raise VLLMError(
                    f"{failure.text}; gave up after {attempt + 1} attempt(s)",
                    retryable=True,
                    status=failure.status,
                ) from None
            log.warning(
                "VLLM request failed (%s); retry %d of %d in %.2f s",
                failure.text,
                attempt + 1,
                retries,
                delay,
            )
            self._sleep(delay)
            waited += delay
            attempt += 1

    def _classify_status(self, err: openai.APIStatusError) -> _Failure:
        """Return a retryable failure, or raise for statuses retrying cannot fix."""
        status = err.status_code
        text = self._scrub(_server_text(err))
        if status == 400:
            raise _BadRequest(text, _server_param(err)) from None
        if status in (401, 403):
            raise VLLMError(
                f"the VLLM endpoint refused the credentials ({status}): {text}",
                retryable=False,
                status=status,
            ) from None
        if status in (408, 429) or status >= 500:
            wait = retry_after_seconds(err.response.headers)
            return _Failure(f"HTTP {status}: {text}", status, wait)
        raise VLLMError(
            f"the VLLM rejected the request ({status}): {text}", retryable=False, status=status
        ) from None

    def _next_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        # Exponential backoff with "equal jitter": never less than half the step,
        # so retries from many workers spread out without hammering immediately.
        step = min(self._config.backoff_max_s, self._config.backoff_base_s * 2.0**attempt)
        return step / 2.0 + self._random.uniform(0.0, step / 2.0)

    def _parse(self, completion: ChatCompletion) -> tuple[list[Choice], Usage]:
        return parse_completion(completion, self._price)

    def _scrub(self, text: str) -> str:
        # Some proxies echo the presented key in their 401 text; it must never
        # reach an exception, a log line or the database.
        key = self._config.api_key
        if key:
            text = text.replace(key, "***")
        if len(text) > _MAX_SERVER_TEXT:
            text = text[:_MAX_SERVER_TEXT] + "..."
        return text


@dataclass(frozen=True)
class _Failure:
    """A failed attempt that another attempt may fix."""

    text: str
    status: int | None
    retry_after: float | None


class _BadRequest(Exception):
    """A 400, kept apart so ``_request`` can decide whether to step down."""

    def __init__(self, text: str, param: str | None) -> None:
        super().__init__(text)
        self.text = text
        self.param = param

    def about_format(self) -> bool:
        if self.param is not None and self.param.startswith("response_format"):
            return True
        return bool(_FORMAT_WORDS.search(self.text))

    def about_logprobs(self) -> bool:
        if self.param is not None:
            return self.param in ("logprobs", "top_logprobs")
        return bool(_LOGPROBS_WORD.search(self.text))

    def about_n(self) -> bool:
        if self.param is not None:
            return self.param == "n"
        # A message that names the format is about the format even if it also
        # mentions n; dropping the schema first keeps the cheaper option (n).
        return not _FORMAT_WORDS.search(self.text) and bool(_N_WORD.search(self.text))


def _tokens(logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    """The content's tokens from a choice's ``logprobs``; None when it has none."""
    content = getattr(logprobs, "content", None)
    if not content:
        return None
    tokens = []
    for entry in content:
        token, logprob = getattr(entry, "token", None), getattr(entry, "logprob", None)
        if not isinstance(token, str) or not isinstance(logprob, int | float):
            return None
        top = tuple(
            (alt.token, float(alt.logprob))
            for alt in getattr(entry, "top_logprobs", None) or []
            if isinstance(getattr(alt, "token", None), str)
            and isinstance(getattr(alt, "logprob", None), int | float)
        )
        tokens.append(TokenLogprob(token, float(logprob), top))
    return tuple(tokens)


def _has_logprobs(choice: object) -> bool:
    """Whether a completion's choice carries per-token log-probabilities."""
    return bool(getattr(getattr(choice, "logprobs", None), "content", None))


def _server_text(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body:
        return body
    return err.message


def _server_param(err: openai.APIStatusError) -> str | None:
    body = err.body
    if isinstance(body, dict) and isinstance(body.get("param"), str):
        return str(body["param"])
    return None


def _response_format(
    mode: FormatMode, json_schema: dict[str, Any] | None, schema_name: str
) -> dict[str, Any] | None:
    if json_schema is None or mode == "none":
        return None
    if mode == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": schema_name, "schema": json_schema, "strict": True},
    }


def image_data_url(image_bytes: bytes, *, max_side: int = 512, quality: int = 85) -> str:
    """A base64 JPEG data URL of the image, upright and no larger than ``max_side``.

    Downscaling before upload bounds the image's input tokens (a 512-px side is
    one tile for GPT-4o) and the request size; EXIF orientation is applied because
    the model sees pixels, not the camera's rotation tag.
    """
    if max_side < 1:
        raise ValueError("max_side must be at least 1")
    try:
        with Image.open(io.BytesIO(image_bytes)) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"not a readable image: {err}") from None
    image = _to_rgb(image)
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, math.floor(image.width * scale)), max(1, math.floor(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _to_rgb(image: Image.Image) -> Image.Image:
    # Transparent areas become white, not the black a bare convert("RGB") gives.
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
