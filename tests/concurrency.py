"""Threads that race on purpose, for the tests of row locks (PostgreSQL only)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from django.db import connection

# How long the racers wait for each other at a rendezvous. Code that serialises
# them never lets the second one arrive, so the wait runs out and they go on one
# by one; this is a wait, not a measurement.
MEET_SECONDS = 2.0

T = TypeVar("T")


def needs_postgresql() -> None:
    """Skip, with the reason, unless the tests run on PostgreSQL."""
    if connection.vendor != "postgresql":
        pytest.skip(reason="needs PostgreSQL row locks and concurrent connections (CI has them)")


def rendezvous(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, parties: int) -> None:
    """Make ``parties`` threads meet before any of them calls ``owner.name``.

    This forces the interleaving in which every racer has done the work before
    that call while none has done the call itself: the one that loses races when
    nothing serialises them.
    """
    original = getattr(owner, name)
    barrier = threading.Barrier(parties, timeout=MEET_SECONDS)

    def meet_then_call(*args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, meet_then_call)


def run_together(*work: Callable[[], T]) -> list[T]:
    """Run each callable in its own thread (and connection); their results, in order.

    An exception in a thread is re-raised here, after every thread has ended.
    """
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work[index]()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(work))]
