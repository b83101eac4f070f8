"""Requests-per-minute and tokens-per-minute limits shared by every worker.

The counters live in Redis, so that N workers on M machines together stay under
the endpoint's limits. A fixed one-minute window is used: simple, and its worst
case (twice the limit across a window boundary) is within what providers allow
for bursts. Tokens are reserved before a call from an estimate and corrected
with the real usage afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import redis

from seke_app.engine.types import AnnotationRequest, ClosableBackend, Sample, VerificationRequest

# A vision request with a 512-px image and SEKE's prompt uses about this many
# input tokens per call; output tokens add about 250 per choice.
ESTIMATED_PROMPT_TOKENS = 2500
ESTIMATED_COMPLETION_TOKENS = 250


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int
    tokens_per_minute: int

    @property
    def active(self) -> bool:
        return self.requests_per_minute > 0 or self.tokens_per_minute > 0


class RedisRateLimiter:
    def __init__(
        self,
        connection: redis.Redis,
        limits: Limits,
        *,
        key: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._redis = connection
        self._limits = limits
        self._key = key
        self._clock = clock
        self._sleep = sleep

    def _window(self) -> tuple[int, float]:
        now = self._clock()
        minute = int(now // 60)
        return minute, (minute + 1) * 60 - now

    def acquire(self, requests: int, tokens: int) -> None:
        """Wait until ``requests`` and ``tokens`` fit in the current minute, then take them."""
        while True:
            minute, left = self._window()
            if self._try_take(minute, requests, tokens):
                return
            self._sleep(min(left + 0.01, 60.0))

    def _try_take(self, minute: int, requests: int, tokens: int) -> bool:
        req_key, tok_key = f"{self._key}:rpm:{minute}", f"{self._key}:tpm:{minute}"
        pipe = self._redis.pipeline()
        pipe.incrby(req_key, requests)
        pipe.incrby(tok_key, tokens)
        pipe.expire(req_key, 120)
        pipe.expire(tok_key, 120)
        used_requests, used_tokens, _, _ = pipe.execute()
        over = (
            self._limits.requests_per_minute and used_requests > self._limits.requests_per_minute
        ) or (self._limits.tokens_per_minute and used_tokens > self._limits.tokens_per_minute)
        if not over:
            return True
        # Give the reservation back so that waiting does not starve other workers.
        pipe = self._redis.pipeline()
        pipe.decrby(req_key, requests)
        pipe.decrby(tok_key, tokens)
        pipe.execute()
        return False

    def correct(self, estimated_tokens: int, actual_tokens: int) -> None:
        minute, _ = self._window()
        self._redis.incrby(f"{self._key}:tpm:{minute}", actual_tokens - estimated_tokens)


class RateLimitedBackend:
    """A backend whose calls first take their share of the shared limits."""

    def __init__(self, backend: ClosableBackend, limiter: RedisRateLimiter) -> None:
        self._backend = backend
        self._limiter = limiter
        self.name = backend.name
        self.model = backend.model

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the wrapped backend. The limiter's Redis connection is django-rq's,
        shared by the process, and stays open."""
        self._backend.close()

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        estimate = ESTIMATED_PROMPT_TOKENS + k * ESTIMATED_COMPLETION_TOKENS
        self._limiter.acquire(1, estimate)
        samples = self._backend.sample(request, k, temperature)
        self._limiter.correct(estimate, sum(_tokens(s) for s in samples))
        return samples

    def verify(self, verification: VerificationRequest) -> Sample:
        estimate = ESTIMATED_PROMPT_TOKENS + ESTIMATED_COMPLETION_TOKENS
        self._limiter.acquire(1, estimate)
        sample = self._backend.verify(verification)
        self._limiter.correct(estimate, _tokens(sample))
        return sample


def _tokens(sample: Sample) -> int:
    return sample.usage.prompt_tokens + sample.usage.completion_tokens
