"""The production server: gunicorn with the README's command, its settings, its statics."""

from __future__ import annotations

import gc
import gzip
import os
import re
import runpy
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any
from urllib.request import Request

import pytest

from seke_app.gunicorn_conf import available_cores, default_workers, post_worker_init
from tests.live_gunicorn import NO_PROXY_OPENER, SERVER_ARGS, GunicornServer

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "seke_app" / "gunicorn_conf.py"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def readme_commands() -> list[str]:
    """The lines of the sh blocks in the README's Production section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Production\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with NO_PROXY_OPENER.open(Request(url, headers=headers), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_readme_starts_the_server_the_browser_tests_use() -> None:
    commands = readme_commands()
    assert ".venv/bin/python manage.py collectstatic --noinput" in commands
    served = [c for c in commands if c.startswith(".venv/bin/gunicorn ")]
    assert [c.split()[1:] for c in served] == [SERVER_ARGS]


def test_it_reads_its_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("SEKE_WEB_", "SEKE_BIND")):
            monkeypatch.delenv(name)
    defaults = runpy.run_path(str(CONF))
    assert defaults["bind"] == ["127.0.0.1:8000"]
    assert defaults["workers"] == default_workers(available_cores())
    assert (defaults["worker_class"], defaults["threads"]) == ("gthread", 4)
    assert (defaults["timeout"], defaults["graceful_timeout"]) == (120, 120)
    assert (defaults["max_requests"], defaults["max_requests_jitter"]) == (1000, 100)
    monkeypatch.setenv("SEKE_BIND", "0.0.0.0:9000, unix:/run/seke.sock")
    monkeypatch.setenv("SEKE_WEB_WORKERS", "3")
    monkeypatch.setenv("SEKE_WEB_THREADS", "16")
    monkeypatch.setenv("SEKE_WEB_TIMEOUT", "60")
    monkeypatch.setenv("SEKE_WEB_GRACEFUL_TIMEOUT", "600")
    monkeypatch.setenv("SEKE_WEB_MAX_REQUESTS", "0")
    configured = runpy.run_path(str(CONF))
    assert configured["bind"] == ["0.0.0.0:9000", "unix:/run/seke.sock"]
    assert (configured["workers"], configured["threads"]) == (3, 16)
    assert (configured["timeout"], configured["graceful_timeout"]) == (60, 600)
    assert (configured["max_requests"], configured["max_requests_jitter"]) == (0, 0)


def test_the_default_workers_are_two_per_core_and_one_at_most_eight() -> None:
    assert [default_workers(cores) for cores in (1, 2, 3, 4, 64)] == [3, 5, 7, 8, 8]


def test_a_worker_freezes_what_the_application_loaded() -> None:
    assert gc.get_freeze_count() == 0
    try:
        post_worker_init(object())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_it_refuses_a_malformed_variable_before_starting(tmp_path: Path) -> None:
    env = {**os.environ, "SEKE_WEB_THREADS": "0", "SEKE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--no-control-socket", *SERVER_ARGS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SEKE_WEB_THREADS must be at least 1, not 0" in result.stderr


def test_it_documents_every_variable_in_env_example() -> None:
    source = CONF.read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z_]+)"', source))
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read and read - documented == set()


@pytest.fixture
def server(transactional_db: None, worker_redis: None, _settings_at_start: dict[str, Any]) -> Any:
    """A gunicorn server of this test (the static folder is given by each test)."""

    def start(static_root: Path) -> GunicornServer:
        started = GunicornServer(static_root=static_root, settings_at_start=_settings_at_start)
        started.boot()
        servers.append(started)
        return started

    servers: list[GunicornServer] = []
    yield start
    for each in servers:
        each.stop()


def stylesheet_url(page: bytes) -> str:
    found = re.search(r'<link rel="stylesheet" href="([^"]+)">', page.decode())
    assert found, page.decode()[:2000]
    return found.group(1)


def test_it_serves_with_debug_off_and_the_collected_static_files(
    server: Any, collected_static: Path
) -> None:
    running = server(collected_static)
    status, _, page = get(f"{running.url}/login/")
    assert status == 200
    css = stylesheet_url(page)
    # Collected: a name that carries the file's hash, cached for good, compressed.
    assert re.fullmatch(r"/static/css/seke\.[0-9a-f]{12}\.css", css), css
    status, headers, body = get(f"{running.url}{css}", **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert "immutable" in headers["Cache-Control"]
    assert headers["Content-Encoding"] == "gzip"
    assert b"{" in gzip.decompress(body)
    # DEBUG is off: a missing page is the product's 404, not Django's debug page.
    status, _, missing = get(f"{running.url}/no-such-page/")
    assert status == 404 and b"URLconf" not in missing
    access = rf'^{STAMP} INFO gunicorn\.access: 127\.0\.0\.1 "GET /login/ HTTP/1\.1" 200 \d+ bytes'
    assert re.search(access, running.output(), re.M), running.output()


def test_it_serves_static_files_not_collected_yet_from_their_folders(
    server: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "nothing-collected"
    empty.mkdir()
    running = server(empty)
    status, _, page = get(f"{running.url}/login/")
    css = stylesheet_url(page)
    assert css == "/static/css/seke.css"
    status, _, body = get(f"{running.url}{css}")
    assert status == 200
    assert body == (ROOT / "static" / "css" / "seke.css").read_bytes()


def test_a_setting_the_server_would_not_see_fails_the_test_by_its_name(
    settings: Any, tmp_path: Path, _settings_at_start: dict[str, Any]
) -> None:
    settings.REVIEW_UNDO_SECONDS = 5
    server = GunicornServer(static_root=tmp_path, settings_at_start=_settings_at_start)
    with pytest.raises(pytest.fail.Exception, match="changes REVIEW_UNDO_SECONDS in the test"):
        server.boot()


def test_a_setting_with_a_variable_reaches_the_server_through_it(
    settings: Any, tmp_path: Path, worker_redis: None, _settings_at_start: dict[str, Any]
) -> None:
    settings.MAX_UPLOAD_BYTES = 3 * 1024 * 1024
    settings.GOLD_RATE = 0.0
    server = GunicornServer(static_root=tmp_path, settings_at_start=_settings_at_start)
    environment = server.environment()
    assert (environment["SEKE_MAX_UPLOAD_MB"], environment["SEKE_GOLD_RATE"]) == ("3.0", "0.0")
    assert (environment["DEBUG"], environment["ALLOWED_HOSTS"]) == ("false", "127.0.0.1")
