"""The shared rate limiter, on the queue's real Redis, with an injected clock.

Time is a number the test moves: the limiter's ``sleep`` advances it, so a test
that waits minutes takes milliseconds, and every wait can be read back.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from seke_app.engine.llm.client import VLLMError
from seke_app.engine.types import AnnotationRequest, Sample, Usage, VerificationRequest
from seke_app.engine.uamc import UAMCParams
from seke_app.engine.vocab import DEFAULT_VOCABULARY
from seke_app.models import GenerationRun, PromptVersion, RunItem
from seke_app.queue import get_queue
from seke_app.runs import backends
from seke_app.runs.ratelimit import (
    MAX_JITTER_SECONDS,
    WINDOW_SECONDS,
    Limits,
    RateLimitedBackend,
    RedisRateLimiter,
    Reservation,
)
from seke_app.runs.services import RunRefused, run_create
from tests.factories import make_dataset
from tests.fake_openai import FakeOpenAI
from tests.workers import work_in_process

# Ten seconds into a calendar minute, so that a fixed window's boundary falls
# inside the tests' scenarios.
START = 1_000_000 * 60 + 10.0


class FakeTime:
    """A clock that only ``sleep`` moves; ``sleep`` stops the test if it is called
    more than ``max_sleeps`` times (a limiter that waits forever would hang)."""

    def __init__(self, max_sleeps: int = 50) -> None:
        self.now = START
        self.sleeps: list[float] = []
        self.max_sleeps = max_sleeps

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) > self.max_sleeps:
            raise AssertionError(f"the limiter kept waiting: {self.sleeps[:5]}...")
        self.now += seconds


class Woken(Exception):
    """Raised by a sleep that only records how long it was asked to wait."""


@pytest.fixture
def connection() -> Iterator[redis.Redis]:
    """The queue's Redis (embedded, or REDIS_URL), with this test's keys removed after."""
    conn = get_queue("generation").connection
    keys_before = set(conn.keys("seke:test-limits:*"))
    yield conn
    for key in set(conn.keys("seke:test-limits:*")) - keys_before:
        conn.delete(key)


def limiter(
    connection: redis.Redis,
    fake: FakeTime,
    limits: Limits,
    *,
    key: str | None = None,
    seed: int = 0,
) -> RedisRateLimiter:
    return RedisRateLimiter(
        connection,
        limits,
        key=key or f"seke:test-limits:{uuid.uuid4().hex}",
        clock=fake.clock,
        sleep=fake.sleep,
        rng=random.Random(seed),
    )


def test_it_refuses_a_request_larger_than_the_tokens_limit_at_once(
    connection: redis.Redis,
) -> None:
    fake = FakeTime()
    limits = limiter(connection, fake, Limits(0, 1000))

    with pytest.raises(VLLMError) as refused:
        limits.acquire(1, 1001)

    assert not refused.value.retryable
    assert "1,001 tokens" in refused.value.message and "SEKE_OPENAI_TPM" in refused.value.message
    assert fake.sleeps == []
    # Nothing was reserved: the whole limit is still there.
    limits.acquire(1, 1000)
    assert fake.sleeps == []


def test_it_refuses_more_requests_than_the_requests_limit(connection: redis.Redis) -> None:
    fake = FakeTime()
    with pytest.raises(VLLMError, match="SEKE_OPENAI_RPM") as refused:
        limiter(connection, fake, Limits(2, 0)).acquire(3, 0)
    assert not refused.value.retryable and fake.sleeps == []


def test_it_wakes_a_waiter_at_its_own_slot_not_at_the_minute_boundary(
    connection: redis.Redis,
) -> None:
    fake = FakeTime()
    limits = limiter(connection, fake, Limits(2, 0))
    limits.acquire(1, 0)
    fake.now += 10
    limits.acquire(1, 0)
    fake.now += 10

    limits.acquire(1, 0)

    # The first reservation frees its request one window after it was made; the
    # calendar minute turned 40 s after the start, which is no reason to wake.
    assert len(fake.sleeps) == 1
    assert WINDOW_SECONDS - 20 <= fake.sleeps[0] <= WINDOW_SECONDS - 20 + MAX_JITTER_SECONDS
    assert fake.now >= START + WINDOW_SECONDS


def test_it_wakes_waiters_for_the_same_slot_at_different_times(connection: redis.Redis) -> None:
    key = f"seke:test-limits:{uuid.uuid4().hex}"
    first = FakeTime()
    limiter(connection, first, Limits(1, 0), key=key).acquire(1, 0)
    waits = []
    for seed in (1, 2, 3):
        waiter_time = FakeTime()
        waiter_time.now = START + 5

        def record(seconds: float) -> None:
            waits.append(seconds)
            raise Woken

        waiter = RedisRateLimiter(
            connection,
            Limits(1, 0),
            key=key,
            clock=waiter_time.clock,
            sleep=record,
            rng=random.Random(seed),
        )
        with pytest.raises(Woken):
            waiter.acquire(1, 0)

    assert len(set(waits)) == 3
    assert all(WINDOW_SECONDS - 5 <= w <= WINDOW_SECONDS for w in waits)


def test_it_corrects_the_window_it_reserved_in(connection: redis.Redis) -> None:
    fake = FakeTime()
    fake.now = START + 45  # five seconds before a calendar minute turns
    key = f"seke:test-limits:{uuid.uuid4().hex}"
    limits = limiter(connection, fake, Limits(0, 10_000), key=key)
    reservation = limits.acquire(1, 6000)
    fake.now += 10  # into the next calendar minute, still in the reservation's window

    limits.correct(reservation, requests=1, tokens=1000)

    assert limits.usage() == (1, 1000)
    # The totals outlive the correction as long as the log does.
    assert connection.pttl(f"{key}:totals") > 1000
    limits.acquire(1, 9000)
    assert fake.sleeps == []
    # The window is now full: one token more waits for the first call to expire.
    limits.acquire(1, 1)
    assert len(fake.sleeps) == 1
    assert fake.now >= START + 45 + WINDOW_SECONDS


def test_it_makes_a_call_that_used_more_than_its_estimate_hold_its_window(
    connection: redis.Redis,
) -> None:
    fake = FakeTime()
    limits = limiter(connection, fake, Limits(0, 10_000))
    reservation = limits.acquire(1, 2000)
    limits.correct(reservation, requests=3, tokens=9500)

    limits.acquire(1, 1000)

    assert len(fake.sleeps) == 1 and fake.now >= START + WINDOW_SECONDS
    assert limits.usage() == (1, 1000)


def test_it_leaves_a_reservation_whose_window_is_over_alone(connection: redis.Redis) -> None:
    fake = FakeTime()
    limits = limiter(connection, fake, Limits(0, 10_000))
    reservation = limits.acquire(1, 4000)
    fake.now += WINDOW_SECONDS + 1
    limits.acquire(1, 1000)  # forgets the expired reservation

    limits.correct(reservation, requests=1, tokens=9000)

    assert limits.usage() == (1, 1000)


def test_it_never_waits_longer_than_the_window_and_never_exceeds_the_limits(
    connection: redis.Redis,
) -> None:
    rng = random.Random(7)
    fake = FakeTime(max_sleeps=1000)
    rpm, tpm = 20, 30_000
    limits = limiter(connection, fake, Limits(rpm, tpm))
    granted: list[tuple[float, int, int]] = []
    for _ in range(150):
        fake.now += rng.choice([0.0, 0.5, 3.0, 20.0])
        estimate = rng.randint(500, tpm)
        sleeps_before = len(fake.sleeps)
        reservation = limits.acquire(1, estimate)
        assert all(0 < s <= WINDOW_SECONDS for s in fake.sleeps[sleeps_before:])
        actual = rng.randint(0, tpm)
        limits.correct(reservation, requests=1, tokens=actual)
        granted.append((fake.now, 1, actual))
        # Counted over the sliding window that ends now, with the corrected usage.
        live = [g for g in granted if g[0] > fake.now - WINDOW_SECONDS]
        assert sum(g[1] for g in live) <= rpm
        # A correction may overshoot; what a reservation needs is room for its
        # estimate once the corrected calls before it are counted.
        assert sum(g[2] for g in live[:-1]) + estimate <= tpm
    assert max(fake.sleeps) <= WINDOW_SECONDS


def test_it_shares_one_key_between_workers_and_keeps_keys_apart(
    connection: redis.Redis,
) -> None:
    key = f"seke:test-limits:{uuid.uuid4().hex}"
    fake = FakeTime()
    limiter(connection, fake, Limits(1, 0), key=key).acquire(1, 0)

    limiter(connection, fake, Limits(1, 0), key=f"{key}-other").acquire(1, 0)
    assert fake.sleeps == []
    limiter(connection, fake, Limits(1, 0), key=key).acquire(1, 0)
    assert len(fake.sleeps) == 1


def test_it_grants_no_more_than_the_limit_to_concurrent_workers(
    connection: redis.Redis,
) -> None:
    key = f"seke:test-limits:{uuid.uuid4().hex}"
    fake = FakeTime()

    def one_call(_: int) -> str:
        def record(seconds: float) -> None:
            raise Woken

        # A limiter per thread, as each worker has; the client's pool gives each
        # call in flight a connection of its own.
        limits = RedisRateLimiter(connection, Limits(5, 0), key=key, clock=fake.clock, sleep=record)
        try:
            limits.acquire(1, 0)
        except Woken:
            return "waited"
        return "granted"

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(one_call, range(20)))

    assert outcomes.count("granted") == 5 and outcomes.count("waited") == 15


def test_it_uses_the_redis_servers_clock_when_none_is_injected(
    connection: redis.Redis,
) -> None:
    waits: list[float] = []

    def record(seconds: float) -> None:
        waits.append(seconds)
        raise Woken

    limits = RedisRateLimiter(
        connection, Limits(1, 0), key=f"seke:test-limits:{uuid.uuid4().hex}", sleep=record
    )
    limits.acquire(1, 0)
    with pytest.raises(Woken):
        limits.acquire(1, 0)
    assert len(waits) == 1 and 0 < waits[0] <= WINDOW_SECONDS


def test_it_reports_an_unreachable_redis_as_a_retryable_model_error(tmp_path: Path) -> None:
    nowhere = redis.Redis(unix_socket_path=str(tmp_path / "no.sock"), retry=Retry(NoBackoff(), 0))
    limits = RedisRateLimiter(nowhere, Limits(10, 0), key="seke:test-limits:nowhere")

    with pytest.raises(VLLMError, match="rate limiter's Redis") as failed:
        limits.acquire(1, 0)
    assert failed.value.retryable
    # A call that was made is not lost because its correction cannot be written.
    limits.correct(Reservation("gone", 1, 10), requests=1, tokens=10)


class CountingBackend:
    """A backend that answers at once with a fixed usage per call."""

    name = "counting"
    model = "gpt-4o"

    def __init__(self, usage: Usage) -> None:
        self.usage = usage
        self.calls = 0
        self.closed = False

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        self.calls += 1
        return [Sample(kind="sample", raw="{}", error="x", usage=self.usage)] * k

    def verify(self, verification: VerificationRequest) -> Sample:
        self.calls += 1
        return Sample(kind="verification", raw="{}", error="x", usage=self.usage)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> CountingBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def test_it_refuses_a_sample_too_large_for_the_limit_without_calling_the_model(
    connection: redis.Redis,
) -> None:
    inner = CountingBackend(Usage(requests=1, prompt_tokens=100))
    backend = RateLimitedBackend(inner, limiter(connection, FakeTime(), Limits(0, 4000)))
    request = AnnotationRequest(image_bytes=b"", vocabulary=DEFAULT_VOCABULARY)

    with pytest.raises(VLLMError, match="5,000 tokens") as refused:
        backend.sample(request, 10, 1.0)

    assert not refused.value.retryable and inner.calls == 0
    backend.sample(request, 3, 1.0)
    assert inner.calls == 1


def test_it_counts_what_the_calls_really_used(connection: redis.Redis) -> None:
    # An endpoint that ignores n answers three choices with three requests.
    inner = CountingBackend(Usage(requests=1, prompt_tokens=900, completion_tokens=100))
    limits = limiter(connection, FakeTime(), Limits(100, 100_000))

    RateLimitedBackend(inner, limits).sample(
        AnnotationRequest(image_bytes=b"", vocabulary=DEFAULT_VOCABULARY), 3, 1.0
    )

    assert limits.usage() == (3, 3000)


@pytest.mark.django_db(transaction=True)
def test_it_fails_an_image_whose_request_can_never_fit_with_the_reason(
    tmp_path: Path, settings: Any, fake_openai: FakeOpenAI, connection: redis.Redis
) -> None:
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "sk-test-key", fake_openai.base_url
    # Room for one choice per request, not for SV-UAMC's first three.
    settings.OPENAI_RPM, settings.OPENAI_TPM = 0, 3000
    queue = get_queue("generation")
    queue.empty()
    run = run_create(
        dataset=make_dataset(tmp_path, n=2),
        backend="openai",
        model_name="gpt-4o-test-limits",
        params=UAMCParams(),
        concurrency=1,
    )
    work_in_process("generation")

    reasons = list(RunItem.objects.filter(run=run).values_list("status", "error"))
    assert len(reasons) == 2
    for status, error in reasons:
        assert status == "failed"
        assert "SEKE_OPENAI_TPM" in error and "a retry will not help" in error
    assert fake_openai.request_count == 0


@pytest.mark.django_db
def test_it_refuses_a_run_when_no_request_fits_the_tokens_limit(
    tmp_path: Path, settings: Any, fake_openai: FakeOpenAI
) -> None:
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "sk-test-key", fake_openai.base_url
    settings.OPENAI_RPM, settings.OPENAI_TPM = 0, 1000
    dataset = make_dataset(tmp_path, n=1)

    with pytest.raises(RunRefused, match="SEKE_OPENAI_TPM=1000"):
        run_create(dataset=dataset, backend="openai", model_name="gpt-4o", params=UAMCParams())
    assert not GenerationRun.objects.exists()
    with pytest.raises(backends.BackendUnavailable, match="2,750 tokens"):
        backends.backend_for("openai", "gpt-4o", PromptVersion(knowledge_text="k"))
