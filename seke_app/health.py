"""``/healthz``: whether this web process can serve, for load balancers and monitors.

A web process is *healthy* when its database answers ``SELECT 1`` and its Redis
answers ``PING``: without the database no page works, and without Redis no
import, run or export can be queued. The answer also counts the live rq workers
on each queue, but zero workers alone does not fail it, because a web machine
serves pages whether or not workers run (often on other machines); a check that
wants workers asks for them with ``?require_workers=1`` (every queue) or
``?require_workers=generation,exports`` (those queues).

A *live* worker is one rq lists as listening on the queue whose own record in
Redis has not expired: rq refreshes it on every heartbeat and lets it expire
about seven minutes after a worker dies without saying so (``kill -9``, a lost
machine); a worker stopped normally leaves the list at once.

The check is cheap (one query, one ping, one set and one lookup per queue),
needs no log-in, touches no session and is never cached. A failure says which
service failed and the error it gave, with any configured password blanked out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import redis
from django.conf import settings
from django.db import Error as DatabaseError
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, Worker

from seke_app import queue

# Seconds a probe waits for Redis to accept a connection or to answer. A load
# balancer's check usually gives up after about five.
REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Probe:
    """One service's answer: whether it came, after how many milliseconds, or why not."""

    ok: bool
    ms: float
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"ok": self.ok, "ms": self.ms}
        if self.error:
            answer["error"] = self.error
        return answer


@dataclass(frozen=True)
class Health:
    """The whole answer; ``workers`` is None when Redis could not be asked."""

    database: Probe
    redis: Probe
    workers: dict[str, int] | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "status": "ok" if self.ok else "fail",
            "database": self.database.as_json(),
            "redis": self.redis.as_json(),
            "workers": self.workers,
        }
        if self.problems:
            answer["problems"] = self.problems
        return answer


def health_check(*, require_workers: Iterable[str] = ()) -> Health:
    """Probe the database and Redis, count the workers per queue, and say what fails.

    ``require_workers`` names queues on which at least one live worker must listen.
    """
    database = _probe_database()
    redis_probe, workers = _probe_redis()
    problems = []
    if not database.ok:
        problems.append(f"the database does not answer: {database.error}")
    if not redis_probe.ok:
        problems.append(f"Redis does not answer: {redis_probe.error}")
    for name in require_workers:
        if workers is not None and workers[name] == 0:
            problems.append(f"no worker listens on the {name} queue")
    return Health(database=database, redis=redis_probe, workers=workers, problems=problems)


def required_queues(value: str) -> list[str]:
    """The queues ``?require_workers=`` names: none for ""/0/false, every queue for
    1/true, or a comma-separated list of queue names; anything else is refused."""
    names = list(settings.RQ_QUEUES)
    if value.strip().lower() in ("", "0", "false"):
        return []
    if value.strip().lower() in ("1", "true"):
        return names
    asked = [part.strip() for part in value.split(",")]
    unknown = [part for part in asked if part not in names]
    if unknown:
        raise ValueError(
            f"require_workers must be 1, 0 or queue names among {', '.join(names)};"
            f" unknown: {', '.join(repr(part) for part in unknown)}"
        )
    return asked


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 with the figures when healthy, 503 with the problems otherwise."""
    try:
        required = required_queues(request.GET.get("require_workers", ""))
    except ValueError as exc:
        return JsonResponse({"status": "fail", "problems": [str(exc)]}, status=400)
    health = health_check(require_workers=required)
    return JsonResponse(health.as_json(), status=200 if health.ok else 503)


def _probe_database() -> Probe:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return Probe(ok=False, ms=_ms_since(started), error=_reason(exc))
    return Probe(ok=True, ms=_ms_since(started))


def _probe_redis() -> tuple[Probe, dict[str, int] | None]:
    """Ping the queues' Redis and count each queue's live workers there.

    Every queue is on the one Redis of ``REDIS_URL`` (or the embedded one, which
    is started if no process on the machine has started it yet, as any page that
    queues work would). The client is made for this check and retries nothing, so
    a Redis that is down fails the check at once instead of after redis-py's
    reconnection attempts.
    """
    started = time.perf_counter()
    client: redis.Redis | None = None
    try:
        if settings.EMBEDDED_REDIS:
            queue.start_embedded_redis()
        client = redis.Redis.from_url(
            str(settings.RQ_QUEUES["default"]["URL"]),
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        client.ping()
        probe = Probe(ok=True, ms=_ms_since(started))
        workers = {name: _live_workers(client, name) for name in settings.RQ_QUEUES}
    except (queue.QueueUnavailable, redis.RedisError, OSError) as exc:
        return Probe(ok=False, ms=_ms_since(started), error=_reason(exc)), None
    finally:
        if client is not None:
            client.close()
    return probe, workers


def _live_workers(client: redis.Redis, name: str) -> int:
    """Workers rq lists on the queue whose record has not expired (see the module)."""
    keys = Worker.all_keys(queue=Queue(name, connection=client))
    if not keys:
        return 0
    with client.pipeline(transaction=False) as pipeline:
        for key in keys:
            pipeline.exists(key)
        return sum(int(found) for found in pipeline.execute())


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _reason(exc: BaseException) -> str:
    """The error's type and message on one line, without any configured password."""
    message = " ".join(str(exc).split()) or "no message"
    for secret in _passwords():
        message = message.replace(secret, "***")
    return f"{type(exc).__name__}: {message}"


def _passwords() -> list[str]:
    found = [str(settings.DATABASES["default"].get("PASSWORD") or "")]
    found.append(urlparse(str(settings.RQ_QUEUES["default"]["URL"])).password or "")
    return [secret for secret in found if secret]
