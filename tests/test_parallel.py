"""Test processes side by side: each has a Redis of its own (tests/parallel.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from seke_app import queue
from tests.parallel import redis_url_for_process


def test_each_parallel_process_takes_the_next_lower_database() -> None:
    assert redis_url_for_process("redis://127.0.0.1:6379/15", "gw0") == "redis://127.0.0.1:6379/15"
    assert redis_url_for_process("redis://:pw@queue:6379/15", "gw1") == "redis://:pw@queue:6379/14"


def test_it_refuses_a_database_that_leaves_none_for_a_process() -> None:
    with pytest.raises(pytest.UsageError, match="database 0 leaves none for test process gw1"):
        redis_url_for_process("redis://127.0.0.1:6379", "gw1")


def test_this_process_uses_a_redis_of_its_own(
    settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    urls = {config["URL"] for config in settings.RQ_QUEUES.values()}
    if settings.EMBEDDED_REDIS:
        # Never SEKE_DATA_DIR/redis, which a demo or another test process may use.
        redis_dir = Path(settings.EMBEDDED_REDIS_DIR)
        assert redis_dir.is_relative_to(tmp_path_factory.getbasetemp())
        assert urls == {f"unix://{redis_dir / 'redis.sock'}"}
        assert queue.embedded_socket_path() == redis_dir / "redis.sock"
    else:
        assert urls == {settings.REDIS_URL}
        # What subprocesses inherit is the same Redis.
        assert os.environ["REDIS_URL"] == settings.REDIS_URL
