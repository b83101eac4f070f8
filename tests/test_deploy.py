"""Production settings: the README's production environment passes ``check --deploy``."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent

# What ``check --deploy`` asks of a server reached over https.
HTTPS_VARIABLES = {
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
}


def production_environment() -> dict[str, str]:
    """The variables in the README's "Production" block, as a new user would copy them."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Production\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's Production section has no sh block"
    found = re.findall(r"^(?:export )?([A-Z_]+)=(\S+)", block.group(1), re.M)
    return dict(found)


def manage(
    args: list[str], env: dict[str, str], data_dir: Path
) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` in a fresh interpreter, with only ``env`` configuring it."""
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SECURE_", "SEKE_", "SECRET_", "DATABASE_", "REDIS_"))
    }
    full.update({"SEKE_DATA_DIR": str(data_dir), **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_documents_every_https_switch_in_the_production_section() -> None:
    assert set(production_environment()) >= HTTPS_VARIABLES | {"DEBUG", "ALLOWED_HOSTS"}


def test_it_passes_check_deploy_with_the_readme_environment_and_a_generated_key(
    tmp_path: Path,
) -> None:
    result = manage(
        ["check", "--deploy", "--fail-level", "WARNING"], production_environment(), tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    # The key was generated into the data directory, and passed the check.
    assert (tmp_path / "secret_key").exists()


def test_it_passes_check_deploy_with_a_configured_key(tmp_path: Path) -> None:
    env = {**production_environment(), "SECRET_KEY": secrets.token_urlsafe(50)}
    result = manage(["check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize("variable", sorted(HTTPS_VARIABLES))
def test_it_warns_when_one_https_switch_is_left_out(tmp_path: Path, variable: str) -> None:
    env = {k: v for k, v in production_environment().items() if k != variable}
    result = manage(["check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode != 0
    assert "security.W" in result.stderr


def test_it_trusts_the_proxy_header_only_when_told_to(tmp_path: Path) -> None:
    script = [
        "shell",
        "-v",
        "0",
        "-c",
        "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)",
    ]
    assert manage(script, {}, tmp_path).stdout.strip() == "None"
    told = manage(script, {"SEKE_BEHIND_TLS_PROXY": "true"}, tmp_path)
    assert told.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')", told.stderr


@pytest.mark.django_db
def test_it_serves_plain_http_on_the_local_defaults() -> None:
    # The demo and the tests run over http on 127.0.0.1: nothing redirects to https.
    response = Client().get("/login/")
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers
    assert response.cookies["csrftoken"]["secure"] == ""
