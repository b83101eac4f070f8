"""How soon a killed worker's images are annotated, with nobody pressing anything.

Usage (from the repository root)::

    python bench/orphan_takeover.py [--images 200] [--concurrency 4] [--latency 1.0]
                                    [--kill-after 40]

Issue 15's target: at default settings, the last image a worker held when it was
killed with ``kill -9`` (the worker and its work horse) is annotated within 90 s
of the kill, without a resume. Two ``manage.py rqworker generation --burst``
processes work on one run against the fake OpenAI-compatible server of the tests
(``tests/fake_openai.py``), which answers each request after ``--latency``
seconds, like a remote model. Once ``--kill-after`` images are annotated and the
first worker holds images, it is killed; the script then times, from the kill,
the annotation of the last image that worker held and the end of the run. The
lease is the default ``SEKE_RUN_LEASE_SECONDS`` unless the environment sets one.

Storage is throwaway (``bench/_django_env.py``). Prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from collections.abc import Callable

import _django_env as env


def held_by(worker: subprocess.Popen[bytes]) -> list[int]:
    """Ids of the items the worker's work horse holds now."""
    import psutil  # type: ignore[import-untyped]

    from seke_app.models import RunItem

    horses = [child.pid for child in psutil.Process(worker.pid).children(recursive=True)]
    names = [f"{socket.gethostname()}:{pid}" for pid in horses]
    held = RunItem.objects.filter(status=RunItem.Status.LEASED, worker__in=names)
    return list(held.values_list("id", flat=True))


def wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` holds, polled every 50 ms."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise env.BenchSetupError(f"{what} took over {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per worker")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model request")
    parser.add_argument("--kill-after", type=int, default=40, help="annotations before the kill")
    parser.add_argument("--size", type=int, default=160, help="side of the drawn faces, px")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI(latency_s=args.latency) as server:
        endpoint = {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": server.base_url,
            "SEKE_OPENAI_RPM": "0",
            "SEKE_OPENAI_TPM": "0",
        }
        bench = env.setup("orphans", extra_env=endpoint)
        try:
            measure(bench, args)
        finally:
            env.teardown(bench)


def measure(bench: env.BenchEnv, args: argparse.Namespace) -> None:
    from django.conf import settings

    from seke_app.engine.uamc import UAMCParams
    from seke_app.models import Annotation, Dataset, GenerationRun, RunItem
    from seke_app.runs.services import run_create

    print(f"storage: {bench.describe()}")
    print(f"machine: {env.machine_load()}")
    lease = settings.RUN_LEASE_SECONDS
    source = "SEKE_RUN_LEASE_SECONDS" if "SEKE_RUN_LEASE_SECONDS" in os.environ else "default"
    print(
        f"{args.images} drawn faces, fake endpoint answering in {args.latency:g} s, default"
        f" SV-UAMC parameters, two workers at concurrency {args.concurrency}, lease {lease} s"
        f" ({source})"
    )
    dataset_id = env.import_drawn_dataset(bench, "orphans", args.images, args.size)
    run = run_create(
        dataset=Dataset.objects.get(id=dataset_id),
        backend="openai",
        model_name="gpt-4o",
        params=UAMCParams(),
        concurrency=args.concurrency,
    )
    doomed, survivor = env.start_workers(bench, 2)
    annotations = Annotation.objects.filter(run=run)
    wait(
        lambda: annotations.count() >= args.kill_after and bool(held_by(doomed)),
        args.timeout,
        "the first annotations",
    )
    orphans = held_by(doomed)
    env.stop_worker(doomed)  # SIGKILL to the worker and its work horse
    done_at_kill = annotations.count()
    orphaned = RunItem.objects.filter(id__in=orphans)
    to_orphans = wait(
        lambda: not orphaned.exclude(status__in=["done", "failed"]).exists(),
        args.timeout,
        "the killed worker's images",
    )
    to_end = to_orphans + wait(
        lambda: GenerationRun.objects.get(id=run.id).is_finished(),
        args.timeout,
        "the end of the run",
    )
    env.wait_workers([survivor], timeout=args.timeout)
    run.refresh_from_db()
    print(
        f"killed the first worker (and its work horse) after {done_at_kill} annotations,"
        f" holding {len(orphans)} images"
    )
    print(f"  last of its images annotated  {to_orphans:6.1f} s after the kill   (target <= 90 s)")
    print(f"  run {run.status:<22s}  {to_end:6.1f} s after the kill")
    print(
        f"  {run.n_done} annotated, {run.n_failed} failed, {annotations.count()} annotations"
        f" for {run.n_total} images; nobody resumed anything"
    )
    print(f"machine at the end: {env.machine_load()}")


if __name__ == "__main__":
    main()
