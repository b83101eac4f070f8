"""Server time of claiming a review task and rendering the review page, at 1,000 and 100,000 tasks.

Usage (from the repository root; PostgreSQL only)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        python bench/review_scale.py [--n 100000] [--iterations 200] [--keep]

Issue 5's target: with 100,000 images and annotations in PostgreSQL, claiming the
next task and rendering the review page take under 50 ms of server time at the
95th percentile, and the number of queries per page does not grow with the data.

The script creates a throwaway database on the server of ``DATABASE_URL`` (the
database named there is not touched) and drops it at the end unless ``--keep``.
It seeds images, flagged annotations and open review tasks with ``bulk_create``
in batches: first 1,000, measured; then up to ``--n``, measured again. Each
annotation is a copy of a real SV-UAMC result of the offline annotator on a drawn
face (so the JSON columns have their real size), with its own expression and
confidences. Tables are analysed after seeding, as autovacuum would do.

Each iteration, with Django's test client logged in as an annotator:

* ``claim``: ``POST /review/start`` (a real claim: the annotator holds nothing);
* ``page``: ``GET /review/task/<code>/``;
* ``decide``: ``POST .../decide`` accepting the task, which records the decision
  and claims the next task; that task is given back (``task_skip``, not timed) so
  that the next ``claim`` claims for real.

Times are the test client's request-to-response times in this process (the whole
Django stack, no network), as p50 / p95 / max. Queries are counted with
``CaptureQueriesContext``. The queue page (``GET /review/``) is timed too, over
fewer iterations: it is not in the target but annotators land on it. Prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _django_env as env

from seke_app.engine.vocab import EXPRESSIONS

BATCH = 5000


@dataclass
class Timings:
    ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)

    def line(self, name: str) -> str:
        p50, p95, worst = env.percentiles(self.ms)
        cpu50, cpu95, _ = env.percentiles(self.cpu_ms)
        low, high = min(self.queries), max(self.queries)
        counted = f"{low}" if low == high else f"{low}-{high}"
        return (
            f"  {name:8s} p50 {p50:6.1f}   p95 {p95:6.1f}   max {worst:6.1f} ms"
            f"   (CPU p50 {cpu50:5.1f}, p95 {cpu95:5.1f})   queries {counted:>5s}"
            f"   n={len(self.ms)}"
        )


# --- seeding -------------------------------------------------------------------------


def template_fields() -> dict[str, Any]:
    """The Annotation columns of one real SV-UAMC result (offline annotator, drawn face)."""
    from seke_app.engine.offline.backend import OfflineBackend
    from seke_app.engine.types import AnnotationRequest, KnownLabels
    from seke_app.engine.uamc import UAMCParams, run_uamc
    from seke_app.engine.vocab import Vocabulary
    from seke_app.runs.services import annotation_fields

    request = AnnotationRequest(
        image_bytes=env.draw_face(0, 160),
        vocabulary=Vocabulary.named("feid17"),
        known=KnownLabels(),
        knowledge_text="",
        exemplars=(),
        image_id="bench",
    )
    return annotation_fields(run_uamc(OfflineBackend(), request, UAMCParams()))


@dataclass
class Seeded:
    dataset_id: int
    run_id: int
    version_id: int
    count: int = 0


def seed_start() -> Seeded:
    from seke_app.models import Dataset, GenerationRun
    from seke_app.runs.prompts import prompt_version_active

    dataset = Dataset.objects.create(name="review-scale")
    version = prompt_version_active()
    run = GenerationRun.objects.create(
        dataset=dataset,
        backend="offline",
        model_name="bench",
        prompt_version=version,
        status=GenerationRun.Status.COMPLETED,
    )
    return Seeded(dataset_id=dataset.id, run_id=run.id, version_id=version.id)


def seed_to(seeded: Seeded, total: int, template: dict[str, Any], rng: random.Random) -> float:
    """Add images, flagged annotations and open tasks until ``total`` exist; return seconds."""
    from django.db import connection, transaction

    from review.models import ReviewTask
    from seke_app.models import Annotation, FaceImage, GenerationRun

    started = time.perf_counter()
    while seeded.count < total:
        size = min(BATCH, total - seeded.count)
        first = seeded.count
        with transaction.atomic():
            images = FaceImage.objects.bulk_create(
                [
                    FaceImage(
                        dataset_id=seeded.dataset_id,
                        sha256=hashlib.sha256(f"review-scale-{i}".encode()).hexdigest(),
                        file=f"faces/bench/{i}.png",
                        image_format="PNG",
                        width=160,
                        height=160,
                        original_name=f"face{i:06d}.png",
                    )
                    for i in range(first, first + size)
                ]
            )
            annotations = Annotation.objects.bulk_create(
                [_annotation(seeded, image.id, template, rng) for image in images]
            )
            ReviewTask.objects.bulk_create(
                [
                    ReviewTask(
                        annotation_id=a.id,
                        priority=a.confidence,
                        expression_confidence=a.expression_confidence,
                        va_confidence=a.va_confidence,
                        au_confidence=a.au_confidence,
                    )
                    for a in annotations
                ]
            )
        seeded.count += size
    GenerationRun.objects.filter(id=seeded.run_id).update(
        n_total=seeded.count, n_done=seeded.count, n_flagged=seeded.count
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def _annotation(seeded: Seeded, image_id: int, template: dict[str, Any], rng: random.Random) -> Any:
    from seke_app.models import Annotation

    expression = rng.choice(EXPRESSIONS)
    grains = {g: round(rng.uniform(0.2, 0.95), 4) for g in ("expression", "va", "aus")}
    fields = dict(template)
    fields.update(
        expression=expression,
        expression_votes={expression: 3, rng.choice(EXPRESSIONS): 2},
        expression_confidence=grains["expression"],
        va_confidence=grains["va"],
        au_confidence=grains["aus"],
        confidence=round(min(grains.values()) * rng.uniform(0.5, 1.0), 6),
        flagged=True,
        flag_reasons=[f"expression split 3/2 between {expression} and another class"],
    )
    return Annotation(
        run_id=seeded.run_id, image_id=image_id, prompt_version_id=seeded.version_id, **fields
    )


# --- measuring -------------------------------------------------------------------------


def timed(timings: Timings, call: Callable[[], Any], expect: int) -> Any:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # The query log keeps 9,000 entries; a full log would make the count wrong.
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as captured:
        started, cpu_started = time.perf_counter(), time.process_time()
        response = call()
        elapsed = (time.perf_counter() - started) * 1000
        cpu = (time.process_time() - cpu_started) * 1000
    if response.status_code != expect:
        raise env.BenchSetupError(
            f"expected HTTP {expect}, got {response.status_code} ({response.get('Location', '')})"
        )
    timings.ms.append(elapsed)
    timings.cpu_ms.append(cpu)
    timings.queries.append(len(captured.captured_queries))
    return response


def measure(client: Any, user: Any, iterations: int, queue_iterations: int) -> dict[str, Timings]:
    from review.models import ReviewTask
    from review.tasks.services import task_held_by, task_skip

    results = {name: Timings() for name in ("claim", "page", "decide", "queue")}
    for _ in range(queue_iterations):
        timed(results["queue"], lambda: client.get("/review/"), 200)
    for _ in range(iterations):
        claimed = timed(results["claim"], lambda: client.post("/review/start"), 302)
        location = claimed["Location"]
        if "/review/task/" not in location:
            raise env.BenchSetupError(f"nothing was claimed (redirected to {location})")
        page = functools.partial(client.get, location)
        timed(results["page"], page, 200)
        accept = {"action": "accept", "time_spent_ms": "4000"}
        timed(results["decide"], functools.partial(client.post, location + "decide", accept), 302)
        held = task_held_by(user)
        if held is not None:
            task_skip(task=held, user=user)
    if ReviewTask.objects.filter(holder=user, status=ReviewTask.Status.CLAIMED).exists():
        raise env.BenchSetupError("the annotator still holds a task after the loop")
    return results


def explain_claim(user: Any) -> str:
    """PostgreSQL's plan for the claim's candidate query (the queue head, skip locked)."""
    from django.db import connection, transaction

    from review.tasks.services import QueueFilter, queue_tasks

    # The claim asks with the reviewer, who may not take what they already reviewed or hold.
    query = queue_tasks(QueueFilter(), user).select_for_update(skip_locked=True, of=("self",))
    with transaction.atomic(), connection.cursor() as cursor:
        sql, params = query.values_list("id", flat=True)[:1].query.sql_with_params()
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        return "\n".join(f"      {row[0]}" for row in cursor.fetchall())


def report(n: int, results: dict[str, Timings], plan: str, note: str = "") -> None:
    print(f"N = {n:,} open tasks (images, annotations, tasks){note}:")
    print("  server time per request, ms; CPU of this process (Django), ms; queries")
    print(results["claim"].line("claim"))
    print(results["page"].line("page"))
    print(results["decide"].line("decide"))
    print(results["queue"].line("queue"))
    p95 = max(env.percentiles(results[k].ms)[1] for k in ("claim", "page"))
    print(f"  worst p95 of claim and page: {p95:.1f} ms   (target < 50 ms)")
    print("  plan of the claim's candidate query:")
    print(plan)


PROPOSED_INDEX = (
    "CREATE INDEX bench_task_queue_head ON review_reviewtask (priority, id)"
    " WHERE status IN ('open', 'claimed')"
)


def try_queue_index(client: Any, user: Any, args: argparse.Namespace) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(PROPOSED_INDEX)
        cursor.execute("ANALYZE review_reviewtask")
    results = measure(client, user, args.iterations, args.queue_iterations)
    report(args.n, results, explain_claim(user), note=f", with {PROPOSED_INDEX[13:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--queue-iterations", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the throwaway database")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--try-queue-index",
        action="store_true",
        help="then add a partial index on (priority, id) of open and claimed tasks to the"
        " throwaway database and measure again (a proposed fix, not the app's schema)",
    )
    args = parser.parse_args()
    try:
        bench = env.setup("review", require_postgres=True, keep=args.keep)
    except env.BenchSetupError as exc:
        raise SystemExit(str(exc)) from None
    try:
        from django.contrib.auth.models import Group, User
        from django.test import Client

        print(f"storage: {bench.describe()}")
        print(f"machine: {env.machine_load()}")
        user = User.objects.create_user("bench-annotator", password=None)
        user.groups.add(Group.objects.get(name="annotators"))
        client = Client()
        client.force_login(user)
        template = template_fields()
        rng = random.Random(args.seed)
        seeded = seed_start()
        sizes = sorted({min(1000, args.n), args.n})
        results: dict[int, dict[str, Timings]] = {}
        for size in sizes:
            seconds = seed_to(seeded, size, template, rng)
            print(f"seeded up to {size:,} in {seconds:.1f} s")
            results[size] = measure(client, user, args.iterations, args.queue_iterations)
            report(size, results[size], explain_claim(user))
        if len(sizes) == 2:
            small, large = (results[s] for s in sizes)
            for name in ("claim", "page", "decide", "queue"):
                grew = max(large[name].queries) - max(small[name].queries)
                print(
                    f"queries per {name} request, N={sizes[0]:,} -> N={sizes[1]:,}:"
                    f" {max(small[name].queries)} -> {max(large[name].queries)}"
                    f" ({'no growth' if grew <= 0 else f'+{grew}'})"
                )
        if args.try_queue_index:
            try_queue_index(client, user, args)
        print(f"machine at the end: {env.machine_load()}")
    finally:
        env.teardown(bench)


if __name__ == "__main__":
    main()
