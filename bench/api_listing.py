"""Server time and queries of the API's paged lists, at 1,000 and 100,000 images.

Usage (from the repository root; PostgreSQL only)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        python bench/api_listing.py [--n 100000] [--iterations 50] [--keep] [--no-gc-freeze]

Issue 19's target: with 100,000 images and annotations in PostgreSQL, a page of
100 images or annotations takes under 100 ms of server time at the 95th
percentile at any depth, and the queries per request do not grow with the data.
Each gunicorn worker freezes the objects loaded at start-up out of the garbage
collector's reach (``seke_app/gunicorn_conf.py``); so does this script, after
seeding, unless ``--no-gc-freeze``.

The script creates a throwaway database on the server of ``DATABASE_URL`` (the
database named there is not touched) and drops it at the end unless ``--keep``.
It seeds one dataset with ``bulk_create`` in batches: every image annotated by a
first run, a third of them by a second one too (copies of one real SV-UAMC result
of the offline annotator, with their own expressions and confidences, so the
JSON columns have their real size; about half are confident under the runs'
thresholds); a quarter of the images carry a known expression; 5 % have a first
review (accept or correct) and a fifth of those a second, disagreeing one.
First 1,000 images, measured; then up to ``--n``, measured again. Tables are
analysed after seeding, as autovacuum would do.

Each request goes through Django's test client with an admin's API token, at three
depths: the first page, one starting halfway through the images and the last
one. Lists: the images without a filter, of the dataset, with a label filter
(curated expression "happiness"; provenance "human"), and the first run's
annotations (``GET /api/v1/runs/{code}/annotations``). Two times per request:
*view*, the time inside django-ninja's operation (authentication, parameters,
the queries, the answer's serialization), and *request*, the test client's
request-to-response time (the whole Django stack, no network). Queries are
counted with ``CaptureQueriesContext``. Prints p50 / p95 / max and asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import _django_env as env
from review_scale import template_fields

from seke_app.engine.vocab import EXPRESSIONS

BATCH = 5000
PAGE_SIZE = 100
DEPTHS = ("first", "middle", "last")


@dataclass
class Timings:
    view_ms: list[float] = field(default_factory=list)
    request_ms: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def line(self, n: int, name: str, depth: str) -> str:
        v50, v95, vmax = env.percentiles(self.view_ms)
        r50, r95, _ = env.percentiles(self.request_ms)
        low, high = min(self.queries), max(self.queries)
        counted = f"{low}" if low == high else f"{low}-{high}"
        return (
            f"| {n:,} | {name} | {depth} | {v50:.1f} / **{v95:.1f}** / {vmax:.1f}"
            f" | {r50:.1f} / {r95:.1f} | {counted} | {min(self.rows)}-{max(self.rows)} |"
        )


# --- seeding -------------------------------------------------------------------------


@dataclass
class Seeded:
    dataset_id: int
    runs: tuple[int, int]
    version_id: int
    reviewers: tuple[int, int]
    count: int = 0


def seed_start() -> Seeded:
    from django.contrib.auth.models import User

    from seke_app.models import Dataset, GenerationRun
    from seke_app.runs.prompts import prompt_version_active

    dataset = Dataset.objects.create(name="api-listing")
    version = prompt_version_active()
    runs = tuple(
        GenerationRun.objects.create(
            dataset=dataset,
            backend="offline",
            model_name="bench",
            prompt_version=version,
            status=GenerationRun.Status.COMPLETED,
            review_threshold=threshold,
        ).id
        for threshold in (0.5, 0.6)
    )
    reviewers = tuple(User.objects.create_user(f"bench-reviewer-{i}").id for i in (1, 2))
    return Seeded(dataset.id, runs, version.id, reviewers)  # type: ignore[arg-type]


def seed_to(seeded: Seeded, total: int, template: dict[str, Any], rng: random.Random) -> float:
    """Add images, annotations and decisions until ``total`` images exist; return seconds."""
    from django.db import connection, transaction

    from seke_app.models import FaceImage

    started = time.perf_counter()
    while seeded.count < total:
        size = min(BATCH, total - seeded.count)
        first = seeded.count
        with transaction.atomic():
            images = FaceImage.objects.bulk_create(
                [
                    FaceImage(
                        dataset_id=seeded.dataset_id,
                        sha256=hashlib.sha256(f"api-listing-{i}".encode()).hexdigest(),
                        file=f"faces/bench/{i}.png",
                        image_format="PNG",
                        width=160,
                        height=160,
                        original_name=f"face{i:06d}.png",
                        split="test" if i % 10 == 0 else "train",
                        known_expression=rng.choice(EXPRESSIONS) if rng.random() < 0.25 else None,
                    )
                    for i in range(first, first + size)
                ]
            )
            _annotate(seeded, [image.id for image in images], template, rng)
        seeded.count += size
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def _annotate(
    seeded: Seeded, image_ids: list[int], template: dict[str, Any], rng: random.Random
) -> None:
    from seke_app.models import Annotation

    rows = [_annotation(seeded.runs[0], image_id, seeded, template, rng) for image_id in image_ids]
    rows += [
        _annotation(seeded.runs[1], image_id, seeded, template, rng)
        for image_id in image_ids
        if rng.random() < 1 / 3
    ]
    annotations = Annotation.objects.bulk_create(rows)
    first_run = [a for a in annotations if a.run_id == seeded.runs[0]]
    _decide(seeded, [a for a in first_run if rng.random() < 0.05], rng)


def _annotation(
    run_id: int, image_id: int, seeded: Seeded, template: dict[str, Any], rng: random.Random
) -> Any:
    from seke_app.models import Annotation

    expression = rng.choice(EXPRESSIONS)
    grains = {g: round(rng.uniform(0.3, 0.98), 4) for g in ("expression", "va", "aus")}
    confidence = round(min(grains.values()), 4)
    fields = dict(template)
    fields.update(
        expression=expression,
        expression_votes={expression: 3, rng.choice(EXPRESSIONS): 2},
        expression_confidence=grains["expression"],
        va_confidence=grains["va"],
        au_confidence=grains["aus"],
        confidence=confidence,
        flagged=confidence < 0.5,
        held=False,
    )
    return Annotation(
        run_id=run_id, image_id=image_id, prompt_version_id=seeded.version_id, **fields
    )


def _decide(seeded: Seeded, annotations: list[Any], rng: random.Random) -> None:
    """A first review of each annotation (accept or correct); a fifth get a second one
    that disagrees on the expression."""
    from review.models import ReviewDecision, ReviewTask

    rounds = [("first", a) for a in annotations]
    rounds += [("second", a) for a in annotations if rng.random() < 0.2]
    tasks = ReviewTask.objects.bulk_create(
        [
            ReviewTask(annotation=a, kind=kind, status=ReviewTask.Status.DONE, priority=0.5)
            for kind, a in rounds
        ]
    )
    decisions = []
    for task, (kind, annotation) in zip(tasks, rounds, strict=True):
        corrected = kind == "second" or rng.random() < 0.3
        others = [e for e in EXPRESSIONS if e != annotation.expression]
        decisions.append(
            ReviewDecision(
                task=task,
                annotation=annotation,
                image_id=annotation.image_id,
                reviewer_id=seeded.reviewers[kind == "second"],
                action="correct" if corrected else "accept",
                kind=kind,
                expression=rng.choice(others) if corrected else annotation.expression,
                valence=annotation.valence,
                arousal=annotation.arousal,
                aus=annotation.aus,
            )
        )
    ReviewDecision.objects.bulk_create(decisions)


# --- measuring -------------------------------------------------------------------------


@contextmanager
def view_timer() -> Iterator[list[float]]:
    """Times of django-ninja's operations (``Operation.run``) while the block runs."""
    from ninja.operation import Operation

    times: list[float] = []
    original = Operation.run

    def run(self: Operation, request: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, request, **kwargs)
        finally:
            times.append((time.perf_counter() - started) * 1000)

    Operation.run = run  # type: ignore[method-assign]
    try:
        yield times
    finally:
        Operation.run = original  # type: ignore[method-assign]


def timed(timings: Timings, call: Callable[[], Any], views: list[float]) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # The query log keeps 9,000 entries; a full log would make the count wrong.
    connection.queries_log.clear()
    views.clear()
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        response = call()
        elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise env.BenchSetupError(f"expected HTTP 200, got {response.status_code}: {response}")
    timings.request_ms.append(elapsed)
    timings.view_ms.append(views[-1])
    timings.queries.append(len(captured.captured_queries))
    timings.rows.append(len(response.json()["results"]))


def cursors(seeded: Seeded) -> dict[str, dict[str, str]]:
    """The query parameters that start each depth's page, for the images and the run."""
    from ninja.pagination import CursorPagination

    from seke_app.datasets.listing import encode_cursor
    from seke_app.models import Annotation, FaceImage

    image_ids = list(
        FaceImage.objects.filter(dataset_id=seeded.dataset_id)
        .order_by("id")
        .values_list("id", flat=True)
    )
    annotation_ids = list(
        Annotation.objects.filter(run_id=seeded.runs[0]).order_by("id").values_list("id", flat=True)
    )
    found: dict[str, dict[str, str]] = {}
    for depth, index in (
        ("first", None),
        ("middle", len(image_ids) // 2),
        ("last", len(image_ids) - PAGE_SIZE - 1),
    ):
        images = {} if index is None else {"cursor": encode_cursor(image_ids[index])}
        # django-ninja's cursor names the first item of the page by its position.
        run = (
            {}
            if index is None
            else {
                "cursor": CursorPagination.Cursor(
                    p=str(annotation_ids[index + 1])
                ).encode_as_param()
            }
        )
        found[depth] = images
        found[f"run-{depth}"] = run
    return found


def measure(
    client: Any, headers: dict[str, str], seeded: Seeded, iterations: int
) -> dict[tuple[str, str], Timings]:
    from seke_app.models import Dataset, GenerationRun

    dataset = str(Dataset.objects.get(id=seeded.dataset_id).code)
    run = str(GenerationRun.objects.get(id=seeded.runs[0]).code)
    lists: dict[str, tuple[str, dict[str, str]]] = {
        "images": ("/api/v1/images", {}),
        "images of the dataset": ("/api/v1/images", {"dataset": dataset}),
        "images, expression happiness": ("/api/v1/images", {"expression": "happiness"}),
        "images, provenance human": ("/api/v1/images", {"provenance": "human"}),
        "run annotations": (f"/api/v1/runs/{run}/annotations", {}),
    }
    starts = cursors(seeded)
    results: dict[tuple[str, str], Timings] = {}
    with view_timer() as views:
        for name, (path, params) in lists.items():
            for depth in DEPTHS:
                start = starts[f"run-{depth}" if name == "run annotations" else depth]
                query = {**params, **start, "page_size": str(PAGE_SIZE)}
                timings = results.setdefault((name, depth), Timings())
                call = functools.partial(client.get, path, query, headers=headers)
                for _ in range(iterations):
                    timed(timings, call, views)
    return results


def report(n: int, results: dict[tuple[str, str], Timings]) -> None:
    print(f"\nN = {n:,} images (annotations and decisions as described):")
    print(
        "| N | list | depth | view p50 / p95 / max, ms | request p50 / p95, ms | queries | rows |"
    )
    print("|---|---|---|---|---|---|---|")
    for (name, depth), timings in results.items():
        print(timings.line(n, name, depth))
    worst = max(env.percentiles(t.view_ms)[1] for (name, _), t in results.items())
    print(f"worst view p95: {worst:.1f} ms   (target < 100 ms for pages of images and annotations)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the throwaway database")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the objects loaded at start-up in the garbage collector's young"
        " generations (the production server freezes them: seke_app/gunicorn_conf.py)",
    )
    args = parser.parse_args()
    try:
        bench = env.setup("api", require_postgres=True, keep=args.keep)
    except env.BenchSetupError as exc:
        raise SystemExit(str(exc)) from None
    try:
        from django.contrib.auth.models import Group, User
        from django.test import Client

        from seke_app.api.tokens import token_create

        print(f"storage: {bench.describe()}")
        print(f"machine: {env.machine_load()}")
        admin = User.objects.create_user("bench-admin", password=None)
        admin.groups.add(Group.objects.get(name="admins"))
        headers = {"Authorization": f"Bearer {token_create(user=admin, name='bench').secret}"}
        client = Client()
        template = template_fields()
        rng = random.Random(args.seed)
        seeded = seed_start()
        sizes = sorted({min(1000, args.n), args.n})
        results: dict[int, dict[tuple[str, str], Timings]] = {}
        for size in sizes:
            seconds = seed_to(seeded, size, template, rng)
            print(f"seeded up to {size:,} images in {seconds:.1f} s")
            if not args.no_gc_freeze:
                # What each gunicorn worker does once the application is loaded.
                gc.collect()
                gc.freeze()
            results[size] = measure(client, headers, seeded, args.iterations)
            report(size, results[size])
        if len(sizes) == 2:
            small, large = (results[s] for s in sizes)
            grown = [
                f"{name} ({depth}): {max(small[k].queries)} -> {max(large[k].queries)}"
                for k in small
                for name, depth in [k]
                if max(large[k].queries) > max(small[k].queries)
            ]
            print("queries per request grew with N: " + ("; ".join(grown) or "none"))
        print(f"machine at the end: {env.machine_load()}")
    finally:
        env.teardown(bench)


if __name__ == "__main__":
    main()
