"""SV-UAMC through the Batch API: an image's calls replayed from their recorded replies.

A batch run cannot wait for one call's reply before it makes the next: each round
of calls (every image's first samples, then the extra samples of the images still
unsure, then the verifications) goes to the endpoint as one batch that answers
within a day. ``run_uamc`` is therefore run again on every round, on a backend
that answers from the replies recorded so far (``ReplayBackend``): the i-th call
gets the i-th recorded reply, parsed by the same ``OpenAIBackend`` code as a
reply made synchronously, and the first call with no reply yet stops the
procedure with ``PendingCall``, which carries the request body that call would
send. ``replay`` returns either the image's final result or that next call.

The engine is deterministic given its samples, so replaying the same replies
makes the same calls and the same answer: a batch run's annotations are those a
synchronous run would have made from the same replies (``bench/batch_cost.py``
checks this), and a run picks up after any restart from the replies stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from seke_app.engine.llm.backend import OpenAIBackend
from seke_app.engine.types import (
    ALL_GRAINS,
    AnnotationRequest,
    Sample,
    VerificationRequest,
)
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc

CallKind = Literal["sample", "verify"]


@dataclass(frozen=True)
class Call:
    """One model call of an image: what it asks (``k`` answers at ``temperature``,
    or the verification) and the chat-completions body that asks it."""

    kind: CallKind
    k: int
    temperature: float
    body: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """A call's recorded reply: the call's kind and size, and the completion's body
    (a batch output line's ``response.body``)."""

    kind: CallKind
    k: int
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "body": self.body}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reply:
        kind = data["kind"]
        if kind not in ("sample", "verify"):
            raise ValueError(f"unknown call kind {kind!r}")
        return cls(kind=kind, k=int(data["k"]), body=dict(data["body"]))


class PendingCall(Exception):
    """The replay reached a call that has no reply yet."""

    def __init__(self, call: Call) -> None:
        super().__init__(f"{call.kind} call pending")
        self.call = call


class ReplayMismatch(Exception):
    """The recorded replies do not answer the calls the procedure makes (the run's
    parameters or the engine changed since they were recorded)."""


class ReplayBackend:
    """A ``Backend`` that answers the i-th call with the i-th recorded reply."""

    name = "openai"
    observed_grains = ALL_GRAINS

    def __init__(self, backend: OpenAIBackend, replies: Sequence[Reply]) -> None:
        self._backend = backend
        self._replies = list(replies)
        self._next = 0
        self.model = backend.model

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        reply = self._take("sample", k)
        if reply is None:
            body = self._backend.sample_body(request, k, temperature)
            raise PendingCall(Call("sample", k, temperature, body))
        result = self._backend.client.batch_result(reply.body, k)
        return self._backend.samples_from(result, request.vocabulary)

    def verify(self, verification: VerificationRequest) -> Sample:
        reply = self._take("verify", 1)
        if reply is None:
            body = self._backend.verify_body(verification)
            raise PendingCall(Call("verify", 1, 0.0, body))
        result = self._backend.client.batch_result(reply.body, 1)
        return self._backend.verification_from(result, verification.request.vocabulary)

    @property
    def used(self) -> int:
        """How many recorded replies the procedure has used so far."""
        return self._next

    def _take(self, kind: CallKind, k: int) -> Reply | None:
        if self._next >= len(self._replies):
            return None
        reply = self._replies[self._next]
        if (reply.kind, reply.k) != (kind, k):
            raise ReplayMismatch(
                f"call {self._next + 1} is a {kind} call of {k}, but its recorded reply"
                f" answers a {reply.kind} call of {reply.k}"
            )
        self._next += 1
        return reply


def replay(
    backend: OpenAIBackend,
    replies: Sequence[Reply],
    request: AnnotationRequest,
    params: UAMCParams,
) -> UAMCResult | Call:
    """The image's result when the replies answer every call it makes, else its next call.

    Raises ``ReplayMismatch`` when a reply does not answer its call or replies are
    left over, and ``VLLMError`` when a reply is not a usable completion.
    """
    replayer = ReplayBackend(backend, replies)
    try:
        result = run_uamc(replayer, request, params)
    except PendingCall as pending:
        return pending.call
    if replayer.used != len(replies):
        raise ReplayMismatch(
            f"the procedure made {replayer.used} calls, but {len(replies)} replies are recorded"
        )
    return result
