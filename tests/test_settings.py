"""Configuration: malformed values stop start-up with a message naming the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seke_app.config import (
    ConfigError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
)

ROOT = Path(__file__).resolve().parent.parent


def start(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter, as the server would at start."""
    full = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    full.update({"SEKE_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "seke_app.settings"})
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEBUG", "maybe", "DEBUG must be a boolean"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL must start with one of"),
        ("DATABASE_URL", "postgres://", "DATABASE_URL has no host name"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must start with one of"),
        ("OPENAI_BASE_URL", "ftp://example.org", "OPENAI_BASE_URL must start with one of"),
        ("SECRET_KEY", "short", "SECRET_KEY must be at least 50 characters"),
        # Django's deployment check warns below 50 characters, so these are refused.
        ("SECRET_KEY", "k" * 32 + "abcdefghijklmnop", "SECRET_KEY must be at least 50"),
        ("SECRET_KEY", "abcd" * 20, "with at least 5 different ones"),
        ("SECRET_KEY", "django-insecure-" + "x1y2z3" * 9, "must not start with"),
        ("SEKE_LOG_LEVEL", "loud", "SEKE_LOG_LEVEL must be one of DEBUG, INFO"),
        ("SEKE_LOGIN_FAILURE_LIMIT", "0", "SEKE_LOGIN_FAILURE_LIMIT must be at least 1"),
        ("SEKE_LOGIN_COOLOFF_MINUTES", "soon", "SEKE_LOGIN_COOLOFF_MINUTES must be an integer"),
        ("SEKE_LOGIN_LOCKOUT_BY", "cookie", "SEKE_LOGIN_LOCKOUT_BY must be one of"),
        ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS must be at least 0"),
        ("SECURE_SSL_REDIRECT", "sometimes", "SECURE_SSL_REDIRECT must be a boolean"),
        ("ALLOWED_HOSTS", "a,,b", "ALLOWED_HOSTS must be a comma-separated list"),
        ("SEKE_MAX_PIXELS", "lots", "SEKE_MAX_PIXELS must be an integer"),
        ("SEKE_MAX_IMAGE_MB", "-3", "SEKE_MAX_IMAGE_MB must be at least"),
        ("SEKE_AU_VOCABULARY", "klingon", "SEKE_AU_VOCABULARY must be one of"),
        ("SEKE_OPENAI_TOP_LOGPROBS", "21", "SEKE_OPENAI_TOP_LOGPROBS must be at most 20"),
        ("SEKE_OPENAI_TOP_LOGPROBS", "-1", "SEKE_OPENAI_TOP_LOGPROBS must be at least 0"),
        ("SEKE_PRICES", "gpt-4o: 2.5", "SEKE_PRICES is not JSON"),
        ("SEKE_PRICES", '{"local": {"input": 1}}', "SEKE_PRICES local: output missing"),
        ("SEKE_PRICES", '{"local": {"input": -1, "output": 2}}', "non-negative price"),
    ],
)
def test_it_stops_start_up_naming_the_variable(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = start({variable: value}, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "ConfigError" in result.stderr


def test_it_starts_on_defaults_without_connecting(tmp_path: Path) -> None:
    # A REDIS_URL and DATABASE_URL that point nowhere must not matter at start:
    # nothing connects at import time.
    result = start(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "postgres://nobody@127.0.0.1:1/x"},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


def test_it_keeps_a_generated_secret_key_in_the_data_dir(tmp_path: Path) -> None:
    assert start({}, tmp_path).returncode == 0
    key = (tmp_path / "secret_key").read_text()
    assert len(key) >= 50
    assert start({}, tmp_path).returncode == 0
    assert (tmp_path / "secret_key").read_text() == key


def test_it_refuses_a_weak_key_file_naming_it(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("written-by-hand")
    result = start({}, tmp_path)
    assert result.returncode != 0
    assert f"SECRET_KEY in {tmp_path / 'secret_key'} must be at least 50" in result.stderr


# A view that fails, and the engine's retry warning, in a server with DEBUG off.
SERVER_ERROR = """
import django
django.setup()
from django.conf import settings
from django.test import Client
from django.urls import path

def boom(request):
    raise RuntimeError("boom")

urlpatterns = [path("boom", boom)]
settings.ROOT_URLCONF = "__main__"
status = Client(raise_request_exception=False).get("/boom", HTTP_HOST="localhost").status_code
print(status)

from seke_app.engine.llm import client
client.log.warning("VLLM request failed (%s); retry %d of %d in %.2f s", "HTTP 429", 1, 4, 0.5)
"""

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def test_it_logs_a_server_error_and_retries_to_stderr_with_time_and_level(
    tmp_path: Path,
) -> None:
    full = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    full.update(
        {
            "SEKE_DATA_DIR": str(tmp_path),
            "DEBUG": "false",
            "DJANGO_SETTINGS_MODULE": "seke_app.settings",
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", SERVER_ERROR],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "500", result.stderr
    assert re.search(
        rf"^{STAMP} ERROR django\.request: Internal Server Error: /boom$", result.stderr, re.M
    ), result.stderr
    assert "RuntimeError: boom" in result.stderr
    assert re.search(
        rf"^{STAMP} WARNING seke_app\.engine\.llm\.client: VLLM request failed \(HTTP 429\)",
        result.stderr,
        re.M,
    ), result.stderr


def test_it_documents_every_variable_in_env_example() -> None:
    """Every variable settings.py reads has a line in .env.example."""
    source = (ROOT / "seke_app" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z_]+)"', source))
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read - documented == set()


def test_it_parses_values_with_the_helpers() -> None:
    env = {"B": "yes", "I": "7", "F": "0.5", "L": "a, b", "U": "redis://h:1/0"}
    assert env_bool("B", False, env) is True
    assert env_bool("missing", True, env) is True
    assert env_int("I", 0, env, minimum=1) == 7
    assert env_float("F", 0.0, env) == 0.5
    assert env_list("L", [], env) == ["a", "b"]
    assert env_url("U", env, schemes=("redis",)) == "redis://h:1/0"
    assert env_url("missing", env, schemes=("redis",)) is None
    assert env_choice("C", "INFO", ("DEBUG", "INFO"), {"C": "debug"}) == "DEBUG"
    with pytest.raises(ConfigError, match="I must be at least 10"):
        env_int("I", 0, env, minimum=10)


def test_a_blank_value_counts_as_unset() -> None:
    assert env_str("SEKE_DATA_DIR", "default", {"SEKE_DATA_DIR": ""}) == "default"
    assert env_str("SEKE_MODEL", "gpt-4o", {"SEKE_MODEL": "  "}) == "gpt-4o"
    assert env_str("SEKE_MODEL", "gpt-4o", {"SEKE_MODEL": "gpt-4.1"}) == "gpt-4.1"


def test_an_empty_data_dir_is_not_the_current_directory(tmp_path: Path) -> None:
    # SEKE_DATA_DIR= once put the SQLite file and the secret key in the checkout.
    script = "from django.conf import settings; print(settings.DATA_DIR)"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"SEKE_DATA_DIR": "", "DJANGO_SETTINGS_MODULE": "seke_app.settings"})
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / ".seke-data"
    assert not (tmp_path / "secret_key").exists()


def test_it_accepts_a_sqlite_database_url(tmp_path: Path) -> None:
    result = start({"DATABASE_URL": f"sqlite:///{tmp_path}/other.sqlite3"}, tmp_path)
    assert result.returncode == 0, result.stderr


def test_it_gives_processes_starting_together_one_generated_key(tmp_path: Path) -> None:
    """A web process and its workers started at once in a new data folder."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.pop("SECRET_KEY", None)
    data = tmp_path / "data"
    env.update({"SEKE_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "seke_app.settings"})
    script = "from django.conf import settings; print(settings.SECRET_KEY)"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, results
    keys = {out.strip() for out, _ in results}
    assert keys == {(data / "secret_key").read_text().strip()}
    assert sorted(p.name for p in data.iterdir()) == ["secret_key"]


def test_it_never_replaces_a_key_another_process_published(tmp_path: Path) -> None:
    from seke_app import settings as seke_settings

    key_file = tmp_path / "secret_key"
    key_file.write_text("published by the process that came first")
    seke_settings._publish_new_key(key_file)
    assert key_file.read_text() == "published by the process that came first"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
