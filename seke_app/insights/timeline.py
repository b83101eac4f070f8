"""The buckets of a run's cost and throughput chart, chosen from the data.

The chart counts annotations per bucket of time and draws the cumulative cost.
A fixed bucket (a minute) fills the chart with one bar for a short run and
labels its axis with one repeated time; the bucket is therefore chosen from the
span the annotations cover: the narrowest of ``BUCKETS`` that gives at most
``MOST_BUCKETS`` bars. Buckets start on round local times (a 10-second bucket
on :00, :10, ...; a day at local midnight).

The database groups by the finest unit the span needs (``database_unit``), so
that it returns a bounded number of rows, and Python merges them into buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models.functions import TruncHour, TruncMinute, TruncSecond
from django.utils import timezone

MOST_BUCKETS = 40
# Local times that buckets are counted from: a Monday at midnight.
_ORIGIN = datetime(2001, 1, 1)


@dataclass(frozen=True)
class Bucket:
    seconds: int
    # As the page says it: "annotations per minute in 10-second buckets".
    name: str


BUCKETS = tuple(
    Bucket(seconds, name)
    for seconds, name in (
        (5, "5-second"),
        (10, "10-second"),
        (15, "15-second"),
        (30, "30-second"),
        (60, "1-minute"),
        (120, "2-minute"),
        (300, "5-minute"),
        (600, "10-minute"),
        (900, "15-minute"),
        (1800, "30-minute"),
        (3600, "1-hour"),
        (7200, "2-hour"),
        (10800, "3-hour"),
        (21600, "6-hour"),
        (43200, "12-hour"),
        (86400, "1-day"),
        (7 * 86400, "7-day"),
    )
)


def bucket_for(span: timedelta) -> Bucket:
    """The narrowest bucket that cuts ``span`` into at most MOST_BUCKETS bars."""
    for bucket in BUCKETS:
        if span.total_seconds() / bucket.seconds < MOST_BUCKETS:
            return bucket
    return BUCKETS[-1]


def database_unit(span: timedelta) -> type[TruncSecond | TruncMinute | TruncHour]:
    """The unit the database groups by: fine enough for ``bucket_for(span)``, and at
    most a few thousand groups."""
    if span <= timedelta(hours=2):
        return TruncSecond
    if span <= timedelta(days=5):
        return TruncMinute
    return TruncHour


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    """The start of the bucket ``moment`` falls in, in the current time zone."""
    local = timezone.localtime(moment).replace(tzinfo=None)
    offset = (local - _ORIGIN).total_seconds()
    start = _ORIGIN + timedelta(seconds=offset // bucket.seconds * bucket.seconds)
    return timezone.make_aware(start)


def merge(rows: Iterable[Mapping[str, Any]], bucket: Bucket) -> list[tuple[datetime, int, float]]:
    """(start, annotations, cost) per bucket, in time order, from rows of ``at``, ``n``
    and ``cost`` grouped by a finer unit; buckets without an annotation are left out."""
    totals: dict[datetime, tuple[int, float]] = {}
    for row in rows:
        start = bucket_start(row["at"], bucket)
        n, cost = totals.get(start, (0, 0.0))
        totals[start] = (n + row["n"], cost + float(row["cost"] or 0))
    return [(start, n, cost) for start, (n, cost) in sorted(totals.items())]
