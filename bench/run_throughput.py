"""Throughput of a generation run against an OpenAI-compatible server that answers slowly.

Usage (from the repository root)::

    python bench/run_throughput.py [--images 500] [--concurrency 16] [--latency 0.2]
                                   [--strategy uamc|single] [--workers 1 2] [--size 160]

Issue 4's targets: with a server that answers after 200 ms, a 500-image run at
concurrency 16 reaches at least 85% of the ideal throughput, and two workers give
at least 1.7 times one worker. The ideal is ``workers * concurrency / latency``
divided by the calls each image needed (read back from the stored annotations'
``requests``): every one of the concurrency slots always waiting on the server.

The server is the project's fake (``tests/fake_openai.py``) on 127.0.0.1; its
default answer is valid and identical for every sample, so SV-UAMC stops at
``k0`` samples (one request with ``n=k0``) plus the verification call. Faces are
drawn with Pillow and imported with the import service into a temporary data
folder: SQLite there, or a throwaway PostgreSQL database when ``DATABASE_URL`` is
set, and the embedded Redis or a free database number of ``REDIS_URL``. Workers
are ``manage.py rqworker generation --burst`` processes with the same
environment. The run's time is from its start (the first chunk a worker takes) to
its end (the last image stored), so worker start-up is left out; it is printed
separately. Prints figures and asserts nothing.

The fake server is a ``ThreadingHTTPServer``, whose listen backlog is 5 by
default: when a chunk's 16 threads open their connections at once, the kernel
drops the SYNs past the fifth and the clients retry after a second, which measures
the fake rather than SEKE. This script raises the backlog to ``--backlog`` (128)
in its own process; ``--backlog 5`` shows the effect.
"""

from __future__ import annotations

import argparse
import http.server
import math
import resource
import time
from dataclasses import dataclass
from typing import Any

import _django_env as env

# Never called from this process: workers get the fake server's address per measurement.
UNUSED_LOCAL_URL = "http://127.0.0.1:9/v1"


@dataclass(frozen=True)
class Measured:
    workers: int
    images: int
    failed: int
    run_s: float
    total_s: float
    calls_per_image: float
    requests: int
    max_in_flight: int
    worker_cpu_s: float
    server_cpu_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.run_s


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(
    bench: env.BenchEnv, dataset_id: int, workers: int, args: argparse.Namespace
) -> Measured:
    from django.db.models import Avg

    from seke_app.engine.uamc import UAMCParams
    from seke_app.models import Annotation, Dataset
    from seke_app.queue import get_queue
    from seke_app.runs.services import run_create
    from tests.fake_openai import FakeOpenAI

    get_queue("generation").empty()  # type: ignore[no-untyped-call]
    with FakeOpenAI(latency_s=args.latency) as server:
        run = run_create(
            dataset=Dataset.objects.get(id=dataset_id),
            backend="openai",
            model_name="gpt-4o",
            params=UAMCParams(strategy=args.strategy),
            concurrency=args.concurrency,
        )
        children_before, self_before = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
        started = time.perf_counter()
        options = ["--worker-class", args.worker_class] if args.worker_class else []
        processes = env.start_workers(
            bench, workers, options=options, env={"OPENAI_BASE_URL": server.base_url}
        )
        env.wait_workers(processes, timeout=args.timeout)
        total_s = time.perf_counter() - started
        worker_cpu = _cpu(resource.RUSAGE_CHILDREN) - children_before
        server_cpu = _cpu(resource.RUSAGE_SELF) - self_before
        requests, max_in_flight = server.request_count, server.max_in_flight
    run.refresh_from_db()
    if run.status != "completed" or run.started_at is None or run.finished_at is None:
        raise env.BenchSetupError(f"the run ended as {run.status!r}: {run.error}")
    calls = Annotation.objects.filter(run=run).aggregate(mean=Avg("requests"))["mean"] or 0.0
    return Measured(
        workers=workers,
        images=run.n_done,
        failed=run.n_failed,
        run_s=(run.finished_at - run.started_at).total_seconds(),
        total_s=total_s,
        calls_per_image=float(calls),
        requests=requests,
        max_in_flight=max_in_flight,
        worker_cpu_s=worker_cpu,
        server_cpu_s=server_cpu,
    )


def report(m: Measured, args: argparse.Namespace) -> float:
    """Print one measurement; return its fraction of the ideal throughput."""
    from seke_app.runs.services import chunk_size

    size = chunk_size(args.concurrency)
    ideal = m.workers * args.concurrency / args.latency / m.calls_per_image
    fraction = float(m.images_per_s / ideal)
    # What the run would reach if each chunk's pool drained before the next chunk
    # started (as it did before chunk jobs went on with the run's pending items): a
    # chunk takes ceil(chunk / concurrency) waves of (calls x latency) at best.
    chunks = [min(size, args.images - start) for start in range(0, args.images, size)]
    per_worker = [chunks[i :: m.workers] for i in range(m.workers)]
    waves = max(sum(math.ceil(c / args.concurrency) for c in mine) for mine in per_worker)
    chunk_bound = args.images / (m.workers * waves * args.concurrency)
    print(f"{m.workers} worker{'s' if m.workers > 1 else ''}:")
    print(f"  images annotated        {m.images} ({m.failed} failed)")
    print(
        f"  calls per image         {m.calls_per_image:.2f} (mean of the annotations' requests;"
        f" the server saw {m.requests} requests, at most {m.max_in_flight} at once)"
    )
    print(
        f"  run wall time           {m.run_s:.2f} s (start to end of the run;"
        f" {m.total_s:.2f} s with worker start-up)"
    )
    print(f"  throughput              {m.images_per_s:.1f} images/s")
    print(
        f"  ideal throughput        {ideal:.1f} images/s ({m.workers} x {args.concurrency}"
        f" / {args.latency:g} s / {m.calls_per_image:.2f} calls)"
    )
    print(f"  fraction of ideal       {fraction:.1%}   (target >= 85%)")
    print(
        f"  chunk-by-chunk bound    {chunk_bound:.1%}   (if each {size}-image chunk drained"
        f" before the next: {waves} waves of {args.concurrency} requests per worker)"
    )
    print(
        f"  CPU: workers {m.worker_cpu_s:.1f} s, fake server {m.server_cpu_s:.1f} s"
        f" ({(m.worker_cpu_s + m.server_cpu_s) / m.total_s:.2f} cores busy on average)"
    )
    return fraction


# Steps of ``seke_app.runs.services`` timed by ``--breakdown`` (those that exist are wrapped).
BREAKDOWN_STEPS = (
    "run_is_running",  # read at most twice a second per chunk
    "item_claim",
    "annotation_request_for",
    "run_uamc",
    "result_store",
    "run_stop_at_budget",
)


def breakdown(dataset_id: int, args: argparse.Namespace) -> None:
    """Time each step of one worker's chunks in this process, to show where the time goes.

    Two chunks run through ``run_process_chunk`` here (no rq, no fork) against a fresh
    fake server in this process, so the figures are a little slower than in a worker.
    """
    import functools
    import threading
    from collections import defaultdict

    from django.conf import settings
    from django.db import connections

    from seke_app.engine.uamc import UAMCParams
    from seke_app.models import Dataset, RunItem
    from seke_app.queue import get_queue
    from seke_app.runs import services as runs
    from tests.fake_openai import FakeOpenAI

    spent: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    def timed(name: str, function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                with lock:
                    spent[name].append(time.perf_counter() - started)

        return wrapper

    originals = {n: getattr(runs, n) for n in BREAKDOWN_STEPS if hasattr(runs, n)}
    # Opening a database connection happens inside the first step of a thread that has none.
    wrapper_class = type(connections["default"])
    connect = wrapper_class.connect
    with FakeOpenAI(latency_s=args.latency) as server:
        settings.OPENAI_BASE_URL = server.base_url
        run = runs.run_create(
            dataset=Dataset.objects.get(id=dataset_id),
            backend="openai",
            model_name="gpt-4o",
            params=UAMCParams(strategy=args.strategy),
            concurrency=args.concurrency,
        )
        get_queue("generation").empty()  # type: ignore[no-untyped-call]
        ids = list(RunItem.objects.filter(run=run).order_by("id").values_list("id", flat=True))
        size = runs.chunk_size(args.concurrency)
        chunks = [ids[i : i + size] for i in (0, size)]
        for name, function in originals.items():
            setattr(runs, name, timed(name, function))
        setattr(wrapper_class, "connect", timed("db connect", connect))  # noqa: B010
        try:
            started = time.perf_counter()
            for chunk in chunks:
                runs.run_process_chunk(run_id=run.id, item_ids=chunk)
            elapsed = time.perf_counter() - started
        finally:
            setattr(wrapper_class, "connect", connect)  # noqa: B010
            for name, function in originals.items():
                setattr(runs, name, function)
    images = sum(len(c) for c in chunks)
    print(
        f"breakdown: {len(chunks)} chunks of {size} in this process,"
        f" {elapsed:.2f} s ({elapsed / len(chunks):.2f} s a chunk):"
    )
    for name in [*originals, "db connect"]:
        values = spent[name]
        if values:
            print(
                f"  {name:16s} mean {sum(values) / len(values) * 1000:7.1f} ms"
                f"  max {max(values) * 1000:7.1f} ms  (x{len(values)})"
            )
    path = sum(sum(spent[n]) for n in originals if n != "run_uamc" and n in spent) / images
    print(
        f"  per image outside the engine, on its thread: {path * 1000:.1f} ms"
        f" (the engine's calls: {args.latency * 1000:.0f} ms each); {len(spent['db connect'])}"
        f" database connections opened for {images} images (inside the steps above)"
    )


def sqlite_wal() -> str:
    """Put the SQLite file in WAL mode (kept in the file, so workers get it too)."""
    from django.db import connection

    if connection.vendor != "sqlite":
        return f"not SQLite ({connection.vendor}): --sqlite-wal ignored"
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
        return str(cursor.fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--strategy", choices=("uamc", "single"), default="uamc")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=160, help="side of the drawn faces, px")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--backlog", type=int, default=128, help="fake server's listen backlog")
    parser.add_argument(
        "--sqlite-wal",
        action="store_true",
        help="switch the throwaway SQLite file to write-ahead logging first (a proposed fix)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each step of two chunks run in this process (where the time goes)",
    )
    parser.add_argument(
        "--worker-class",
        default="",
        help="passed to rqworker (e.g. rq.worker.SimpleWorker, which runs jobs without forking)",
    )
    args = parser.parse_args()
    # A class attribute read when the server socket starts listening (see the docstring).
    http.server.ThreadingHTTPServer.request_queue_size = args.backlog
    bench = env.setup(
        "throughput",
        extra_env={
            "OPENAI_API_KEY": "sk-bench-any",
            "OPENAI_BASE_URL": UNUSED_LOCAL_URL,
            "SEKE_OPENAI_RPM": "0",
            "SEKE_OPENAI_TPM": "0",
        },
    )
    try:
        print(f"storage: {bench.describe()}")
        print(f"machine: {env.machine_load()}")
        print(
            f"{args.images} drawn {args.size}x{args.size} faces, strategy {args.strategy!r},"
            f" concurrency {args.concurrency}, fake server latency {args.latency * 1000:.0f} ms"
            f" (listen backlog {args.backlog}), rate limits off,"
            f" worker class {args.worker_class or 'the default (forks a work horse per job)'}"
        )
        if args.sqlite_wal:
            print(f"SQLite journal mode: {sqlite_wal()}")
        dataset_id = env.import_drawn_dataset(bench, "throughput", args.images, args.size)
        results = {}
        for workers in args.workers:
            measured = measure(bench, dataset_id, workers, args)
            results[workers] = measured
            report(measured, args)
        if 1 in results and 2 in results:
            ratio = results[2].images_per_s / results[1].images_per_s
            print(f"two workers / one worker: {ratio:.2f}x   (target >= 1.7x)")
        if args.breakdown:
            breakdown(dataset_id, args)
        print(f"machine at the end: {env.machine_load()}")
    finally:
        env.teardown(bench)


if __name__ == "__main__":
    main()
