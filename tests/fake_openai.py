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

``server.billed`` is what the server would bill, counted the way OpenAI bills:
every request answered with a completion (HTTP 200, with its token usage),
whether or not the client was still waiting for it; errors bill nothing.
``server.billed_for(model)`` is the same for the requests that named ``model``.

One server can play several models: ``by_model({"cheap": r1, "strong": r2})``
is a responder that answers each request with the responder of the model it
names (and fails the request, as a broken responder does, for any other model);
``image_url(body)`` is the image a request shows, to answer per image.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image, UnidentifiedImageError

from seke_app.engine.vocab import FEID_AUS

# (parsed request body, choice index) -> the assistant message's content.
Responder = Callable[[dict[str, Any], int], str]

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
    ) -> None:
        self.responder: Responder = responder or default_responder
        # When set, requests must present this key or get a 401.
        self.api_key = api_key
        self.reject_n = reject_n  # 400 on n > 1, like several self-hosted servers
        self.ignore_n = ignore_n  # one choice whatever n says, like Ollama
        self.reject_json_schema = reject_json_schema
        self.reject_json_object = reject_json_object
        self.latency_s = latency_s
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
            choices.append(
                {"index": index, "message": message, "finish_reason": finish, "logprobs": None}
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


def _error(status: int, message: str, code: str | None) -> _Reply:
    kind = "invalid_request_error" if status < 500 else "server_error"
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
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

        def _send(self, reply: _Reply) -> None:
            data = json.dumps(reply.payload).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
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


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running fake server, stopped after the test."""
    with FakeOpenAI() as server:
        yield server
