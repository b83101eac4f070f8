"""Leases on a run's images: how long a worker holds one, and how it keeps holding it.

A worker claims an image (``RunItem``) with a conditional UPDATE that sets
``lease_until`` and its own name; until then no other worker may take it. The
lease is renewed while the image is worked on: before each model call (which
also tells the worker whether it still holds the image) and, from a thread of
the chunk's own, every third of a lease, because one model call that waits out
timeouts, retries and the rate limits can last longer than a lease. A lease can
therefore be short (``SEKE_RUN_LEASE_SECONDS``, 30 by default): a worker that dies
stops renewing, and its images are taken over by the run's other jobs soon after.

Lease times are on the database's clock (``Now()``), never a worker's: workers on
several machines compare them, and a short lease must not depend on how well
their clocks agree.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import TracebackType
from typing import Self

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import DateTimeField, ExpressionWrapper, Q
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now

from seke_app.models import RunItem

log = logging.getLogger("seke.runs")

# A lease is renewed this many times per its length by a chunk's keeper thread,
# so that one late renewal never lets it lapse.
RENEWALS_PER_LEASE = 3


def lease_end() -> ExpressionWrapper[CombinedExpression]:
    """The end of a lease taken or renewed now, on the database's clock."""
    return ExpressionWrapper(
        Now() + timedelta(seconds=settings.RUN_LEASE_SECONDS), output_field=DateTimeField()
    )


def expired() -> Q:
    """Items held under a lease that has run out: their worker stopped renewing it."""
    return Q(status=RunItem.Status.LEASED, lease_until__lt=Now())


def poll_seconds() -> float:
    """How often a job with nothing left to start looks for images to take over.

    A tenth of a lease, between 0.1 and 2 seconds: a dead worker's image then
    waits at most a lease and this long before a live job takes it.
    """
    return min(2.0, max(0.1, settings.RUN_LEASE_SECONDS / 10))


def lease_renew(item_id: int, worker: str) -> bool:
    """Extend ``worker``'s lease on the item; False if it no longer holds the item."""
    renewed = RunItem.objects.filter(
        id=item_id, status=RunItem.Status.LEASED, worker=worker
    ).update(lease_until=lease_end())
    return renewed == 1


class LeaseKeeper:
    """Renews the leases of the images a chunk's threads hold, from a thread of its own.

    Used as a context manager around a chunk; the threads tell it which images
    they hold (``hold``, ``release``). Its thread opens a database connection of
    its own the first time it renews and closes it when the chunk ends.
    """

    def __init__(self, worker: str) -> None:
        self._worker = worker
        self._every = settings.RUN_LEASE_SECONDS / RENEWALS_PER_LEASE
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seke-lease-keeper", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def hold(self, item_id: int) -> None:
        with self._lock:
            self._held.add(item_id)

    def release(self, item_id: int) -> None:
        with self._lock:
            self._held.discard(item_id)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._every):
                with self._lock:
                    held = sorted(self._held)
                if held:
                    self._renew(held)
        finally:
            connection.close()

    def _renew(self, held: list[int]) -> None:
        try:
            RunItem.objects.filter(
                id__in=held, status=RunItem.Status.LEASED, worker=self._worker
            ).update(lease_until=lease_end())
        except DatabaseError as exc:
            # The next renewal may succeed; a lease that lapses meanwhile only lets
            # another worker take the image over, which the claims make safe.
            log.warning("could not renew the leases of %d images: %s", len(held), exc)
