"""/healthz: the database, Redis and the live workers per queue, for load balancers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from seke_app import queue
from seke_app.health import _reason
from tests.workers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
QUEUES = {"default", "generation", "exports"}


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound by this test, never listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def healthz(query: str = "") -> tuple[int, dict[str, Any]]:
    response = Client().get(f"/healthz{query}")
    return response.status_code, json.loads(response.content)


@pytest.mark.django_db
def test_it_answers_ok_with_the_figures_without_a_login_or_a_session() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["status"] == "ok" and "problems" not in body
    for service in ("database", "redis"):
        assert body[service]["ok"] is True and body[service]["ms"] >= 0
    assert set(body["workers"]) == QUEUES
    assert all(isinstance(count, int) for count in body["workers"].values())
    assert "no-store" in response["Cache-Control"]
    # Nothing read the session or made a CSRF token: no cookie, no Vary on it.
    assert not response.cookies
    assert "Cookie" not in response.get("Vary", "")


@pytest.mark.django_db
def test_it_is_not_redirected_to_https_behind_a_tls_proxy(settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/login/").status_code == 301
    assert Client().get("/healthz").status_code == 200


@pytest.mark.django_db
def test_it_fails_when_redis_does_not_answer_and_says_why(settings: Any) -> None:
    with closed_port() as port:
        url = f"redis://:secret-word@127.0.0.1:{port}/0"
        settings.REDIS_URL = url
        settings.EMBEDDED_REDIS = False
        settings.RQ_QUEUES = {
            name: {**config, "URL": url} for name, config in settings.RQ_QUEUES.items()
        }
        status, body = healthz()
    assert status == 503
    assert body["status"] == "fail"
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is False and "ConnectionError" in body["redis"]["error"]
    assert body["workers"] is None
    assert body["problems"] == [f"Redis does not answer: {body['redis']['error']}"]
    assert "secret-word" not in json.dumps(body)


def test_it_blanks_a_configured_password_out_of_an_error(settings: Any) -> None:
    settings.RQ_QUEUES = {
        name: {**config, "URL": "redis://:secret-word@queue.internal:6379/0"}
        for name, config in settings.RQ_QUEUES.items()
    }
    said = _reason(RuntimeError("AUTH secret-word refused\n  by the server"))
    assert said == "RuntimeError: AUTH *** refused by the server"


def test_it_fails_when_the_database_does_not_answer_and_says_why(tmp_path: Path) -> None:
    # A process of its own: this test process cannot lose its test database.
    script = (
        "import json; from django.test import Client;"
        " r = Client().get('/healthz', HTTP_HOST='localhost');"
        " print(r.status_code, r.content.decode())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SEKE_DATA_DIR")}
    with closed_port() as port:
        env["DATABASE_URL"] = f"postgres://seke:secret-word@127.0.0.1:{port}/seke"
        env["SEKE_DATA_DIR"] = str(tmp_path)
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    status, _, content = result.stdout.strip().partition(" ")
    body = json.loads(content)
    assert status == "503"
    assert body["database"]["ok"] is False
    assert body["database"]["error"].startswith("OperationalError: ")
    assert f"port {port} failed" in body["database"]["error"]
    assert body["redis"]["ok"] is True
    assert body["problems"] == [f"the database does not answer: {body['database']['error']}"]
    assert "secret-word" not in result.stdout + result.stderr


def test_it_refuses_an_unknown_queue_in_require_workers(db: None) -> None:
    status, body = healthz("?require_workers=default,generaton")
    assert status == 400
    assert body["problems"] == [
        "require_workers must be 1, 0 or queue names among default, generation, exports;"
        " unknown: 'generaton'"
    ]


def test_it_answers_only_reads(db: None) -> None:
    assert Client().post("/healthz").status_code == 405
    assert Client().head("/healthz").status_code == 200


def wait_for_workers(expected: dict[str, int], worker: WorkerProcess) -> dict[str, Any]:
    """Poll /healthz until it counts ``expected`` workers on those queues."""
    deadline = time.monotonic() + 60
    while True:
        _, body = healthz()
        counts = body["workers"]
        if all(counts[name] == n for name, n in expected.items()):
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"/healthz counted {counts}, not {expected}:\n{worker.output()}")
        time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_it_counts_the_live_workers_per_queue_and_requires_them_when_asked(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    _, before = healthz()
    assert before["workers"] == {"default": 0, "generation": 0, "exports": 0}
    worker = start_worker(("default", "exports"))
    wait_for_workers({"default": 1, "exports": 1}, worker)
    status, body = healthz()
    assert status == 200 and body["workers"]["generation"] == 0
    # A worker rq still lists but whose record expired (it died unannounced) is not live.
    connection = queue.get_queue("default").connection
    connection.sadd(WORKERS_BY_QUEUE_KEY % "default", "rq:worker:gone")
    try:
        assert healthz()[1]["workers"]["default"] == 1
    finally:
        connection.srem(WORKERS_BY_QUEUE_KEY % "default", "rq:worker:gone")

    status, body = healthz("?require_workers=1")
    assert status == 503
    assert body["problems"] == ["no worker listens on the generation queue"]
    assert healthz("?require_workers=default,exports")[0] == 200

    # A worker stopped normally leaves the count as it shuts down (rq unregisters it
    # first; the start_worker fixture waits for the process).
    worker.terminate()
    wait_for_workers({"default": 0, "exports": 0}, worker)
    assert healthz("?require_workers=exports")[0] == 503
