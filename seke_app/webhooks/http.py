"""The one place where SEKE makes a webhook's HTTP request (tests serve a receiver on
127.0.0.1 rather than patch this).

A POST with a timeout on each step (connecting, sending, waiting for each piece
of the answer), never following a redirect: a receiver that moved must be
registered at its new URL, and a redirect must not take a signed request to a
host nobody registered. Only the start of the answer is read and kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx2

from seke_app.models.webhooks import RESPONSE_KEPT_BYTES

USER_AGENT = "SEKE-Webhooks/1"
# An uncompressed answer: only its start is kept, and it is kept as text.
_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Answer:
    """What came of one POST: the status code and the start of the body, or the error."""

    status_code: int | None
    body: str
    error: str
    duration_ms: int
    location: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def problem(self) -> str:
        """Why the attempt failed, in a sentence; empty when it succeeded."""
        if self.status_code is None:
            return self.error
        if self.ok:
            return ""
        if 300 <= self.status_code < 400:
            where = f" to {self.location}" if self.location else ""
            return (
                f"The receiver answered HTTP {self.status_code}, a redirect{where}; SEKE does"
                " not follow redirects: register the new URL."
            )
        return f"The receiver answered HTTP {self.status_code}."


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST ``body`` to ``url``; never raises for what the network or receiver does."""
    started = time.monotonic()

    def took() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        with (
            httpx2.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("POST", url, content=body, headers={**_HEADERS, **headers}) as response,
        ):
            head = _read_start(response)
            return Answer(
                status_code=response.status_code,
                body=head,
                error="",
                duration_ms=took(),
                location=response.headers.get("location", ""),
            )
    except httpx2.TimeoutException as exc:
        error = f"No answer within the timeout of {timeout:g} s ({type(exc).__name__})."
    except httpx2.HTTPError as exc:
        error = f"The request failed: {type(exc).__name__}: {exc}"
    except Exception as exc:
        # Anything else the request runs into (a URL the client cannot use, say) is the
        # attempt's error too, so that the delivery is retried and in the end given
        # up on like any failure, rather than left claimed by a job that crashed.
        error = f"The request could not be made: {type(exc).__name__}: {exc}"
    return Answer(status_code=None, body="", error=error, duration_ms=took())


def _read_start(response: httpx2.Response) -> str:
    """The first RESPONSE_KEPT_BYTES of the answer; the rest is never read."""
    kept = b""
    for chunk in response.iter_bytes():
        kept += chunk
        if len(kept) >= RESPONSE_KEPT_BYTES:
            break
    return kept[:RESPONSE_KEPT_BYTES].decode("utf-8", errors="replace")
