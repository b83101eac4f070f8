"""The embedded redis-server runs while a SEKE process on the machine uses it.

Each process here is a new Python process with its own SEKE_DATA_DIR (the test's
tmp folder), as ``runserver``, ``rqworker`` or a command would be.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
# Uses the embedded Redis as any SEKE process does, then exits normally, or with
# "stay" waits until its stdin closes first.
USER = """
import os, sys
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "seke_app.settings"
django.setup()
from seke_app.queue import get_queue
queue = get_queue("default")
if "enqueue" in sys.argv:
    queue.enqueue("os.getcwd")
print(queue.count, flush=True)
if "stay" in sys.argv:
    sys.stdin.read()
"""


def env(data_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    return environ | {"SEKE_DATA_DIR": str(data_dir)}


def use_once(data_dir: Path, *args: str) -> str:
    """A process that uses the server and exits; what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", USER, *args],
        cwd=ROOT,
        env=env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def use_and_stay(data_dir: Path) -> subprocess.Popen[str]:
    """A process that uses the server until its stdin is closed."""
    process = subprocess.Popen(
        [sys.executable, "-c", USER, "stay"],
        cwd=ROOT,
        env=env(data_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()  # The server answered it.
    return process


def client(data_dir: Path) -> redis.Redis:
    # No retries: redis-py would retry a refused connection for seconds.
    return redis.Redis(
        unix_socket_path=str(data_dir / "redis" / "redis.sock"),
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def answers(data_dir: Path) -> bool:
    try:
        return bool(client(data_dir).ping())
    except (redis.ConnectionError, FileNotFoundError):
        return False


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    if answers(tmp_path):
        # A failed test left it running.
        with contextlib.suppress(redis.ConnectionError):
            client(tmp_path).shutdown(nosave=True)


def test_it_stops_the_server_when_its_last_user_exits(data_dir: Path) -> None:
    staying = use_and_stay(data_dir)
    assert answers(data_dir)
    # A second process comes and goes: the first still uses the server.
    use_once(data_dir)
    assert answers(data_dir)
    staying.communicate("", timeout=60)
    assert staying.returncode == 0
    assert not answers(data_dir)
    assert (data_dir / "redis" / "seke.rdb").exists()


def test_it_does_not_count_a_killed_process_as_a_user(data_dir: Path) -> None:
    killed = use_and_stay(data_dir)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    # A killed process stops nothing: the server keeps running...
    assert answers(data_dir)
    # ...until the next process that uses it exits.
    use_once(data_dir)
    assert not answers(data_dir)


def test_it_keeps_the_queue_from_one_start_to_the_next(data_dir: Path) -> None:
    assert use_once(data_dir, "enqueue") == "1"
    assert not answers(data_dir)
    # The next process starts the server again from the saved file.
    assert use_once(data_dir) == "1"
