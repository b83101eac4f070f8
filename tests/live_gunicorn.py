"""The browser tests' server as a deployment runs it: gunicorn, DEBUG off, statics collected.

pytest-django's ``live_server`` serves from a thread of the test process, with
the test's settings and Django's own static file handler. With
``SEKE_LIVE_SERVER=gunicorn`` (CI's PostgreSQL pass), ``live_server`` is instead
a gunicorn process started from ``seke_app.gunicorn_conf`` with the README's
command, ``DEBUG=false``, ``ALLOWED_HOSTS`` of the one address the tests use, and
the static files collected once per test session (as ``collectstatic`` does on a
web machine) and served by WhiteNoise; a file missing there is a console error,
which fails the browser test.

The process is one per test, because each test has its own media folder: it runs
with the test's environment as a worker process does (``tests/workers.py``: the
test database, the test's ``SEKE_DATA_DIR`` and Redis). It boots as the test
starts, loading the application (some 4 CPU-seconds) while the test prepares its
data, and is waited for when the test first reads ``live_server.url``; if a
setting with a variable (``SETTINGS_ENV``) changed in between, it is started
again with the new value. A test that changes any other setting in this process
fails with the setting's name, since the server would not see it; so does one
that changes a setting after the server started.
"""

from __future__ import annotations

import copy
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.workers import MANAGE_PY, worker_env

KINDS = ("thread", "gunicorn")
# The README's command (after "gunicorn"); tests/test_gunicorn.py checks they agree.
SERVER_ARGS = ["-c", "python:seke_app.gunicorn_conf", "seke_app.wsgi"]
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
# Straight to the server, whatever proxy the environment names.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def live_server_kind() -> str:
    """``SEKE_LIVE_SERVER``: "thread" (pytest-django's, the default) or "gunicorn"."""
    kind = os.environ.get("SEKE_LIVE_SERVER", "") or "thread"
    if kind not in KINDS:
        raise pytest.UsageError(f"SEKE_LIVE_SERVER must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def _mebibytes(value: Any) -> str:
    return repr(value / 1024 / 1024)


# Settings a test may change in this process, and the variable (and value) that
# gives the server the same setting.
SETTINGS_ENV: dict[str, Callable[[Any], tuple[str, str]]] = {
    "GOLD_RATE": lambda value: ("SEKE_GOLD_RATE", repr(float(value))),
    "MAX_UPLOAD_BYTES": lambda value: ("SEKE_MAX_UPLOAD_MB", _mebibytes(value)),
    # A bucket (tests/test_object_storage.py); None gives the empty value, unset.
    "OBJECT_STORAGE": lambda value: ("SEKE_STORAGE_URL", value.url() if value else ""),
    # tests/test_endpoint_probe_browser.py points the run form at the fake endpoint.
    "OPENAI_API_KEY": lambda value: ("OPENAI_API_KEY", str(value)),
    "OPENAI_BASE_URL": lambda value: ("OPENAI_BASE_URL", value or ""),
    "SEKE_MODEL": lambda value: ("SEKE_MODEL", str(value)),
    # tests/test_webhooks.py shortens the delivery's timeout and retry delays.
    "WEBHOOK_TIMEOUT": lambda value: ("SEKE_WEBHOOK_TIMEOUT", repr(float(value))),
    "WEBHOOK_RETRY_DELAYS": lambda value: (
        "SEKE_WEBHOOK_RETRY_DELAYS",
        ",".join(str(int(delay)) for delay in value),
    ),
}
# Settings that differ from the session's start for reasons the server's
# environment already covers: the test database (DATABASE_URL), the test's data
# folder, media and Redis (SEKE_DATA_DIR, REDIS_URL), its own statics.
PASSED_ON = {
    "DATABASES",
    "DATA_DIR",
    "MEDIA_ROOT",
    "STATIC_ROOT",
    "EMBEDDED_REDIS_DIR",
    "EMBEDDED_REDIS",
    "REDIS_URL",
    "RQ_QUEUES",
    # Made from OBJECT_STORAGE, as settings.py makes it from SEKE_STORAGE_URL.
    "STORAGES",
}


def _snapshot() -> dict[str, Any]:
    snapshot = {}
    for name in dir(django_settings):
        # SETTINGS_MODULE is not a setting: an override's holder of settings says None.
        if name.isupper() and name != "SETTINGS_MODULE":
            value = getattr(django_settings, name)
            try:
                snapshot[name] = copy.deepcopy(value)
            except (TypeError, copy.Error):
                snapshot[name] = value
    return snapshot


def _changed(since: dict[str, Any]) -> set[str]:
    now = _snapshot()
    return {name for name in since.keys() | now.keys() if since.get(name) != now.get(name)}


@pytest.fixture(scope="session", autouse=True)
def _settings_at_start() -> dict[str, Any]:
    """Every setting as the session starts, before any test changes one."""
    return _snapshot()


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``collectstatic`` into a folder of the test session, once for all its processes."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # The folder xdist's processes have in common.
    target = shared / "collected-static"
    with (shared / "collected-static.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "staticfiles.json").exists():
            env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            env.update(SEKE_DATA_DIR=str(shared / "collect-data"), SEKE_STATIC_ROOT=str(target))
            done = subprocess.run(
                [sys.executable, str(MANAGE_PY), "collectstatic", "--noinput", "-v", "0"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                pytest.fail(f"collectstatic failed:\n{done.stdout}{done.stderr}")
    return target


class _NothingToModify:
    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass


class GunicornServer:
    """What tests read of ``live_server`` (``url``), served by a gunicorn process.

    ``boot`` starts the process without waiting for it, so that it loads the
    application while the test prepares its data; the first ``url`` waits until
    it is healthy, after starting it again if a setting changed since the boot.
    """

    def __init__(self, *, static_root: Path, settings_at_start: dict[str, Any]) -> None:
        self._static_root = static_root
        self._settings_at_start = settings_at_start
        self._process: subprocess.Popen[bytes] | None = None
        self._booted_with: dict[str, str] = {}
        self._ready = False
        self._started_with: dict[str, Any] = {}
        self._log_path = Path(django_settings.DATA_DIR) / "gunicorn.log"
        self._url = ""
        # pytest-django's helper enables and disables this around each test. Its
        # thread server needs its host allowed in this process; this server has its
        # own ALLOWED_HOSTS, and the test's settings stay as the test left them.
        self._live_server_modified_settings = _NothingToModify()

    def boot(self) -> None:
        """Start the process now; ``url`` waits for it."""
        self._spawn(self.environment())

    @property
    def url(self) -> str:
        if not self._ready:
            environment = self.environment()
            if self._process is None or environment != self._booted_with:
                self.stop()
                self._spawn(environment)
            self._wait_until_healthy()
            self._ready = True
            self._started_with = _snapshot()
        return self._url

    def __str__(self) -> str:
        return self.url

    def __add__(self, other: str) -> str:
        return f"{self.url}{other}"

    def output(self, last: int = 6000) -> str:
        """The end of what gunicorn and the application logged, for failure messages."""
        if not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-last:]

    def environment(self) -> dict[str, str]:
        """The server's variables: this test's database, Redis and data folder, its
        settings that have a variable, and the production switches."""
        changed = _changed(self._settings_at_start)
        unknown = sorted(changed - PASSED_ON - SETTINGS_ENV.keys())
        if unknown:
            pytest.fail(
                f"this test changes {', '.join(unknown)} in the test process, which the"
                " gunicorn live server would not see: give the setting's variable in"
                " SETTINGS_ENV (tests/live_gunicorn.py)"
            )
        extra = dict(
            setting_to_env(getattr(django_settings, name))
            for name, setting_to_env in SETTINGS_ENV.items()
        )
        return worker_env(extra=extra) | {
            "DEBUG": "false",
            "ALLOWED_HOSTS": HOST,
            "SECRET_KEY": django_settings.SECRET_KEY,
            "SEKE_STATIC_ROOT": str(self._static_root),
            # One worker is enough for one browser; threads serve its parallel requests.
            "SEKE_WEB_WORKERS": "1",
            "SEKE_WEB_THREADS": "8",
            "SEKE_WEB_GRACEFUL_TIMEOUT": "5",
        }

    def _spawn(self, environment: dict[str, str]) -> None:
        self._booted_with = environment
        # The test process binds the port and hands gunicorn the listening socket,
        # so no other process can take the port between choosing and binding it.
        with socket.create_server((HOST, 0)) as listener:
            port = listener.getsockname()[1]
            with self._log_path.open("wb") as log:
                # gunicorn's control socket is one file per user by default,
                # which parallel test processes would take from each other.
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "--no-control-socket", *SERVER_ARGS],
                    cwd=MANAGE_PY.parent,
                    env={**environment, "SEKE_BIND": f"fd://{listener.fileno()}"},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(listener.fileno(),),
                    start_new_session=True,
                )
        self._url = f"http://{HOST}:{port}"

    def _wait_until_healthy(self) -> None:
        """Wait for /healthz to answer 200: the application loaded, its database and
        Redis answer."""
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        answer = "no answer"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self._process.returncode}:\n{self.output()}")
            try:
                with NO_PROXY_OPENER.open(f"{self._url}/healthz", timeout=5):
                    return
            except urllib.error.HTTPError as exc:
                answer = f"{exc.code} {exc.read().decode(errors='replace')}"
                if exc.code != 503:  # Only "not ready yet" may change by waiting.
                    break
            except OSError as exc:
                answer = str(exc)
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"gunicorn's /healthz did not answer 200: {answer}\n{self.output()}")

    def stop(self, *, wait: bool = True) -> None:
        """SIGTERM (a graceful stop); with ``wait``, wait until it has stopped."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        if wait:
            self.wait_stopped()

    def wait_stopped(self) -> None:
        """Wait for a stopping server to exit; SIGKILL it if it takes too long."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    def check_settings_unchanged(self) -> None:
        """Fail if the test changed a setting after the server started with the old one."""
        if not self._ready:
            return
        late = sorted(_changed(self._started_with))
        if late:
            pytest.fail(
                f"this test changed {', '.join(late)} after the gunicorn live server started;"
                " change it before the test first reads live_server.url"
            )


@pytest.fixture(scope="session")
def _stopping_servers(django_db_setup: None) -> Iterator[list[GunicornServer]]:
    """Servers told to stop, and not waited for: gunicorn takes a second or two to
    wind down, which the next test spends preparing. All have exited before the
    session ends, and before the test database is dropped (this fixture needs it),
    which PostgreSQL refuses while a server is still connected."""
    stopping: list[GunicornServer] = []
    yield stopping
    for server in stopping:
        server.wait_stopped()


@pytest.fixture
def live_server(
    transactional_db: None,
    _isolated_media: None,
    worker_redis: None,
    collected_static: Path,
    _settings_at_start: dict[str, Any],
    _stopping_servers: list[GunicornServer],
) -> Iterator[GunicornServer]:
    """pytest-django's ``live_server``, served by gunicorn (see the module)."""
    server = GunicornServer(static_root=collected_static, settings_at_start=_settings_at_start)
    server.boot()
    try:
        yield server
    finally:
        server.stop(wait=False)
        _stopping_servers.append(server)
        # Captured output is shown when the test fails: what the server logged.
        print(f"gunicorn's log:\n{server.output()}")
    server.check_settings_unchanged()
