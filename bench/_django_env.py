"""Set-up shared by the Django benchmarks: their own data folder, database and Redis.

A benchmark never touches a developer's data. It makes a temporary
``SEKE_DATA_DIR`` (so the SQLite file, the media, the secret key and the embedded
Redis socket all live there) and, when ``DATABASE_URL`` names a PostgreSQL server,
a throwaway database on that server that it drops at the end. When ``REDIS_URL``
is set, the benchmark claims a database number of that Redis that holds no keys
(never the one in the URL, nor CI's 15) with an owner key, so its queues never mix
with those of a test run or a developer's workers, and empties it at the end.

Environment variables are set before ``django.setup()``: settings are read once,
at start. Worker processes get the same environment, so they find the same
database, Redis and media folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
# The benchmarks run from a checkout, so the repository root goes on the path.
sys.path.insert(0, str(REPO))

MANAGE_PY = REPO / "manage.py"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


class BenchSetupError(Exception):
    """The benchmark cannot be set up as asked; the message says what to change."""


@dataclass
class BenchEnv:
    """What one benchmark process set up, and how to take it down again."""

    data_dir: Path
    database_name: str | None = None
    admin_url: str | None = None
    redis_url: str | None = None
    keep: bool = False
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def describe(self) -> str:
        database = (
            f"PostgreSQL database {self.database_name} (throwaway)"
            if self.database_name
            else f"SQLite in {self.data_dir}"
        )
        redis = f"Redis {_redacted(self.redis_url)}" if self.redis_url else "embedded Redis"
        return f"{database}; {redis}; SEKE_DATA_DIR={self.data_dir}"

    def worker_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env


def _redacted(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def _check_local(url: str, variable: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOCAL_HOSTS:
        raise BenchSetupError(
            f"{variable} points at {host!r}: benchmarks only use servers on 127.0.0.1"
        )


def _create_postgres_database(url: str, label: str) -> tuple[str, str, str]:
    """Create an empty database on the server of ``url``; return (name, its URL, admin URL)."""
    import psycopg

    _check_local(url, "DATABASE_URL")
    parts = urlsplit(url)
    name = f"seke_bench_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    admin_url = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    bench_url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    return name, bench_url, admin_url


def _drop_postgres_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# .ci/run gives the test suite database 15 of the machine's Redis; never borrow it.
RESERVED_REDIS_DBS = {15}
OWNER_KEY = "seke-bench:owner"


def _owner_token() -> str:
    return f"{os.getpid()}-{id(BenchEnv)}"


def _free_redis_db(url: str) -> str:
    """Claim an empty database number of this Redis (highest first) with an owner key.

    The database named in the URL (a developer's or a test run's) and CI's are
    never used. The owner key makes the database non-empty at once, so that another
    benchmark looking for an empty one passes it by; teardown empties it only while
    the key is still this process's.
    """
    import redis

    _check_local(url, "REDIS_URL")
    parts = urlsplit(url)
    own = int(parts.path.strip("/") or 0)
    probe = redis.Redis.from_url(url)
    try:
        count = int(str(probe.config_get("databases").get("databases", 16)))
    except redis.RedisError:
        count = 16
    for index in range(count - 1, 0, -1):
        if index == own or index in RESERVED_REDIS_DBS:
            continue
        candidate = urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, ""))
        client = redis.Redis.from_url(candidate)
        if client.dbsize() == 0 and client.set(OWNER_KEY, _owner_token(), nx=True):
            if client.dbsize() == 1:
                return candidate
            # Someone else started writing there at the same moment: leave it to them.
            client.delete(OWNER_KEY)
    raise BenchSetupError(f"no database of the Redis at {_redacted(url)} is free")


def setup(
    label: str,
    *,
    extra_env: dict[str, str] | None = None,
    require_postgres: bool = False,
    keep: bool = False,
) -> BenchEnv:
    """Point SEKE at throwaway storage, start Django and migrate; call before any model import."""
    database_url = os.environ.get("DATABASE_URL", "")
    postgres = database_url.startswith(("postgres://", "postgresql://"))
    if require_postgres and not postgres:
        raise BenchSetupError(
            "this benchmark needs PostgreSQL: set DATABASE_URL=postgres://user@127.0.0.1:5432/x"
            " (a throwaway database is created on that server and dropped at the end)"
        )
    data_dir = Path(tempfile.mkdtemp(prefix=f"seke-bench-{label}-"))
    bench = BenchEnv(data_dir=data_dir, keep=keep)
    os.environ["DJANGO_SETTINGS_MODULE"] = "seke_app.settings"
    os.environ["SEKE_DATA_DIR"] = str(data_dir)
    os.environ["DEBUG"] = "false"
    os.environ["ALLOWED_HOSTS"] = "testserver,localhost"
    os.environ.setdefault("SEKE_LOG_LEVEL", "WARNING")
    for name, value in (extra_env or {}).items():
        os.environ[name] = value
    try:
        if postgres:
            name, bench_url, admin_url = _create_postgres_database(database_url, label)
            bench.database_name, bench.admin_url = name, admin_url
            os.environ["DATABASE_URL"] = bench_url
        else:
            # SQLite in the benchmark's own data folder (the settings' default).
            os.environ.pop("DATABASE_URL", None)
        if os.environ.get("REDIS_URL"):
            bench.redis_url = _free_redis_db(os.environ["REDIS_URL"])
            os.environ["REDIS_URL"] = bench.redis_url
    except BaseException:
        _release(bench)
        raise
    import django
    from django.core.management import call_command

    django.setup()
    try:
        call_command("migrate", verbosity=0)
    except BaseException:
        teardown(bench)
        raise
    return bench


def teardown(bench: BenchEnv) -> None:
    """Stop the workers, drop the throwaway database, empty the Redis, delete the folder."""
    for process in bench.workers:
        stop_worker(process)
    from django.db import connections

    connections.close_all()
    if not bench.redis_url:
        from seke_app import queue

        queue.stop_embedded_redis()
    _release(bench)


def _release(bench: BenchEnv) -> None:
    """Give back the Redis database, the PostgreSQL database and the folder (no Django)."""
    if bench.redis_url:
        import redis

        # The database was empty when claimed; while the owner key is still ours,
        # what is in it now is this benchmark's.
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(bench.redis_url)
            if client.get(OWNER_KEY) == _owner_token().encode():
                client.flushdb()
    if bench.keep:
        print(f"kept: {bench.describe()}")
        return
    if bench.database_name and bench.admin_url:
        _drop_postgres_database(bench.admin_url, bench.database_name)
    shutil.rmtree(bench.data_dir, ignore_errors=True)


@contextlib.contextmanager
def bench_env(label: str, **options: object) -> Iterator[BenchEnv]:
    bench = setup(label, **options)  # type: ignore[arg-type]
    try:
        yield bench
    finally:
        teardown(bench)


# --- worker processes -----------------------------------------------------------------


def start_workers(
    bench: BenchEnv,
    count: int,
    *,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[bytes]]:
    """``count`` burst workers (``manage.py rqworker generation --burst``), output to files."""
    started = []
    for index in range(count):
        log_path = bench.data_dir / f"worker-{time.monotonic_ns()}-{index}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(MANAGE_PY), "rqworker", "generation", "--burst", *options],
                cwd=REPO,
                env=bench.worker_env(env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        started.append(process)
    bench.workers.extend(started)
    return started


def wait_workers(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            code = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            stop_worker(process)
            raise BenchSetupError(f"a worker did not finish in {timeout:.0f} s") from None
        if code != 0:
            log = Path(process.log_path).read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]
            raise BenchSetupError(f"a worker exited with {code}:\n{log}")


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Stop one worker this benchmark started, and the work horses it forked."""
    if process.poll() is not None:
        return
    import psutil  # type: ignore[import-untyped]

    try:
        family = [*psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait(timeout=10)


# --- drawn faces -------------------------------------------------------------------


def draw_face(seed: int, size: int) -> bytes:
    """A simple face (oval, eyes, brows, mouth) that differs with ``seed``; PNG bytes."""
    import io
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    skin = (rng.randint(170, 240), rng.randint(140, 200), rng.randint(110, 170))
    image = Image.new("RGB", (size, size), (rng.randint(0, 255), rng.randint(0, 255), 200))
    draw = ImageDraw.Draw(image)
    s = size
    draw.ellipse((s * 0.15, s * 0.08, s * 0.85, s * 0.95), fill=skin)
    for x in (0.36, 0.64):
        r = s * rng.uniform(0.03, 0.05)
        draw.ellipse((s * x - r, s * 0.42 - r, s * x + r, s * 0.42 + r), fill=(30, 20, 20))
        tilt = s * rng.uniform(-0.04, 0.04)
        draw.line(
            (s * (x - 0.08), s * 0.33 + tilt, s * (x + 0.08), s * 0.33 - tilt),
            fill=(60, 40, 30),
            width=max(1, s // 40),
        )
    top = s * rng.uniform(0.62, 0.7)
    smile = rng.random() < 0.5
    draw.arc(
        (s * 0.32, top, s * 0.68, top + s * 0.16),
        0 if smile else 180,
        180 if smile else 360,
        fill=(130, 20, 20),
        width=max(1, s // 40),
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def import_drawn_dataset(bench: BenchEnv, name: str, n: int, size: int) -> int:
    """Draw ``n`` faces into a folder and import them with the import service; return its id."""
    from seke_app.datasets.services import dataset_import
    from seke_app.models import Dataset

    folder = bench.data_dir / f"src-{name}"
    folder.mkdir()
    for i in range(n):
        (folder / f"face{i:05d}.png").write_bytes(draw_face(i, size))
    report = dataset_import(path=folder, dataset_name=name)
    if report.imported != n:
        raise BenchSetupError(f"imported {report.imported} of {n} drawn faces:\n{report.summary()}")
    return Dataset.objects.get(name=name).id


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95 and max (nearest-rank percentiles)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan"), float("nan"), float("nan")

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return rank(0.50), rank(0.95), ordered[-1]


def machine_load() -> str:
    """The load average and core count, printed beside figures taken on a shared machine."""
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {cores} cores"
