"""Overhead per image of a generation run (database writes, queue) on the offline annotator.

Usage (from the repository root)::

    python bench/run_overhead.py [--images 300] [--concurrency 1] [--size 160]
                                 [--worker-class rq.worker.SimpleWorker]

Issue 4's target: under 20 ms per image. The same drawn faces are annotated twice
with the same SV-UAMC parameters: by the engine alone (``run_uamc`` with an
``OfflineBackend`` in a loop, the requests built beforehand) and by a whole run
with one ``manage.py rqworker generation --burst`` process (claiming each image,
reading its file, writing the annotation, samples, review task and counters, the
queue and the worker's jobs). The run's time is from its start (the first chunk a
worker takes) to its end, so the worker's own start-up is left out; everything a
worker does per chunk, such as loading the weights, is in. The difference per
image is the overhead.

Storage is throwaway, as in ``run_throughput.py``: SQLite in a temporary data
folder, or a new PostgreSQL database when ``DATABASE_URL`` is set, and the
embedded Redis or a free database number of ``REDIS_URL``. Prints figures and
asserts nothing.

BLAS is limited to ``--blas-threads`` (1) in this process and in the worker,
before numpy is loaded, so that both sides run the network the same way and the
difference is not drowned in BLAS noise: with OpenBLAS's default of one thread per
core, the offline network runs many times slower on this 2-core machine (see
``bench/README.md``). ``--blas-threads 0`` keeps the libraries' default.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import _django_env as env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def engine_alone(dataset_id: int) -> tuple[float, float, int, float]:
    """Wall and CPU seconds of ``run_uamc`` over the dataset's images, images, weights load s."""
    from seke_app.engine.offline.backend import OfflineBackend
    from seke_app.engine.offline.model import OfflineModel
    from seke_app.engine.types import AnnotationRequest, KnownLabels
    from seke_app.engine.uamc import UAMCParams, run_uamc
    from seke_app.models import Dataset
    from seke_app.runs.prompts import prompt_version_active

    dataset = Dataset.objects.get(id=dataset_id)
    version = prompt_version_active()
    vocabulary = dataset.vocabulary()
    requests = []
    for image in dataset.images.order_by("id"):
        with image.file.open("rb") as handle:
            data = handle.read()
        requests.append(
            AnnotationRequest(
                image_bytes=data,
                vocabulary=vocabulary,
                known=KnownLabels(),
                knowledge_text=version.knowledge_text,
                exemplars=tuple(version.exemplars),
                image_id=str(image.code),
            )
        )
    started = time.perf_counter()
    model = OfflineModel.load()
    load_s = time.perf_counter() - started
    params = UAMCParams()
    # One image first, so that one-off costs (numpy's first calls) are not counted.
    run_uamc(OfflineBackend(model), requests[0], params)
    backend = OfflineBackend(model)
    started, cpu_started = time.perf_counter(), time.process_time()
    for request in requests:
        run_uamc(backend, request, params)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return wall, cpu, len(requests), load_s


def idle_worker_cpu(bench: env.BenchEnv, options: list[str], timeout: float) -> float:
    """CPU seconds of a burst worker that finds the queue empty: its start-up and exit."""
    before = _children_cpu()
    env.wait_workers(env.start_workers(bench, 1, options=options), timeout=timeout)
    return _children_cpu() - before


def whole_run(
    bench: env.BenchEnv, dataset_id: int, args: argparse.Namespace
) -> tuple[float, float, float, int, float]:
    """Run seconds, seconds with worker start-up, worker CPU seconds less its start-up,
    images, mean samples per image."""
    from django.db.models import Avg

    from seke_app.engine.uamc import UAMCParams
    from seke_app.models import Annotation, Dataset
    from seke_app.queue import get_queue
    from seke_app.runs.services import run_create

    get_queue("generation").empty()  # type: ignore[no-untyped-call]
    options = ["--worker-class", args.worker_class] if args.worker_class else []
    startup_cpu = idle_worker_cpu(bench, options, args.timeout)
    run = run_create(
        dataset=Dataset.objects.get(id=dataset_id),
        backend="offline",
        params=UAMCParams(),
        concurrency=args.concurrency,
    )
    started, cpu_before = time.perf_counter(), _children_cpu()
    env.wait_workers(env.start_workers(bench, 1, options=options), timeout=args.timeout)
    total_s = time.perf_counter() - started
    worker_cpu = _children_cpu() - cpu_before - startup_cpu
    run.refresh_from_db()
    if run.status != "completed" or run.started_at is None or run.finished_at is None:
        raise env.BenchSetupError(f"the run ended as {run.status!r}: {run.error}")
    samples = Annotation.objects.filter(run=run).aggregate(n=Avg("n_samples"))["n"] or 0.0
    run_s = (run.finished_at - run.started_at).total_seconds()
    return run_s, total_s, worker_cpu, run.n_done, float(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1, help="the run's threads per worker")
    parser.add_argument("--size", type=int, default=160, help="side of the drawn faces, px")
    parser.add_argument(
        "--worker-class",
        default="",
        help="passed to rqworker (e.g. rq.worker.SimpleWorker, which runs jobs without forking)",
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--blas-threads", type=int, default=1, help="0: the libraries' default")
    args = parser.parse_args()
    if args.blas_threads > 0:
        # Read by OpenBLAS when numpy loads it, here and in the worker (same environment).
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(args.blas_threads)
    bench = env.setup("overhead")
    try:
        from seke_app.runs.services import CHUNK_SIZE

        print(f"storage: {bench.describe()}")
        print(f"machine: {env.machine_load()}")
        print(
            f"{args.images} drawn {args.size}x{args.size} faces, offline annotator, default"
            f" SV-UAMC parameters, run concurrency {args.concurrency}, one worker"
            f" ({args.worker_class or 'default class: forks a work horse per job'},"
            f" {CHUNK_SIZE} images a job), BLAS threads"
            f" {args.blas_threads or 'library default'}"
        )
        dataset_id = env.import_drawn_dataset(bench, "overhead", args.images, args.size)
        engine_s, engine_cpu, n_engine, load_s = engine_alone(dataset_id)
        run_s, total_s, run_cpu, n_run, samples = whole_run(bench, dataset_id, args)
        engine_ms, engine_cpu_ms = engine_s / n_engine * 1000, engine_cpu / n_engine * 1000
        run_ms, run_cpu_ms = run_s / n_run * 1000, run_cpu / n_run * 1000
        print("                          wall time        CPU time of this process / the worker")
        print(
            f"  engine alone            {engine_ms:7.1f} ms/image  {engine_cpu_ms:7.1f} ms/image"
            f"   ({n_engine} images, {engine_s:.2f} s)"
        )
        print(
            f"  whole run, one worker   {run_ms:7.1f} ms/image  {run_cpu_ms:7.1f} ms/image"
            f"   ({n_run} images, {run_s:.2f} s; {total_s:.2f} s with worker start-up;"
            f" {samples:.2f} samples/image)"
        )
        print(
            f"  overhead                {run_ms - engine_ms:7.1f} ms/image"
            f"  {run_cpu_ms - engine_cpu_ms:7.1f} ms/image   (target < 20 ms, wall time)"
        )
        print(
            "  (the worker's CPU leaves out its start-up, measured on an empty queue, and the"
            " database server's own CPU)"
        )
        print(
            f"  for scale: loading the offline weights takes {load_s * 1000:.0f} ms;"
            f" a job holds {CHUNK_SIZE} images"
        )
        print(f"machine at the end: {env.machine_load()}")
    finally:
        env.teardown(bench)


if __name__ == "__main__":
    main()
