"""Configuration: malformed values stop start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seke_app.config import ConfigError, env_bool, env_float, env_int, env_list, env_str, env_url

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
        ("SECRET_KEY", "short", "SECRET_KEY must be at least 32 characters"),
        ("ALLOWED_HOSTS", "a,,b", "ALLOWED_HOSTS must be a comma-separated list"),
        ("SEKE_MAX_PIXELS", "lots", "SEKE_MAX_PIXELS must be an integer"),
        ("SEKE_MAX_IMAGE_MB", "-3", "SEKE_MAX_IMAGE_MB must be at least"),
        ("SEKE_AU_VOCABULARY", "klingon", "SEKE_AU_VOCABULARY must be one of"),
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


def test_it_parses_values_with_the_helpers() -> None:
    env = {"B": "yes", "I": "7", "F": "0.5", "L": "a, b", "U": "redis://h:1/0"}
    assert env_bool("B", False, env) is True
    assert env_bool("missing", True, env) is True
    assert env_int("I", 0, env, minimum=1) == 7
    assert env_float("F", 0.0, env) == 0.5
    assert env_list("L", [], env) == ["a", "b"]
    assert env_url("U", env, schemes=("redis",)) == "redis://h:1/0"
    assert env_url("missing", env, schemes=("redis",)) is None
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
