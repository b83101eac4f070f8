"""rq workers in their own processes, against the test's database and Redis.

A worker started here is ``manage.py rqworker`` in a new process and session (so
a Ctrl-C meant for pytest does not stop it halfway; ``kill_worker_process`` and the
``start_worker`` fixture end it and its work horses). Its environment points at
the database the test uses and at the same Redis: ``REDIS_URL`` passes through,
or, for the embedded Redis, ``SEKE_DATA_DIR`` is the test's tmp folder, where the
``worker_redis`` fixture has put the socket and where ``MEDIA_ROOT`` already is.

A worker can share an SQLite test database only if it is a file (settings.py
gives the tests one); with an in-memory one the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import django_rq
import psutil  # type: ignore[import-untyped]
import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import SimpleWorker, Worker

from seke_app import queue

MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"
# Variables of the test process that must not reach a worker: the worker sets its
# own database and data folder, and it runs no event loop.
_NOT_INHERITED = (
    "DATABASE_URL",
    "SEKE_DATA_DIR",
    "SEKE_RUN_LEASE_SECONDS",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


class BurstWorker(SimpleWorker):
    """An rq worker for this process, without rq's pubsub thread.

    That thread only receives "stop the job" commands, and with redis-py 8 rq's
    stopping it waits out the thread's blocking 60-second read, so a test that
    ran a worker took a minute now and then.
    """

    def subscribe(self) -> None:
        pass


def emptied_queue(queue_name: str) -> Any:
    """An autouse fixture that empties the queue before and after each test of a module.

    Assign it in the module: ``_own_queue = emptied_queue("exports")``.
    """

    @pytest.fixture(autouse=True)
    def _own_queue() -> Iterator[None]:
        own = queue.get_queue(queue_name)
        own.empty()
        yield
        own.empty()

    return _own_queue


def work_in_process(queue_name: str = "generation") -> None:
    """Run the queue's jobs here, one after another, until it is empty."""
    worker = BurstWorker(
        [queue.get_queue(queue_name)], connection=django_rq.get_connection(queue_name)
    )
    worker.work(burst=True)


def database_url() -> str:
    """The URL of the database this process is using now (the test database)."""
    db = connection.settings_dict
    options = db.get("OPTIONS") or {}
    if connection.vendor == "sqlite":
        name = str(db["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            pytest.skip(reason=f"test database {name!r} is in memory: no worker can open it")
        query = urlencode(
            {k: v for k, v in options.items() if k in ("timeout", "transaction_mode")}
        )
        # "localhost" is ignored for SQLite; it is there because settings.py refuses a
        # DATABASE_URL without a host name, which sqlite:////path/to/file has none of.
        return f"sqlite://localhost/{Path(name).resolve()}" + (f"?{query}" if query else "")
    if connection.vendor == "postgresql":
        user = quote(db.get("USER") or "", safe="")
        password = quote(db.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        # settings.py wants a host name in DATABASE_URL, so a socket setup uses TCP here.
        host = db.get("HOST") or "localhost"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{auth}{host}{port}/{quote(str(db['NAME']), safe='')}"
    raise NotImplementedError(f"no worker support for the {connection.vendor} backend")


def worker_env(
    *, lease_seconds: int | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a worker that shares this test's database, Redis and media,
    with ``extra`` variables on top (an endpoint's address, say)."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["DATABASE_URL"] = database_url()
    env["SEKE_DATA_DIR"] = str(django_settings.DATA_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    if django_settings.EMBEDDED_REDIS:
        expected = Path(django_settings.DATA_DIR) / "redis"
        if Path(django_settings.EMBEDDED_REDIS_DIR) != expected:
            raise RuntimeError(
                "use the worker_redis fixture: the worker looks for the"
                f" embedded Redis in {expected}"
            )
    else:
        env["REDIS_URL"] = str(django_settings.REDIS_URL)
    if Path(django_settings.MEDIA_ROOT) != Path(django_settings.DATA_DIR) / "media":
        raise RuntimeError(
            "the worker would look for images in DATA_DIR/media,"
            f" not in MEDIA_ROOT ({django_settings.MEDIA_ROOT})"
        )
    if lease_seconds is not None:
        env["SEKE_RUN_LEASE_SECONDS"] = str(lease_seconds)
    return env | (extra or {})


class WorkerProcess(subprocess.Popen[bytes]):
    """A worker process that knows where its output went."""

    log_path: Path

    def output(self, last: int = 4000) -> str:
        """The end of what the worker printed, for assertion messages."""
        return self.log_path.read_text(errors="replace")[-last:]


def start_worker_process(
    queues: tuple[str, ...] = ("generation",),
    *,
    burst: bool = False,
    lease_seconds: int | None = None,
    env: dict[str, str] | None = None,
) -> WorkerProcess:
    """``manage.py rqworker`` in a new session, its output in a file in DATA_DIR."""
    log_path = Path(django_settings.DATA_DIR) / f"worker-{time.monotonic_ns()}.log"
    command = [sys.executable, str(MANAGE_PY), "rqworker", *queues]
    if burst:
        command.append("--burst")
    with log_path.open("wb") as log_file:
        process = WorkerProcess(
            command,
            cwd=MANAGE_PY.parent,
            env=worker_env(lease_seconds=lease_seconds, extra=env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.log_path = log_path
    return process


def kill_worker_process(process: WorkerProcess) -> None:
    """SIGKILL the worker and the work horses it forked, as a crashed machine would.

    rq moves each work horse into a process group of its own (``os.setpgrp()``),
    so killing the worker's group would leave the horse finishing its job. The
    worker is stopped first so that it forks no new horse while its children are
    listed.
    """
    try:
        worker = psutil.Process(process.pid)
        worker.suspend()
        family = [*worker.children(recursive=True), worker]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait(timeout=10)
    psutil.wait_procs(family, timeout=10)


def wait_for_worker(process: WorkerProcess, timeout: float) -> None:
    """Wait for a burst worker to finish; fail with its output if it does not."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_worker_process(process)
        pytest.fail(f"the worker did not finish in {timeout} s:\n{process.output()}")
    assert code == 0, f"the worker exited with {code}:\n{process.output()}"


@pytest.fixture
def worker_redis(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test's Redis, where a worker process finds it; queues empty before and after.

    With the embedded Redis, the server is started on DATA_DIR/redis/redis.sock
    (DATA_DIR is the test's tmp folder) and stopped at the end of the test.
    """
    if settings.EMBEDDED_REDIS:
        redis_dir = Path(settings.DATA_DIR) / "redis"
        settings.EMBEDDED_REDIS_DIR = redis_dir
        settings.RQ_QUEUES = {
            name: {**config, "URL": f"unix://{redis_dir / 'redis.sock'}"}
            for name, config in settings.RQ_QUEUES.items()
        }
        # A server another test started is not this test's to stop.
        monkeypatch.setattr(queue, "_embedded", None)
    queues: list[Any] = [queue.get_queue(name) for name in settings.RQ_QUEUES]
    for each in queues:
        each.empty()
    yield
    for each in queues:
        each.empty()
    if settings.EMBEDDED_REDIS:
        queue.stop_embedded_redis()
        _shut_down(queue.embedded_socket_path())


def _shut_down(socket: Path) -> None:
    """Stop the redis-server on ``socket`` if it still answers.

    ``stop_embedded_redis`` leaves a server running while another process uses
    it: a worker this test started and did not kill, say. No retries: redis-py
    retries a refused connection for seconds, and none here means it stopped.
    """
    client = redis.Redis(
        unix_socket_path=str(socket), socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    # The server closes the connection as it exits; no server means nothing to stop.
    with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
        client.shutdown(nosave=True)


@pytest.fixture
def start_worker(worker_redis: None) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker_process``, with every worker still running killed at the end."""
    started: list[WorkerProcess] = []

    def start(queues: tuple[str, ...] = ("generation",), **options: Any) -> WorkerProcess:
        process = start_worker_process(queues, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            # SIGTERM is rq's warm shutdown, which removes the worker from Redis's
            # registry; one still busy after a while is killed.
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_worker_process(process)
        forget_worker(process.pid)


def forget_worker(pid: int) -> None:
    """Remove a stopped worker process from the registry of every queue's Redis.

    A killed worker stays registered until its key expires (minutes), and a later
    test sharing that Redis (CI's) would count it as listening.
    """
    for name in django_settings.RQ_QUEUES:
        connection = queue.get_queue(name).connection
        for worker in Worker.all(connection=connection):
            if worker.pid == pid:
                worker.register_death()
