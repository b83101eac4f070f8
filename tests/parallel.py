"""A Redis of its own for each test process, so that processes can run side by side.

Tests empty queues, count the workers listening and reserve rate-limit tokens in
Redis; two test processes sharing one (``pytest -n 2``, pytest-xdist) would undo
each other's work. So each test session gets its own:

- with the embedded Redis, a server in a folder of the session's temporary
  directory, never the ``SEKE_DATA_DIR/redis`` of a demo that may be running;
- with ``REDIS_URL``, xdist's process gwN uses the URL's database number minus N
  (``redis://host:6379/15`` with ``-n 2``: 15 and 14), in this process's settings
  and in the ``REDIS_URL`` its subprocesses inherit. A serial run uses the URL as
  given.

The database and media are already per process: pytest-django gives each xdist
process its own PostgreSQL test database, settings.py its own SQLite file, and
each test its own media folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings


def redis_url_for_process(url: str, worker: str) -> str:
    """``url`` with the database of xdist process ``worker`` ("gw0", "gw1", ...)."""
    index = int(worker.removeprefix("gw"))
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise pytest.UsageError(
            f"parallel tests need REDIS_URL as redis:// or rediss://, not {parsed.scheme}://"
        )
    base = int(parsed.path.strip("/") or 0)
    if base - index < 0:
        raise pytest.UsageError(
            f"REDIS_URL's database {base} leaves none for test process {worker}: each"
            " parallel process N uses the database number minus N; give a higher one"
        )
    return urlunparse(parsed._replace(path=f"/{base - index}"))


def _use_queue_url(url: str) -> None:
    settings.RQ_QUEUES = {
        name: {**config, "URL": url} for name, config in settings.RQ_QUEUES.items()
    }


@pytest.fixture(scope="session", autouse=True)
def _redis_of_this_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if settings.EMBEDDED_REDIS:
        directory = tmp_path_factory.mktemp("redis")
        settings.EMBEDDED_REDIS_DIR = directory
        _use_queue_url(f"unix://{directory / 'redis.sock'}")
    elif worker:
        url = redis_url_for_process(str(settings.REDIS_URL), worker)
        settings.REDIS_URL = url
        os.environ["REDIS_URL"] = url
        _use_queue_url(url)
    yield
