"""A fake OpenAI-compatible chat-completions server for tests and benchmarks.

It listens on 127.0.0.1 only, answers ``POST /v1/chat/completions`` (and
``/chat/completions``) the way OpenAI does, counts tokens the way GPT-4o bills
them, and can be scripted to fail: rate limits, server errors, hangs, refusals,
malformed or truncated content, out-of-range values, unknown AU names. Tests
drive the real ``openai`` package against it, so what is tested is what runs.

Use the ``fake_openai`` fixture, or ``with FakeOpenAI() as server:``; point a
client at ``server.base_url``. Script faults with ``server.script("429", "500")``
or ``server.script(Fault("429", retry_after=2))``: each request consumes the next
fault in order, and requests after the script is exhausted are answered normally
(``Fault("hang", hang_s=0)`` answers one request normally, to place later faults).

Capability switches make it lack what some servers lack: ``reject_images`` (400
on image content), ``reject_n`` / ``ignore_n``, ``reject_json_schema`` /
``reject_json_object`` (400 about response_format), ``reject_logprobs`` (400) or
``ignore_logprobs`` (accepted, none sent; see "Token log-probabilities" below),
and ``batch`` (on: the Batch API below; off: 404 on every Batch API path).

``server.billed`` is what the server would bill, counted the way OpenAI bills:
every request answered with a completion (HTTP 200, with its token usage),
whether or not the client was still waiting for it; errors bill nothing. A batch
line answered with a completion counts as a request too (the Batch API bills it
at half price; pricing is the client's business, not the server's).
``server.billed_for(model)`` is the same for the requests that named ``model``.

One server can play several models: ``by_model({"cheap": r1, "strong": r2})``
is a responder that answers each request with the responder of the model it
names (and fails the request, as a broken responder does, for any other model);
``image_url(body)`` is the image a request shows, to answer per image.

The Batch API (a separate block below): ``POST /v1/files`` (multipart upload,
``purpose=batch``), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel`` and ``GET /v1/batches``
(the batches newest first, in OpenAI's list shape, ``limit`` and ``after``
honoured, at most ``server.batches.page_size`` a page; ``GET /v1/files`` answers an
empty list). ``server.batches.backdate(id, seconds)`` moves a batch's
``created_at`` back, to stand for a batch created earlier. A batch's lines are
answered, when it is first retrieved after its plan's ``in_progress`` retrieves,
by the same ``handle`` as chat completions, so the responder and scripted faults
apply to them in order. ``server.batches.script(BatchPlan(...))`` plans the next
created batches: stay in progress for some retrieves, fail or expire given lines
(by position in the input file), or fail as a whole. A cancelled batch answers
no line.


Token log-probabilities: a request with ``logprobs`` true gets, per choice,
``logprobs.content`` shaped like OpenAI's (``token``, ``logprob``, ``bytes``,
``top_logprobs`` with ``top_logprobs`` entries). The content is cut into tokens of
1 to 4 characters at seeded random places, inside keys and values too. At the
first token of the top-level expression value (the last ``"expression": "<one of
SEKE's expressions>"``, so the answer's, not the evidence's) the alternatives come
from ``server.expression_logprobs``: a mapping of expression names to
log-probabilities, or a callable ``(body, index) -> mapping or None``. Each name
gives the token its first characters make (as many as the chosen token has, after
the opening quote when the token carries it); names giving the same token add up,
and a name outside the vocabulary gives a token that names no class; when names
share the chosen token, the next token's alternatives are their continuations with
their conditional probabilities. Where the callable returns None, and at every
other position, the chosen token is the only alternative, with log-probability 0.
Without ``expression_logprobs`` the server answers ``"logprobs": null`` (as an
endpoint without them does), so that tests about other things see replies
without soft votes. ``reject_logprobs`` answers such requests with OpenAI's
400 for an unsupported parameter; ``ignore_logprobs`` returns ``"logprobs": null``
as Ollama does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import io
import json
import math
import random
import re
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image, UnidentifiedImageError

from seke_app.engine.vocab import EXPRESSIONS, FEID_AUS

# (parsed request body, choice index) -> the assistant message's content.
Responder = Callable[[dict[str, Any], int], str]
# Log-probabilities at the expression value's first token, fixed or per choice.
ExpressionLogprobs = (
    dict[str, float] | Callable[[dict[str, Any], int], dict[str, float] | None] | None
)

CONTENT_FAULTS = ("malformed", "refusal", "out_of_range", "wrong_aus", "length", "content_filter")
FAULT_KINDS = ("429", "500", "503", "401", "hang", *CONTENT_FAULTS)

# A hang never outlasts this, so a forgotten fault cannot stall the test run.
MAX_HANG_S = 5.0
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
MALFORMED_TEXT = "Sure! The person looks happy. expression: happiness, valence: high"

# The answer the default responder gives when the request carries no schema.
FIXED_ANSWER: dict[str, Any] = {
    "expression": "happiness",
    "valence": 0.6,
    "arousal": 0.2,
    "aus": {str(au): au in (6, 12) for au in FEID_AUS},
    "au_intensity": {"6": "B", "12": "C"},
    "evidence": {
        "expression": "The mouth corners are pulled up and the cheeks are raised.",
        "valence_arousal": "A pleasant, calm smile.",
        "aus": "AU6 and AU12 are visible; no brow action.",
    },
}
_KNOWN_VALUES: dict[str, Any] = {
    "expression": "happiness",
    "valence": 0.6,
    "arousal": 0.2,
}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by one request.

    ``kind`` is an HTTP status ("429", "500", "503", "401", or any other status
    code as digits), "hang", or a content fault (see ``CONTENT_FAULTS``).
    ``retry_after`` / ``retry_after_ms`` set the headers of a 429 or 503 (None
    leaves the header out). ``choice`` limits a content fault to one choice index.
    """

    kind: str
    retry_after: float | None = 1.0
    retry_after_ms: float | None = None
    hang_s: float = 2.0
    choice: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS and not self.kind.isdigit():
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")


class _Server(ThreadingHTTPServer):
    # Many clients connect at once in benchmarks (concurrency 16 per worker); the
    # standard backlog of 5 would drop connections and measure this fake, not SEKE.
    request_queue_size = 128
    daemon_threads = True


@dataclass(frozen=True)
class Billed:
    """Requests answered with a completion, and their tokens."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class CapturedRequest:
    """What the server received; the Authorization value is never kept."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)


class FakeOpenAI:
    """The server; its switches may be flipped while it runs."""

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        api_key: str | None = None,
        reject_n: bool = False,
        ignore_n: bool = False,
        reject_json_schema: bool = False,
        reject_json_object: bool = False,
        latency_s: float = 0.0,
        expression_logprobs: ExpressionLogprobs = None,
        reject_images: bool = False,
        reject_logprobs: bool = False,
        ignore_logprobs: bool = False,
        batch: bool = True,
    ) -> None:
        self.responder: Responder = responder or default_responder
        # When set, requests must present this key or get a 401.
        self.api_key = api_key
        self.reject_n = reject_n  # 400 on n > 1, like several self-hosted servers
        self.ignore_n = ignore_n  # one choice whatever n says, like Ollama
        self.reject_json_schema = reject_json_schema
        self.reject_json_object = reject_json_object
        self.latency_s = latency_s
        self.expression_logprobs = expression_logprobs
        self.reject_logprobs = reject_logprobs  # 400 on logprobs, like models without them
        self.ignore_logprobs = ignore_logprobs  # "logprobs": null, like Ollama
        self.reject_images = reject_images  # 400 on image content, like a text-only model
        self.batch = batch  # serves the Batch API (GET lists too); 404 there when off
        self.errors: list[str] = []
        self._faults: deque[Fault] = deque()
        self._requests: list[CapturedRequest] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._max_in_flight = 0
        self._billed = Billed()
        self._billed_by_model: dict[str, Billed] = {}
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batches = _Batches(self)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeOpenAI:
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        # Wake hanging handlers first, then close kept-alive connections so no
        # handler thread outlives the server waiting for a next request.
        self._stop.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake server is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting and inspection -----------------------------------------

    def point(self, settings: Any, *, max_retries: int = 1) -> None:
        """Point SEKE's settings (pytest-django's ``settings``) at this server: its
        URL, a test key, short timeouts, ``max_retries`` and no rate limits."""
        settings.OPENAI_API_KEY = "sk-test-key"
        settings.OPENAI_BASE_URL = self.base_url
        settings.OPENAI_TIMEOUT = 2.0
        settings.OPENAI_MAX_RETRIES = max_retries
        settings.OPENAI_RPM = 0
        settings.OPENAI_TPM = 0

    def script(self, *faults: Fault | str) -> None:
        """Queue faults; each request consumes the next one."""
        with self._lock:
            self._faults.extend(f if isinstance(f, Fault) else Fault(f) for f in faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    @property
    def requests(self) -> list[CapturedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def billed(self) -> Billed:
        """What the completions served so far would be billed."""
        with self._lock:
            return self._billed

    def billed_for(self, model: str) -> Billed:
        """What the completions served so far to requests naming ``model`` would be billed."""
        with self._lock:
            return self._billed_by_model.get(model, Billed())

    @property
    def in_flight(self) -> int:
        """Requests being handled now (received, not yet answered)."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being handled at the same moment."""
        with self._lock:
            return self._max_in_flight

    # -- request handling (called from handler threads) --------------------

    def _record(self, request: CapturedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)

    def handle(self, body: dict[str, Any], authorization: str | None) -> _Reply:
        """Decide the reply to one chat-completions request."""
        self._wait(self.latency_s)
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            presented = (authorization or "").removeprefix("Bearer ")
            # Echoing the presented key is deliberate: some proxies do, and the
            # client must keep it out of its errors anyway.
            return _error(401, f"Incorrect API key provided: {presented}.", "invalid_api_key")
        rejection = self._rejection(body)
        if rejection is not None:
            return rejection
        fault = self._next_fault()
        if fault is not None and fault.kind.isdigit():
            return _status_fault(fault)
        if fault is not None and fault.kind == "hang":
            self._wait(min(fault.hang_s, MAX_HANG_S))
            fault = None
        return self._completion(body, fault)

    def _rejection(self, body: dict[str, Any]) -> _Reply | None:
        if self.reject_images and _has_image(body):
            return _error(400, "This model does not support image inputs.", None)
        if self.reject_logprobs and body.get("logprobs"):
            return _error(
                400,
                "Unsupported parameter: 'logprobs' is not supported with this model.",
                "unsupported_parameter",
                param="logprobs",
            )
        n = int(body.get("n") or 1)
        if self.reject_n and n > 1:
            return _error(400, "Only n=1 is supported by this server.", None)
        kind = (body.get("response_format") or {}).get("type")
        if (kind == "json_schema" and self.reject_json_schema) or (
            kind == "json_object" and self.reject_json_object
        ):
            return _error(400, f"response_format type '{kind}' is not supported.", None)
        return None

    def _completion(self, body: dict[str, Any], fault: Fault | None) -> _Reply:
        n = 1 if self.ignore_n else int(body.get("n") or 1)
        choices = []
        completion_tokens = 0
        for index in range(n):
            applies = fault is not None and fault.choice in (None, index)
            kind = fault.kind if fault is not None and applies else None
            try:
                content = self.responder(body, index)
            except Exception as err:  # a broken responder is a test bug: report it
                self.errors.append(f"responder failed: {err!r}")
                return _error(500, f"responder failed: {err!r}", None)
            message, finish = _apply_content_fault(content, kind)
            completion_tokens += _text_tokens(message["content"] or message["refusal"] or "")
            logprobs = None
            wanted = body.get("logprobs") and self.expression_logprobs is not None
            if wanted and not self.ignore_logprobs and message["content"]:
                logprobs = self._logprobs(body, index, message["content"])
            choices.append(
                {"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs}
            )
        prompt_tokens = prompt_tokens_for(body)
        model = str(body.get("model", ""))
        with self._lock:
            self._billed = _plus(self._billed, prompt_tokens, completion_tokens)
            self._billed_by_model[model] = _plus(
                self._billed_by_model.get(model, Billed()), prompt_tokens, completion_tokens
            )
        payload = {
            "id": f"chatcmpl-fake{self.request_count}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_fake",
        }
        return _Reply(200, payload, {})

    def _logprobs(self, body: dict[str, Any], index: int, content: str) -> dict[str, Any]:
        source = self.expression_logprobs
        at_value = source(body, index) if callable(source) else source
        top_n = int(body.get("top_logprobs") or 0)
        return {"content": token_logprobs(content, at_value, top_n, seed=index), "refusal": None}

    def handle_list(self, path: str, query: str, authorization: str | None) -> _Reply:
        """The answer to ``GET /v1/batches`` (a page of the batches, newest first) or
        ``GET /v1/files`` (an empty list)."""
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if not self.batch:
            return _error(404, f"Unknown path {path}", None)
        if "/batches" in path:
            return self.batches.listed(urllib.parse.parse_qs(query))
        return _Reply(200, {"object": "list", "data": [], "has_more": False}, {})


def _plus(billed: Billed, prompt_tokens: int, completion_tokens: int) -> Billed:
    return Billed(
        requests=billed.requests + 1,
        prompt_tokens=billed.prompt_tokens + prompt_tokens,
        completion_tokens=billed.completion_tokens + completion_tokens,
    )


@dataclass(frozen=True)
class _Reply:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str]
    # Sent as is instead of the JSON payload (a file's content).
    raw: bytes | None = None


def _error(status: int, message: str, code: str | None, *, param: str | None = None) -> _Reply:
    kind = "invalid_request_error" if status < 500 else "server_error"
    payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return _Reply(status, payload, {})


def _status_fault(fault: Fault) -> _Reply:
    status = int(fault.kind)
    headers: dict[str, str] = {}
    if status in (429, 503):
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{fault.retry_after_ms:g}"
    messages = {
        401: ("Incorrect API key provided.", "invalid_api_key"),
        429: ("Rate limit reached for requests. Please try again later.", "rate_limit_exceeded"),
        500: ("The server had an error while processing your request.", None),
        503: ("The engine is currently overloaded, please try again later.", None),
    }
    message, code = messages.get(status, (f"Scripted HTTP {status}.", None))
    reply = _error(status, message, code)
    return _Reply(reply.status, reply.payload, headers)


def _apply_content_fault(content: str, kind: str | None) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason for one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if kind == "malformed":
        message["content"] = MALFORMED_TEXT
    elif kind == "refusal":
        message.update(content=None, refusal=REFUSAL_TEXT)
    elif kind == "content_filter":
        message["content"] = None
        return message, "content_filter"
    elif kind == "length":
        message["content"] = content[: max(1, len(content) // 2)]
        return message, "length"
    elif kind in ("out_of_range", "wrong_aus"):
        message["content"] = json.dumps(_corrupt(_parsed_or_fixed(content), kind))
    return message, "stop"


def _parsed_or_fixed(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return json.loads(json.dumps(FIXED_ANSWER))


def _corrupt(value: Any, kind: str) -> Any:
    """Break every valence/arousal (out_of_range) or AU map (wrong_aus) in an answer."""
    if isinstance(value, list):
        return [_corrupt(v, kind) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if kind == "out_of_range" and key == "valence":
            out[key] = 1.7
        elif kind == "out_of_range" and key == "arousal":
            out[key] = -1.4
        elif kind == "wrong_aus" and key == "aus":
            out[key] = {"AU12": True, "smile": True, "99": True}
        else:
            out[key] = _corrupt(item, kind)
    return out


def _has_image(body: dict[str, Any]) -> bool:
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            return True
    return False


# -- the default responder ---------------------------------------------------


def default_responder(body: dict[str, Any], index: int) -> str:
    """A valid SEKE answer, shaped by the request's JSON schema when it has one."""
    del index  # every choice gets the same answer
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if isinstance(schema, dict) and schema.get("properties"):
        return json.dumps(answer_for_schema(schema))
    return json.dumps(FIXED_ANSWER)


def by_model(responders: Mapping[str, Responder]) -> Responder:
    """A responder that answers as the responder of the model the request names."""

    def respond(body: dict[str, Any], index: int) -> str:
        model = str(body.get("model", ""))
        if model not in responders:
            raise ValueError(f"no responder for model {model!r}")
        return responders[model](body, index)

    return respond


def image_url(body: dict[str, Any]) -> str:
    """The (last) image a request shows, as the data URL it was sent as."""
    for message in reversed(body.get("messages") or []):
        content = message.get("content")
        for part in reversed(content) if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                return str((part.get("image_url") or {}).get("url", ""))
    raise ValueError("the request shows no image")


def answer_for_schema(schema: dict[str, Any], name: str = "") -> Any:
    """A value valid for ``schema``, with SEKE's fixed answer for the names it knows."""
    schema = _first_variant(schema)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    enum = schema.get("enum")
    if name in _KNOWN_VALUES and not enum:
        return _KNOWN_VALUES[name]
    if enum:
        preferred = _KNOWN_VALUES.get(name)
        return preferred if preferred in enum else enum[0]
    if kind == "object" or "properties" in schema:
        return _object_for_schema(schema, name)
    if kind == "array":
        return []
    if kind in ("number", "integer"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return f"fake {name or 'text'}"


def _object_for_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    if not properties and name in FIXED_ANSWER and isinstance(FIXED_ANSWER[name], dict):
        return dict(FIXED_ANSWER[name])
    if name == "aus":
        return {key: key.removeprefix("AU") in ("6", "12") for key in properties}
    return {key: answer_for_schema(sub, key) for key, sub in properties.items()}


def _first_variant(schema: dict[str, Any]) -> dict[str, Any]:
    for combinator in ("anyOf", "oneOf"):
        variants = schema.get(combinator)
        if variants:
            non_null = [v for v in variants if v.get("type") != "null"]
            return dict((non_null or variants)[0])
    return schema


# -- token log-probabilities -----------------------------------------------------

_EXPRESSION_VALUE = re.compile(r'"expression"\s*:\s*"([^"]*)"')


def token_logprobs(
    content: str, at_value: dict[str, float] | None, top_n: int, *, seed: int = 0
) -> list[dict[str, Any]]:
    """OpenAI-shaped ``logprobs.content`` for ``content`` (see the module docstring)."""
    rng = random.Random(f"{seed}:{content}")
    value = _expression_value(content)
    if value is None:
        return [_entry(token, 0.0, [(token, 0.0)], top_n) for token in _chunks(content, rng)]
    start, text = value
    # The opening quote starts the value's token, or ends the token before it.
    quoted = rng.random() < 0.5
    head_end = start - 1 if quoted else start
    width = rng.randint(1, min(4, len(text)))
    lead = '"' if quoted else ""
    chosen = lead + text[:width]
    entries = [_entry(t, 0.0, [(t, 0.0)], top_n) for t in _chunks(content[:head_end], rng)]
    alternatives = _value_alternatives(at_value, lead, width, chosen)
    entries.append(_entry(chosen, alternatives[chosen], list(alternatives.items()), top_n))
    # Names that share the chosen first token part at the next one, by their
    # conditional probabilities, as a model's next step would.
    sharing = {
        name[width:] or '"': lp
        for name, lp in (at_value or {}).items()
        if lead + name[:width] == chosen and name != text
    }
    rest = content[start + width :]
    if sharing and len(text) > width:
        second = text[width : width + rng.randint(1, min(4, len(text) - width))]
        sharing[text[width:]] = math.log(1e-6 + math.exp((at_value or {}).get(text, -30.0)))
        following = _value_alternatives(sharing, "", len(second), second)
        total = math.log(sum(math.exp(lp) for lp in following.values()))
        conditional = [(t, lp - total) for t, lp in following.items()]
        entries.append(_entry(second, dict(conditional)[second], conditional, top_n))
        rest = rest[len(second) :]
    entries += [_entry(t, 0.0, [(t, 0.0)], top_n) for t in _chunks(rest, rng)]
    return entries


def _expression_value(content: str) -> tuple[int, str] | None:
    """Where the top-level expression's value starts in ``content``, and its text."""
    found = [
        m for m in _EXPRESSION_VALUE.finditer(content) if m.group(1).strip().lower() in EXPRESSIONS
    ]
    if not found or not found[-1].group(1):
        return None
    return found[-1].start(1), found[-1].group(1)


def _chunks(text: str, rng: random.Random) -> list[str]:
    chunks = []
    i = 0
    while i < len(text):
        width = rng.randint(1, 4)
        chunks.append(text[i : i + width])
        i += width
    return chunks


def _value_alternatives(
    at_value: dict[str, float] | None, lead: str, width: int, chosen: str
) -> dict[str, float]:
    """Log-probability of each token at the value's first position, most likely first."""
    if not at_value:
        return {chosen: 0.0}
    mass: dict[str, float] = {}
    for name, logprob in at_value.items():
        token = lead + name[:width]
        mass[token] = mass.get(token, 0.0) + math.exp(logprob)
    # The chosen token must have a probability, however small, to have been chosen.
    mass.setdefault(chosen, 1e-6)
    ranked = sorted(mass.items(), key=lambda kv: -kv[1])
    return {token: math.log(p) for token, p in ranked}


def _entry(
    token: str, logprob: float, alternatives: list[tuple[str, float]], top_n: int
) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives[:top_n]
        ],
    }


# -- token accounting ----------------------------------------------------------


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def image_tokens(width: int, height: int, detail: str = "high") -> int:
    """GPT-4o's published rule: 85 base, plus 170 per 512-px tile at high detail.

    High detail first fits the image in 2048x2048, then shrinks it so the short
    side is at most 768 px, then counts 512-px tiles.
    """
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def _image_size(url: str) -> tuple[int, int]:
    # Remote URLs are never fetched (no network in tests); they count as one tile.
    if not url.startswith("data:") or "," not in url:
        return 512, 512
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=False)
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (binascii.Error, UnidentifiedImageError, OSError):
        return 512, 512


def prompt_tokens_for(body: dict[str, Any]) -> int:
    """Input tokens of one request: text at 4 characters a token, plus images."""
    chars = 0
    images = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                chars += len(part.get("text") or "")
            elif part.get("type") == "image_url":
                image_url = part.get("image_url") or {}
                width, height = _image_size(str(image_url.get("url", "")))
                images += image_tokens(width, height, str(image_url.get("detail", "high")))
    return math.ceil(chars / 4) + images


# -- HTTP plumbing ---------------------------------------------------------------

_PATHS = ("/v1/chat/completions", "/chat/completions")
# The Batch API's list routes, for the probe's batch check (nothing can be created).
_LIST_PATHS = ("/v1/batches", "/batches", "/v1/files", "/files")


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 so the client keeps connections alive as it would with OpenAI.
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes; without this, Nagle plus
        # delayed ACKs add ~40 ms to every request and distort latency benchmarks.
        disable_nagle_algorithm = True
        # Idle kept-alive connections are closed instead of holding a thread forever.
        timeout = 10

        def setup(self) -> None:
            super().setup()
            fake._track(self.connection, True)

        def finish(self) -> None:
            fake._track(self.connection, False)
            with contextlib.suppress(OSError):
                super().finish()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.split("?", 1)[0].startswith(_BATCH_PREFIXES):
                self._send(
                    fake.batches.route("POST", self.path.split("?", 1)[0], raw, self.headers)
                )
                return
            if self.path.split("?", 1)[0] not in _PATHS:
                self._send(_error(404, f"Unknown path {self.path}", None))
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._send(_error(400, "Request body is not JSON.", None))
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
            if "Authorization" in self.headers:
                headers["Authorization"] = "<redacted>"
            fake._record(CapturedRequest(path=self.path, headers=headers, body=body))
            try:
                reply = fake.handle(body, self.headers.get("Authorization"))
            finally:
                fake._done()
            self._send(reply)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path not in _LIST_PATHS:
                if path.startswith(_BATCH_PREFIXES):
                    self._send(fake.batches.route("GET", path, b"", self.headers))
                else:
                    self._send(_error(404, f"Unknown path {self.path}", None))
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
            fake._record(CapturedRequest(path=self.path, headers=headers, body={}))
            try:
                reply = fake.handle_list(path, query, self.headers.get("Authorization"))
            finally:
                fake._done()
            self._send(reply)

        def _send(self, reply: _Reply) -> None:
            data = reply.raw if reply.raw is not None else json.dumps(reply.payload).encode()
            kind = "application/octet-stream" if reply.raw is not None else "application/json"
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                # The client gave up (a hang past its timeout); nothing to tell it.
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            # Test output stays readable; requests are inspected via fake.requests.
            pass

    return Handler


# -- the Batch API (files and batches) ---------------------------------------------

_BATCH_PREFIXES = ("/v1/files", "/v1/batches")
_BATCH_EXPIRED = "This request could not be executed before the completion window expired."


@dataclass(frozen=True)
class BatchPlan:
    """How one created batch behaves.

    ``in_progress``: retrieves answered "in_progress" before its lines are answered;
    ``fail_lines``: positions (0-based, in the input file) answered with an HTTP 500
    error line; ``expire_lines``: positions left unanswered, which makes the batch
    "expired" with those lines in its error file; ``fail_batch``: the batch fails as
    a whole with this message and answers nothing.
    """

    in_progress: int = 0
    fail_lines: frozenset[int] = frozenset()
    expire_lines: frozenset[int] = frozenset()
    fail_batch: str | None = None


@dataclass
class _Batch:
    payload: dict[str, Any]
    plan: BatchPlan
    waits: int


class _Batches:
    """The uploaded files and the batches, with their plans.

    ``lines_answered`` counts the lines answered by ``handle`` (planned failures and
    expiries are not); ``cancelled`` lists the batches a client asked to cancel;
    ``page_size`` caps the batches a list answers at once (OpenAI's cap is 100).
    """

    def __init__(self, fake: FakeOpenAI) -> None:
        self._fake = fake
        self._lock = threading.Lock()
        self._files: dict[str, tuple[str, bytes]] = {}
        self._batches: dict[str, _Batch] = {}
        self._plans: deque[BatchPlan] = deque()
        self.lines_answered = 0
        self.cancelled: list[str] = []
        self.page_size = 100

    def script(self, *plans: BatchPlan) -> None:
        """Plan the next created batches, one plan each (later ones: all fine)."""
        with self._lock:
            self._plans.extend(plans)

    def file(self, file_id: str) -> bytes:
        with self._lock:
            return self._files[file_id][1]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._batches)

    def backdate(self, batch_id: str, seconds: int) -> None:
        """Move the batch's ``created_at`` back by ``seconds``."""
        with self._lock:
            self._batches[batch_id].payload["created_at"] -= seconds

    def listed(self, query: Mapping[str, list[str]]) -> _Reply:
        """A page of the batches, newest first, after the ``after`` batch if given."""
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            return _error(400, "limit must be an integer", None, param="limit")
        if not 1 <= limit <= 100:
            return _error(400, "limit must be between 1 and 100", None, param="limit")
        with self._lock:
            order = list(self._batches)
            newest = sorted(
                self._batches.values(),
                key=lambda b: (b.payload["created_at"], order.index(b.payload["id"])),
                reverse=True,
            )
            ids = [b.payload["id"] for b in newest]
            start = 0
            if "after" in query:
                after = query["after"][0]
                if after not in ids:
                    return _error(400, f"No such batch {after}", None, param="after")
                start = ids.index(after) + 1
            page = [dict(b.payload) for b in newest[start : start + min(limit, self.page_size)]]
            has_more = start + len(page) < len(newest)
        return _Reply(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": has_more,
            },
            {},
        )

    def route(self, method: str, path: str, raw: bytes, headers: Any) -> _Reply:
        fake = self._fake
        if fake.api_key is not None and headers.get("Authorization") != f"Bearer {fake.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if not fake.batch:
            return _error(404, f"Unknown path {path}", None)
        parts = path.strip("/").split("/")[1:]
        if method == "POST" and parts == ["files"]:
            return self._upload(raw, str(headers.get("Content-Type", "")))
        if method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            with self._lock:
                found = self._files.get(parts[1])
            if found is None:
                return _error(404, f"No such file {parts[1]}", None)
            return _Reply(200, {}, {}, raw=found[1])
        if method == "POST" and parts == ["batches"]:
            return self._create(json.loads(raw or b"{}"))
        if len(parts) >= 2 and parts[0] == "batches" and parts[1] in self.ids():
            if method == "GET" and len(parts) == 2:
                return _Reply(200, self._retrieve(parts[1]), {})
            if method == "POST" and parts[2:] == ["cancel"]:
                return _Reply(200, self._cancel(parts[1]), {})
        return _error(404, f"Unknown path {path}", None)

    def _new_file(self, purpose: str, content: bytes, filename: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-fake{len(self._files) + 1}"
            self._files[file_id] = (purpose, content)
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }

    def _upload(self, raw: bytes, content_type: str) -> _Reply:
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        fields: dict[str, tuple[str, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_param("filename", header="content-disposition")
            fields[str(name)] = (str(filename or ""), part.get_payload(decode=True) or b"")
        if "file" not in fields or "purpose" not in fields:
            return _error(400, "A file and its purpose are required.", None)
        purpose = fields["purpose"][1].decode()
        return _Reply(200, self._new_file(purpose, fields["file"][1], fields["file"][0]), {})

    def _create(self, body: dict[str, Any]) -> _Reply:
        file_id = str(body.get("input_file_id", ""))
        with self._lock:
            found = self._files.get(file_id)
            plan = self._plans.popleft() if self._plans else BatchPlan()
        if found is None or found[0] != "batch":
            return _error(400, f"No batch input file {file_id}", None)
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _error(400, "Only /v1/chat/completions in a 24h window is supported.", None)
        lines = [line for line in found[1].decode().splitlines() if line.strip()]
        with self._lock:
            batch_id = f"batch_fake{len(self._batches) + 1}"
            payload = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "errors": None,
                "input_file_id": file_id,
                "completion_window": "24h",
                "status": "in_progress",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            self._batches[batch_id] = _Batch(payload, plan, plan.in_progress)
        return _Reply(200, dict(payload), {})

    def _retrieve(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batches[batch_id]
            status = batch.payload["status"]
            if status == "cancelling":
                batch.payload["status"] = "cancelled"
            if status != "in_progress" or batch.waits > 0:
                batch.waits -= 1
                return dict(batch.payload)
        self._answer(batch)
        with self._lock:
            return dict(batch.payload)

    def _cancel(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batches[batch_id]
            if batch.payload["status"] == "in_progress":
                batch.payload["status"] = "cancelling"
            self.cancelled.append(batch_id)
            return dict(batch.payload)

    def _answer(self, batch: _Batch) -> None:
        """Answer every line of the batch (once), and finish it as its plan says."""
        plan = batch.plan
        if plan.fail_batch is not None:
            with self._lock:
                batch.payload["status"] = "failed"
                batch.payload["errors"] = {
                    "object": "list",
                    "data": [{"code": "invalid_batch", "message": plan.fail_batch}],
                }
            return
        content = self.file(batch.payload["input_file_id"]).decode()
        lines = [json.loads(line) for line in content.splitlines() if line.strip()]
        output, errors = [], []
        authorization = f"Bearer {self._fake.api_key}" if self._fake.api_key else None
        for position, line in enumerate(lines):
            custom_id = line["custom_id"]
            if position in plan.expire_lines:
                error = {"code": "batch_expired", "message": _BATCH_EXPIRED}
                errors.append({"custom_id": custom_id, "response": None, "error": error})
                continue
            if position in plan.fail_lines:
                reply = _status_fault(Fault("500"))
            else:
                reply = self._fake.handle(line["body"], authorization)
                with self._lock:
                    self.lines_answered += 1
            response = {"status_code": reply.status, "body": reply.payload}
            row = {"id": f"batch_req_{position}", "custom_id": custom_id, "response": response}
            (output if reply.status == 200 else errors).append(row | {"error": None})
        purpose = "batch_output"
        out_file = self._new_file(purpose, _jsonl(output), "output.jsonl") if output else None
        err_file = self._new_file(purpose, _jsonl(errors), "errors.jsonl") if errors else None
        with self._lock:
            batch.payload.update(
                status="expired" if plan.expire_lines else "completed",
                output_file_id=out_file["id"] if out_file else None,
                error_file_id=err_file["id"] if err_file else None,
                request_counts={
                    "total": len(lines),
                    "completed": len(output),
                    "failed": len(errors),
                },
            )


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running fake server, stopped after the test."""
    with FakeOpenAI() as server:
        yield server
