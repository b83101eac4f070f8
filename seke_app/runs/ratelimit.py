"""Requests-per-minute and tokens-per-minute limits shared by every worker.

The limits hold over every sliding window of one minute, not over calendar
minutes: a fixed window lets twice the limit through across a minute boundary,
and makes every waiter wake at the same instant when the minute turns.

Each call reserves its share before it is sent: one entry in a Redis sorted set
(a "sliding log"), scored with the time of the reservation and naming the
requests and estimated tokens it holds. An entry stops counting one window after
its time. When the call returns, ``correct()`` rewrites that same entry with the
real usage, so the correction lands in the window the call was reserved in,
however late it comes. A running total per limit sits beside the log, so that a
reservation costs one look at the totals plus the removal of the entries that
have expired.

A reservation that does not fit is told how long to wait: until enough of the
oldest entries expire to make room for it, which is never more than one window.
Waiters sleep until their own slot, plus a little random jitter so that those
waiting for the same slot do not all ask again at once. A reservation that could
never fit (more tokens than the limit allows in a whole window) is refused at
once with a ``VLLMError`` that says a retry will not help.

Why not the ``limits`` library: its moving window stores one list element per
unit of cost, which is a list of two million elements at SEKE's default
tokens-per-minute limit, and its sliding-window counter is an approximation
read from Redis key expiries; neither can give tokens back to the window they
were reserved in, nor take a request and its tokens together, atomically. The
two Lua scripts below do both, and run on the queue's own Redis (the embedded
redis-server or REDIS_URL). Redis 5 or later is needed, for scripts that read
the server's clock before they write.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import redis

from seke_app.engine.llm.client import VLLMError
from seke_app.engine.types import (
    AnnotationRequest,
    ClosableBackend,
    Sample,
    VerificationRequest,
    observed_grains,
)

log = logging.getLogger(__name__)

# A vision request with a 512-px image and SEKE's prompt uses about this many
# input tokens per call; output tokens add about 250 per choice.
ESTIMATED_PROMPT_TOKENS = 2500
ESTIMATED_COMPLETION_TOKENS = 250
# The smallest request SEKE sends: one choice (a single sample or a verification).
SMALLEST_REQUEST_TOKENS = ESTIMATED_PROMPT_TOKENS + ESTIMATED_COMPLETION_TOKENS

WINDOW_SECONDS = 60.0
# Waiters for the same slot wake up to this long apart, so that they do not
# all ask Redis again in the same instant.
MAX_JITTER_SECONDS = 1.0

# KEYS: the log (sorted set: member "<id>:<requests>:<tokens>", score = time
# reserved) and the totals (hash: requests, tokens; always the sum of the log).
# ARGV: now ("" = the Redis server's clock), window, requests per window, tokens
# per window (0 = no limit), requests, tokens, the new entry's member.
# Returns {1, 0} when reserved, {0, ms} when the reservation fits in ms.
_ACQUIRE = """
local now = tonumber(ARGV[1])
if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window = tonumber(ARGV[2])
local rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local requests, tokens = tonumber(ARGV[5]), tonumber(ARGV[6])

local function amounts(member)
    local r, t = string.match(member, ':(%d+):(%d+)$')
    return tonumber(r), tonumber(t)
end

local used_r = tonumber(redis.call('HGET', KEYS[2], 'requests')) or 0
local used_t = tonumber(redis.call('HGET', KEYS[2], 'tokens')) or 0
local cutoff = string.format('%.6f', now - window)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)) do
    local r, t = amounts(member)
    used_r, used_t = used_r - r, used_t - t
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if redis.call('ZCARD', KEYS[1]) == 0 then
    used_r, used_t = 0, 0
end

local need_r = rpm > 0 and used_r + requests - rpm or 0
local need_t = tpm > 0 and used_t + tokens - tpm or 0
if need_r <= 0 and need_t <= 0 then
    redis.call('ZADD', KEYS[1], string.format('%.6f', now), ARGV[7])
    redis.call('HSET', KEYS[2], 'requests', used_r + requests, 'tokens', used_t + tokens)
    local ttl = math.ceil(window * 2000)
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
    return {1, 0}
end
redis.call('HSET', KEYS[2], 'requests', used_r, 'tokens', used_t)

-- The reservation fits once the oldest entries that free enough have expired.
local freed_r, freed_t = 0, 0
local offset = 0
while true do
    local batch = redis.call('ZRANGE', KEYS[1], offset, offset + 199, 'WITHSCORES')
    if #batch == 0 then
        break
    end
    for i = 1, #batch, 2 do
        local r, t = amounts(batch[i])
        freed_r, freed_t = freed_r + r, freed_t + t
        if freed_r >= need_r and freed_t >= need_t then
            local wait = tonumber(batch[i + 1]) + window - now
            return {0, math.max(1, math.ceil(wait * 1000))}
        end
    end
    offset = offset + 200
end
return {0, math.ceil(window * 1000)}
"""

# KEYS: as above. ARGV: the entry as reserved, the entry with the real usage,
# the change in requests, the change in tokens. An entry that has already been
# forgotten (its window is over) is left alone. Returns 1 if corrected.
_CORRECT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
    return 0
end
if ARGV[1] == ARGV[2] then
    return 1
end
-- Added before the old entry goes, so that the log never empties: an empty
-- sorted set is deleted, and would come back without its expiry.
redis.call('ZADD', KEYS[1], score, ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'requests', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""


@dataclass(frozen=True)
class Limits:
    """Requests and tokens allowed per minute; 0 means no limit of that kind."""

    requests_per_minute: int
    tokens_per_minute: int

    def __post_init__(self) -> None:
        if self.requests_per_minute < 0 or self.tokens_per_minute < 0:
            raise ValueError("rate limits must not be negative (0 means no limit)")

    @property
    def active(self) -> bool:
        return self.requests_per_minute > 0 or self.tokens_per_minute > 0


@dataclass(frozen=True)
class Reservation:
    """One call's share of the limits: its entry in the log, until corrected."""

    id: str
    requests: int
    tokens: int

    @property
    def member(self) -> str:
        return f"{self.id}:{self.requests}:{self.tokens}"


class RedisRateLimiter:
    """The shared limits under one Redis ``key``, for every worker that uses the key.

    ``clock`` gives the time reservations are scored with; None (the default)
    uses the Redis server's clock, so that workers on machines whose clocks
    differ still agree. Tests inject a clock and a ``sleep`` that advances it.
    """

    def __init__(
        self,
        connection: redis.Redis,
        limits: Limits,
        *,
        key: str,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self._redis = connection
        self._limits = limits
        self._log_key, self._totals_key = f"{key}:log", f"{key}:totals"
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._window = window
        self._acquire = connection.register_script(_ACQUIRE)
        self._correct = connection.register_script(_CORRECT)

    def acquire(self, requests: int, tokens: int) -> Reservation:
        """Wait until ``requests`` and ``tokens`` fit in the window, then reserve them.

        Raises ``VLLMError`` at once, not retryable, if they exceed what a whole
        window allows, and retryable if Redis does not answer.
        """
        self._refuse_if_too_large(requests, tokens)
        reservation = Reservation(uuid.uuid4().hex, requests, tokens)
        while True:
            wait = self._try(reservation)
            if wait is None:
                return reservation
            self._sleep(min(wait + self._rng.uniform(0, MAX_JITTER_SECONDS), self._window))

    def _refuse_if_too_large(self, requests: int, tokens: int) -> None:
        if requests < 0 or tokens < 0:
            raise ValueError("a reservation cannot be negative")
        rpm, tpm = self._limits.requests_per_minute, self._limits.tokens_per_minute
        if tpm and tokens > tpm:
            raise VLLMError(
                f"this request needs an estimated {tokens:,} tokens, more than the"
                f" {tpm:,} tokens per minute that SEKE_OPENAI_TPM allows, so it can never"
                " be sent: raise SEKE_OPENAI_TPM to the endpoint's limit (0 = no limit)"
                " or ask for fewer samples per request",
                retryable=False,
                status=None,
            )
        if rpm and requests > rpm:
            raise VLLMError(
                f"this call needs {requests:,} requests, more than the {rpm:,} per minute"
                " that SEKE_OPENAI_RPM allows, so it can never be sent: raise"
                " SEKE_OPENAI_RPM (0 = no limit)",
                retryable=False,
                status=None,
            )

    def _try(self, reservation: Reservation) -> float | None:
        """Reserve now and return None, or return the seconds until it would fit."""
        now = "" if self._clock is None else f"{self._clock():.6f}"
        args: list[str | float] = [
            now,
            self._window,
            self._limits.requests_per_minute,
            self._limits.tokens_per_minute,
            reservation.requests,
            reservation.tokens,
            reservation.member,
        ]
        try:
            granted, wait_ms = self._acquire(keys=[self._log_key, self._totals_key], args=args)
        except redis.RedisError as exc:
            raise VLLMError(
                f"the rate limiter's Redis does not answer: {exc}", retryable=True, status=None
            ) from None
        return None if granted else int(wait_ms) / 1000

    def correct(self, reservation: Reservation, *, requests: int, tokens: int) -> None:
        """Replace a reservation's estimate with the real usage, in the window it was
        reserved in; a reservation whose window is over is left alone.

        A Redis failure here is logged, not raised: the call it follows has been
        made and paid for, and its result must not be lost.
        """
        actual = Reservation(reservation.id, max(requests, 0), max(tokens, 0))
        try:
            self._correct(
                keys=[self._log_key, self._totals_key],
                args=[
                    reservation.member,
                    actual.member,
                    actual.requests - reservation.requests,
                    actual.tokens - reservation.tokens,
                ],
            )
        except redis.RedisError as exc:
            log.warning("could not correct a rate-limit reservation: %s", exc)

    def usage(self) -> tuple[int, int]:
        """The requests and tokens reserved in the current window (for tests and
        diagnostics; entries that expired since the last reservation still count)."""
        requests, tokens = self._redis.hmget(self._totals_key, ["requests", "tokens"])
        return int(requests or 0), int(tokens or 0)


class RateLimitedBackend:
    """A backend whose calls first take their share of the shared limits."""

    def __init__(self, backend: ClosableBackend, limiter: RedisRateLimiter) -> None:
        self._backend = backend
        self._limiter = limiter
        self.name = backend.name
        self.model = backend.model
        self.observed_grains = observed_grains(backend)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the wrapped backend. The limiter's Redis connection is django-rq's,
        shared by the process, and stays open."""
        self._backend.close()

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        reservation = self._limiter.acquire(
            1, ESTIMATED_PROMPT_TOKENS + k * ESTIMATED_COMPLETION_TOKENS
        )
        samples = self._backend.sample(request, k, temperature)
        self._correct(reservation, samples)
        return samples

    def verify(self, verification: VerificationRequest) -> Sample:
        reservation = self._limiter.acquire(1, SMALLEST_REQUEST_TOKENS)
        sample = self._backend.verify(verification)
        self._correct(reservation, [sample])
        return sample

    def _correct(self, reservation: Reservation, samples: list[Sample]) -> None:
        # An endpoint that ignores n answers k choices with k requests; the usage
        # the samples carry counts them, as the endpoint does. A call that returned
        # was at least one request, whatever its usage says.
        self._limiter.correct(
            reservation,
            requests=max(1, sum(s.usage.requests for s in samples)),
            tokens=sum(s.usage.prompt_tokens + s.usage.completion_tokens for s in samples),
        )
