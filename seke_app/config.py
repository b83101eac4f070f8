"""Reading configuration from the environment, failing early and by name.

Every setting SEKE reads comes through these helpers, so that a malformed value
stops start-up with a message naming the variable instead of surfacing later as
an obscure error deep inside a job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlparse


class ConfigError(Exception):
    """A configuration value is malformed; the message names the variable."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    """The variable's value; an empty or blank value counts as unset (``NAME=`` in a
    shell or an ``.env`` file), so that it never turns into the current directory
    or an empty model name."""
    source = os.environ if env is None else env
    value = source.get(name, "")
    return value if value.strip() else default


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    source = os.environ if env is None else env
    if name not in source:
        return default
    value = source[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false, 1/0, yes/no), not {source[name]!r}")


def env_int(
    name: str,
    default: int,
    env: Mapping[str, str] | None = None,
    *,
    minimum: int | None = None,
) -> int:
    source = os.environ if env is None else env
    if name not in source:
        return default
    try:
        value = int(source[name])
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {source[name]!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def env_float(
    name: str,
    default: float,
    env: Mapping[str, str] | None = None,
    *,
    minimum: float | None = None,
) -> float:
    source = os.environ if env is None else env
    if name not in source:
        return default
    try:
        value = float(source[name])
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {source[name]!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def env_list(name: str, default: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    source = os.environ if env is None else env
    if name not in source:
        return default
    items = [item.strip() for item in source[name].split(",")]
    if any(not item for item in items):
        raise ConfigError(f"{name} must be a comma-separated list without empty items")
    return items


def env_url(
    name: str,
    env: Mapping[str, str] | None = None,
    *,
    schemes: tuple[str, ...],
) -> str | None:
    """Return the URL in ``name`` (or None when unset or empty), checking its scheme."""
    source = os.environ if env is None else env
    value = source.get(name, "").strip()
    if not value:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{name} must start with one of {allowed}; got {value.split(':')[0]!r}")
    if parsed.scheme not in ("unix", "sqlite") and not parsed.hostname:
        raise ConfigError(f"{name} has no host name")
    return value


def env_choice(
    name: str,
    default: str,
    choices: tuple[str, ...],
    env: Mapping[str, str] | None = None,
) -> str:
    """The variable's value, which must be one of ``choices`` (compared case-insensitively,
    returned as spelled in ``choices``)."""
    value = env_str(name, default, env).strip()
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
