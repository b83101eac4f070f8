"""Reading configuration from the environment, failing early and by name.

Every setting SEKE reads comes through these helpers, so that a malformed value
stops start-up with a message naming the variable instead of surfacing later as
an obscure error deep inside a job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlsplit


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


# What SEKE_STORAGE_URL may say after "?", and how an S3 bucket may be named (AWS's
# rules: 3 to 63 lowercase letters, digits, dots and hyphens, a letter or digit at
# each end).
_STORAGE_PARAMETERS = ("endpoint_url", "region", "addressing_style")
_ADDRESSING_STYLES = ("path", "virtual", "auto")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_STORAGE_EXAMPLE = "s3://BUCKET[/PREFIX]?endpoint_url=https://s3.example.org&region=us-east-1"
# Files read from the bucket are held in memory up to this size, beyond it in a
# temporary file (django-storages would otherwise hold any file whole in memory).
_READ_BUFFER_BYTES = 32 * 1024 * 1024
# How long a presigned link to a file in the bucket (an export's download) works.
DOWNLOAD_LINK_SECONDS = 300


@dataclass(frozen=True)
class ObjectStorage:
    """An S3-compatible bucket, and a key prefix in it, that holds SEKE's files.

    Parsed from ``SEKE_STORAGE_URL``. Credentials are no part of it: boto3 finds
    them where it always does (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a
    profile, an instance role), so the URL can be shown and logged without a secret.
    ``storages`` gives the entries of Django's STORAGES for the three kinds of file
    (see ``seke_app.media``), each under its own prefix of the bucket.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def url(self) -> str:
        """The SEKE_STORAGE_URL that gives this storage (for another process)."""
        query = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "addressing_style": self.addressing_style,
        }
        return f"{self}?{urlencode({k: v for k, v in query.items() if v})}"

    def backend(self, folder: str = "") -> dict[str, Any]:
        """A STORAGES entry for the files under ``folder`` of the prefix."""
        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": self.bucket,
                "location": "/".join(part for part in (self.prefix, folder) if part),
                "endpoint_url": self.endpoint_url,
                "region_name": self.region,
                "addressing_style": self.addressing_style,
                "signature_version": "s3v4",
                # Names are chosen by SEKE (content hashes, export codes); a name
                # taken is never overwritten, another one is chosen.
                "file_overwrite": False,
                # Objects get no ACL of their own: the bucket's policy (private)
                # decides who reads them.
                "default_acl": None,
                # Every URL to a file is presigned and expires: the bucket stays
                # private, and only an export's download link is ever handed out.
                "querystring_auth": True,
                "querystring_expire": DOWNLOAD_LINK_SECONDS,
                "max_memory_size": _READ_BUFFER_BYTES,
            },
        }

    def storages(self) -> dict[str, dict[str, Any]]:
        return {
            "default": self.backend(),
            "exports": self.backend("exports"),
            "imports": self.backend("imports"),
        }


def env_storage_url(name: str, env: Mapping[str, str] | None = None) -> ObjectStorage | None:
    """The bucket ``name`` points at, or None when unset or empty."""
    source = os.environ if env is None else env
    value = source.get(name, "").strip()
    return parse_storage_url(name, value) if value else None


def parse_storage_url(name: str, value: str) -> ObjectStorage:
    """``s3://BUCKET[/PREFIX][?endpoint_url=URL&region=REGION&addressing_style=STYLE]``.

    Without ``endpoint_url`` the bucket is on AWS; with one (MinIO, Ceph, Garage,
    moto) the bucket is addressed by path (``addressing_style=path``), which
    S3-compatible servers expect, unless the URL says otherwise.
    """
    parsed = urlsplit(value)
    if parsed.scheme != "s3":
        raise ConfigError(f"{name} must look like {_STORAGE_EXAMPLE}; got {value.split(':')[0]!r}")
    if "@" in parsed.netloc:
        raise ConfigError(
            f"{name} must not hold credentials: set AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY instead"
        )
    bucket = parsed.netloc
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{name} names the bucket {bucket!r}: a bucket name has 3 to 63 lowercase"
            " letters, digits, dots and hyphens, and starts and ends with a letter or digit"
        )
    if parsed.fragment:
        raise ConfigError(f"{name} must not have a #fragment")
    prefix = parsed.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"{name} has the key prefix {prefix!r}, with an empty, . or .. part")
    options = _storage_parameters(name, parsed.query)
    endpoint_url = options.get("endpoint_url")
    if endpoint_url is not None:
        endpoint = urlparse(endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            raise ConfigError(
                f"{name}: endpoint_url must be an http:// or https:// URL with a host name,"
                f" not {endpoint_url!r}"
            )
    region = options.get("region")
    if region is not None and not _REGION_NAME.fullmatch(region):
        raise ConfigError(f"{name}: region must look like us-east-1, not {region!r}")
    style = options.get("addressing_style", "path" if endpoint_url else "auto")
    if style not in _ADDRESSING_STYLES:
        raise ConfigError(
            f"{name}: addressing_style must be one of {', '.join(_ADDRESSING_STYLES)},"
            f" not {style!r}"
        )
    return ObjectStorage(bucket, prefix, endpoint_url, region, style)


def _storage_parameters(name: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, item in parse_qsl(query, keep_blank_values=True):
        if key not in _STORAGE_PARAMETERS:
            raise ConfigError(
                f"{name} has an unknown parameter {key!r}; known: {', '.join(_STORAGE_PARAMETERS)}"
            )
        if key in options:
            raise ConfigError(f"{name} gives {key} twice")
        if not item.strip():
            raise ConfigError(f"{name} gives {key} no value")
        options[key] = item.strip()
    return options
