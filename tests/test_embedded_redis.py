"""The embedded Redis is a real redis-server that other processes reach."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from seke_app import queue


@pytest.fixture
def embedded(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings.EMBEDDED_REDIS = True
    settings.EMBEDDED_REDIS_DIR = tmp_path / "redis"
    # The handle of a server an earlier test started stays that test session's to stop.
    monkeypatch.setattr(queue, "_embedded", None)
    return tmp_path / "redis" / "redis.sock"


def test_it_starts_a_redis_server_that_a_second_process_reaches(embedded: Path) -> None:
    where = queue.start_embedded_redis()
    assert str(embedded) in where
    client = redis.Redis(unix_socket_path=str(embedded))
    client.set("seke-test", "from-the-first-process")
    code = (
        "import redis, sys\n"
        f"r = redis.Redis(unix_socket_path={str(embedded)!r})\n"
        "assert r.get('seke-test') == b'from-the-first-process'\n"
        "r.set('seke-reply', 'from-the-second-process')\n"
        "print(r.info('server')['redis_version'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()[0].isdigit()  # a real redis-server reports its version
    assert client.get("seke-reply") == b"from-the-second-process"
    server_pid = client.info("server")["process_id"]
    assert server_pid != 0
    client.shutdown(nosave=True)


def test_it_reuses_a_running_server(embedded: Path) -> None:
    queue.start_embedded_redis()
    client = redis.Redis(unix_socket_path=str(embedded))
    pid = client.info("server")["process_id"]
    queue.start_embedded_redis()
    assert redis.Redis(unix_socket_path=str(embedded)).info("server")["process_id"] == pid
    client.shutdown(nosave=True)
