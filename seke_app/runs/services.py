"""Generation runs: create, enqueue, process, cancel, resume, retry.

A run's images are ``RunItem`` rows. Chunk jobs (ids in) claim items one at a
time with a conditional UPDATE that sets a lease (``seke_app.runs.leases``), so
any number of workers on any number of machines can share a run. A chunk job
whose own items are done goes on with the run's pending items, and then, while
other workers still hold images of the run, waits and takes over any whose lease
runs out: a dead worker's images are finished by the run's other jobs, and a
worker's threads stay busy until the run has no work left. Each model call's
usage is added to the run as the call returns (``seke_app.runs.calls``); each
image's annotation, samples, review task, item status and the run's counters are
written in one transaction, exactly once per (run, image).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import DateTimeField, Exists, F, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Coalesce, Now
from django.utils import timezone
from rq import Worker

from seke_app.engine.cascade import CascadeResult, run_cascade
from seke_app.engine.llm.client import VLLMError
from seke_app.engine.types import AnnotationRequest, Backend, KnownLabels, Usage
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc
from seke_app.insights.references import decided_images
from seke_app.models import (
    Annotation,
    AnnotationSample,
    Dataset,
    FaceImage,
    GenerationRun,
    PromptVersion,
    RunItem,
)
from seke_app.models.runs import NAME_MAX_LENGTH, STRONG_MODEL_MAX_LENGTH, confident
from seke_app.queue import QueueUnavailable, get_queue
from seke_app.runs import batches, hooks
from seke_app.runs.backends import (
    BackendUnavailable,
    backend_for,
    default_model,
    model_priced,
)
from seke_app.runs.calls import ImageCalls, LeaseLost
from seke_app.runs.leases import LeaseKeeper, expired, lease_end, lease_renew, poll_seconds
from seke_app.runs.probes import batch_refused, endpoint_url, latest_probe
from seke_app.runs.prompts import prompt_version_active
from seke_app.runs.rows import (
    annotation_fields,
    cascade_fields,
    cascade_sample_rows,
    money,
    sample_rows,
)
from seke_app.webhooks import events as webhook_events

log = logging.getLogger("seke.runs")

CHUNK_SIZE = 25
# How often a chunk's threads read whether the run was cancelled or stopped.
RUNNING_CHECK_SECONDS = 0.5
# An image whose lease ran out this long ago and that no job took over is shown
# as stalled: the run's jobs take such images over within a poll (see leases).
STALLED_AFTER = timedelta(seconds=10)
# The span over which a running run's throughput is measured.
THROUGHPUT_WINDOW = timedelta(minutes=2)


def chunk_size(concurrency: int) -> int:
    """Images per chunk job: a multiple of the run's concurrency, so that a worker's
    threads stay busy to the end of a chunk (at least CHUNK_SIZE, for small runs
    to still spread over several workers)."""
    return max(CHUNK_SIZE, concurrency * 8)


Status = GenerationRun.Status


class RunRefused(Exception):
    """A run cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class ImageFilter:
    split: str = ""
    only_unconfident: bool = False
    image_ids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "only_unconfident": self.only_unconfident,
            "n_image_ids": len(self.image_ids),
        }


def select_images(dataset: Dataset, image_filter: ImageFilter) -> QuerySet[FaceImage]:
    images = dataset.images.filter(rejected=False)
    if image_filter.split:
        images = images.filter(split=image_filter.split)
    if image_filter.image_ids:
        images = images.filter(id__in=image_filter.image_ids)
    if image_filter.only_unconfident:
        # "Confident" means a machine label confident under its run's current
        # threshold (``confident()``), or any human decision.
        accepted = Annotation.objects.filter(confident(), image=OuterRef("pk"))
        images = images.exclude(Exists(accepted)).exclude(decided_images())
    return images.distinct()


def audit_draw(ids: list[int], *, share: float, seed: int) -> list[int]:
    """The images of a run sent to the blind audit: a seeded uniform draw over all of
    them, ``GenerationRun.audit_size`` many, whatever their later confidence."""
    size = GenerationRun.audit_size(share, len(ids))
    return sorted(random.Random(seed).sample(sorted(ids), size))


def run_create(
    *,
    dataset: Dataset,
    backend: str,
    params: UAMCParams,
    model_name: str = "",
    strong_model: str = "",
    prompt_version: PromptVersion | None = None,
    budget_usd: Decimal | None = None,
    concurrency: int = 4,
    image_filter: ImageFilter | None = None,
    double_review_share: float = 0.0,
    audit_share: float = 0.05,
    name: str = "",
    user: AbstractBaseUser | None = None,
    enqueue: bool = True,
    batch: bool = False,
) -> GenerationRun:
    """Create a run over the selected images and enqueue it once committed.

    ``name`` is optional (surrounding and repeated spaces are dropped); the run's
    number within its dataset is given when it is saved.

    ``strong_model`` makes the run a cascade (``engine.cascade``): the images
    ``model_name`` leaves unsure go to it, and its answer decides.

    ``enqueue=False`` leaves the run queued with no job, for a caller that
    processes it in its own process (``run_generation --inline``).

    ``batch`` sends the run's calls through the OpenAI Batch API, a round at a time
    (``seke_app.runs.batches``); only the openai backend has it.
    """
    image_filter = image_filter or ImageFilter()
    if backend not in GenerationRun.Backend.values:
        raise RunRefused(f"unknown backend {backend!r}")
    if not 1 <= concurrency <= 64:
        raise RunRefused("concurrency must be between 1 and 64")
    if not 0.0 <= double_review_share <= 1.0:
        raise RunRefused("the double-review share must lie between 0 and 1")
    if not 0.0 <= audit_share <= 1.0:
        raise RunRefused("the audit share must lie between 0 and 1")
    if budget_usd is not None and budget_usd <= 0:
        raise RunRefused("the cost cap must be positive (leave it empty for none)")
    name = " ".join(name.split())
    if len(name) > NAME_MAX_LENGTH:
        raise RunRefused(f"a run's name has at most {NAME_MAX_LENGTH} characters")
    if batch and backend != GenerationRun.Backend.OPENAI:
        raise RunRefused(
            "the Batch API is OpenAI's: a batch run needs the OpenAI-compatible backend"
        )
    model_name = model_name or default_model(backend)
    strong_model = strong_model.strip()
    check_strong_model(backend, model_name, strong_model)
    if batch:
        refused = batch_refused(latest_probe(endpoint_url(), model_name))
        if refused is not None:
            raise RunRefused(refused)
    if batch and strong_model:
        raise RunRefused(
            "a batch run cannot be a cascade yet: leave the strong model empty, or"
            " run without the Batch API"
        )
    unpriced = [
        each for each in (model_name, strong_model) if each and not model_priced(backend, each)
    ]
    priced = not unpriced
    if budget_usd is not None and not priced:
        raise RunRefused(
            f"the model {unpriced[0]!r} has no known price, so a cost cap could not be"
            " enforced: add its price to SEKE_PRICES, or leave the cap empty"
        )
    prompt_version = prompt_version or prompt_version_active()
    try:
        for each in (model_name, strong_model) if strong_model else (model_name,):
            backend_for(
                backend, each, prompt_version, concurrency=concurrency, check_only=True
            ).close()
    except BackendUnavailable as exc:
        raise RunRefused(str(exc)) from None
    # Checked before anything is written: a run that cannot be queued is not created.
    get_queue("generation")
    with transaction.atomic():
        run = GenerationRun.objects.create(
            dataset=dataset,
            backend=backend,
            model_name=model_name,
            strong_model=strong_model,
            prompt_version=prompt_version,
            params=params.to_json(),
            image_filter=image_filter.to_json(),
            review_threshold=params.review_threshold,
            budget_usd=budget_usd,
            priced=priced,
            concurrency=concurrency,
            double_review_share=double_review_share,
            audit_share=audit_share,
            audit_seed=secrets.randbits(62),
            name=name,
            created_by=user,  # type: ignore[misc]
            batch=batch,
        )
        ids = list(select_images(dataset, image_filter).values_list("id", flat=True))
        if not ids:
            raise RunRefused("no image matches the selection")
        audited = set(audit_draw(ids, share=audit_share, seed=run.audit_seed))
        RunItem.objects.bulk_create(
            [RunItem(run=run, image_id=image_id, audit=image_id in audited) for image_id in ids],
            batch_size=1000,
        )
        run.n_total = len(ids)
        run.save(update_fields=["n_total"])
        if enqueue:
            transaction.on_commit(lambda: run_enqueue(run_id=run.id))
    return run


def check_strong_model(backend: str, model_name: str, strong_model: str) -> None:
    """Refuse a cascade that cannot work as asked (``engine.cascade``): the run form
    checks its fields here too, so that the page, the API and the command agree."""
    if not strong_model:
        return
    if backend != GenerationRun.Backend.OPENAI:
        raise RunRefused(
            "a strong model (a cascade) needs the OpenAI-compatible backend: the offline"
            " annotator has one model; leave the strong model empty"
        )
    if strong_model == model_name:
        raise RunRefused(
            f"the strong model is the run's model ({model_name}): a cascade escalates to"
            " another model; leave it empty for a run of one model"
        )
    if len(strong_model) > STRONG_MODEL_MAX_LENGTH:
        raise RunRefused(f"a model's name has at most {STRONG_MODEL_MAX_LENGTH} characters")


def run_enqueue(*, run_id: int) -> int:
    """Queue chunk jobs for every pending item of the run; return how many jobs.

    A batch run gets one job instead, its next batch step (``batches``).
    """
    if GenerationRun.objects.values_list("batch", flat=True).get(id=run_id):
        batches.batch_enqueue(run_id=run_id)
        return 1
    queue = get_queue("generation")
    ids = list(
        RunItem.objects.filter(run_id=run_id, status=RunItem.Status.PENDING)
        .order_by("id")
        .values_list("id", flat=True)
    )
    concurrency = GenerationRun.objects.values_list("concurrency", flat=True).get(id=run_id)
    size = chunk_size(concurrency)
    jobs = []
    for start in range(0, len(ids), size):
        jobs.append(
            queue.enqueue(
                "seke_app.runs.jobs.process_chunk",
                run_id,
                ids[start : start + size],
                job_timeout=settings.JOB_TIMEOUT,
                failure_ttl=7 * 24 * 3600,
            )
        )
    if jobs:
        GenerationRun.objects.filter(id=run_id).update(job_id=jobs[0].id)
    else:
        run_finish_if_done(run_id)
    return len(jobs)


# --- Processing ----------------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_process_chunk(*, run_id: int, item_ids: list[int]) -> None:
    """Annotate the chunk's items, then the run's other free ones, until none is left.

    The first job to start takes the run from queued to running; ``started_at``
    keeps the first start, ``resumed_at`` this one. A job that finds the run
    running (another job started it, or it was re-queued while running) just
    joins in, so pressing Resume never pauses the work.
    """
    now = timezone.now()
    started = GenerationRun.objects.filter(id=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING,
        started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
        resumed_at=now,
    )
    run = GenerationRun.objects.select_related("dataset", "prompt_version").get(id=run_id)
    if started:
        log.info("run %s started", run.code)
    if run.status != Status.RUNNING or run.batch:
        # A batch run's calls go through its batch steps, never a chunk's threads.
        return
    # The chunk's threads share the backends (the strong one of a cascade too);
    # once they have all finished, their clients' connections are closed, whatever
    # ended the chunk.
    with contextlib.ExitStack() as stack:
        try:
            backend = stack.enter_context(
                backend_for(
                    run.backend, run.model_name, run.prompt_version, concurrency=run.concurrency
                )
            )
            strong = None
            if run.strong_model:
                strong = stack.enter_context(
                    backend_for(
                        run.backend,
                        run.strong_model,
                        run.prompt_version,
                        concurrency=run.concurrency,
                    )
                )
        except BackendUnavailable as exc:
            run_fail(run_id, str(exc))
            return
        leases = stack.enter_context(LeaseKeeper(worker_name()))
        params = UAMCParams.from_json(run.params)
        _process_items(run, Models(backend, strong), params, item_ids, leases)
    run_finish_if_done(run_id)


def pool_threads(run: GenerationRun) -> int:
    """Threads a worker uses for one chunk of ``run``.

    On an OpenAI-compatible endpoint, ``concurrency`` is the number of requests in
    flight, which the client's semaphore enforces. Each image also spends time on
    its own database writes, during which it holds no request; half as many
    threads again let those writes overlap other images' requests, so the endpoint
    keeps ``concurrency`` requests open (``python bench/run_throughput.py``
    measures the share of that ideal reached; figures in ``bench/README.md``).
    The offline annotator has no such wait: its threads are its concurrency.
    """
    if run.backend == GenerationRun.Backend.OPENAI and run.concurrency > 1:
        return run.concurrency + (run.concurrency + 1) // 2
    return run.concurrency


class _RunningGate:
    """Whether the run is still going, read from the database at most every
    ``interval`` seconds and shared by a chunk's threads (a cancel is seen within
    that interval; the per-image query it replaces cost a round trip each)."""

    def __init__(self, run_id: int, interval: float) -> None:
        self._run_id = run_id
        self._interval = interval
        self._lock = threading.Lock()
        self._checked_at = -math.inf
        self._running = True

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._running and now - self._checked_at >= self._interval:
                self._running = run_is_running(self._run_id)
                self._checked_at = now
            return self._running

    def stop(self) -> None:
        with self._lock:
            self._running = False


class _Feed:
    """The items a chunk's threads take, one at a time.

    First the chunk's own; then any item of the run that is pending or whose
    lease ran out, fetched in small batches; then, while any item of the run is
    still held, the feed waits, looking every ``poll_seconds()`` for a lease that
    ran out. Taking later chunks' items keeps every thread busy until the run has
    no work left (the later chunk jobs then find their items done and end at
    once), and waiting for the held ones lets a dead worker's images be finished
    by the jobs still running, without anyone pressing a button. A handed-out item
    is only a candidate: ``item_claim`` decides who annotates it, so two feeds
    offering the same item never annotate it twice.
    """

    def __init__(
        self, run_id: int, item_ids: list[int], *, running: _RunningGate, batch: int
    ) -> None:
        self._run_id = run_id
        self._own = deque(item_ids)
        self._found: deque[int] = deque()
        self._running = running
        self._batch = batch
        self._poll = poll_seconds()
        self._lock = threading.Lock()
        self._look_at = -math.inf
        self._done = False

    def next(self) -> int | None:
        while self._running():
            with self._lock:
                if self._own:
                    return self._own.popleft()
                if not self._found and not self._done and time.monotonic() >= self._look_at:
                    self._look()
                if self._found:
                    return self._found.popleft()
                if self._done:
                    return None
                wait = self._look_at - time.monotonic()
            time.sleep(min(max(wait, 0.01), self._poll))
        return None

    def _look(self) -> None:
        """Fetch free items; done once the run has none and nobody holds any."""
        items = RunItem.objects.filter(run_id=self._run_id)
        free = items.filter(Q(status=RunItem.Status.PENDING) | expired()).order_by("id")
        self._found.extend(free.values_list("id", flat=True)[: self._batch])
        if not self._found:
            self._look_at = time.monotonic() + self._poll
            self._done = not items.filter(status=RunItem.Status.LEASED).exists()


@dataclass(frozen=True)
class Models:
    """The backends a chunk calls: the run's model, and a cascade's strong model."""

    backend: Backend
    strong: Backend | None = None


def _process_items(
    run: GenerationRun,
    models: Models,
    params: UAMCParams,
    item_ids: list[int],
    leases: LeaseKeeper,
) -> None:
    running = _RunningGate(run.id, RUNNING_CHECK_SECONDS)
    threads = pool_threads(run)
    feed = _Feed(run.id, item_ids, running=running, batch=threads)

    def work() -> None:
        while (item_id := feed.next()) is not None:
            if not _process_one(run, models, params, item_id, running, leases):
                return

    if threads <= 1:
        work()
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(work) for _ in range(threads)]:
            future.result()
        _close_thread_connections(pool, threads)


def _close_thread_connections(pool: ThreadPoolExecutor, threads: int) -> None:
    """Close the database connection each pool thread opened, once, at the end.

    A connection per thread is kept for the whole chunk, because opening one per
    image made every image pay a new connection (a new server process on
    PostgreSQL; the cost is in ``bench/README.md``); the barrier makes each of the
    ``threads`` tasks run on a different thread, so every thread closes its own.
    """
    barrier = threading.Barrier(threads)

    def close() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        connection.close()

    list(pool.map(lambda _: close(), range(threads)))


def run_is_running(run_id: int) -> bool:
    """Queued or running: a chunk's threads go on (a queued run is one that a
    resume has just handed back to the queue)."""
    status = GenerationRun.objects.filter(id=run_id).values_list("status", flat=True).first()
    return status in (Status.QUEUED, Status.RUNNING)


def _process_one(
    run: GenerationRun,
    models: Models,
    params: UAMCParams,
    item_id: int,
    running: _RunningGate,
    leases: LeaseKeeper,
) -> bool:
    """Annotate one item if it can be claimed; False once the run should stop."""
    if not running():
        return False
    me = worker_name()
    if not item_claim(item_id, me):
        return True
    leases.hold(item_id)
    try:
        _annotate(run, models, params, item_id, me, running)
    finally:
        leases.release(item_id)
    return True


def _annotate(
    run: GenerationRun,
    models: Models,
    params: UAMCParams,
    item_id: int,
    me: str,
    running: _RunningGate,
) -> None:
    """Run SV-UAMC on a claimed item and store the result, or the reason it failed.

    In a cascade, the image the run's model leaves unsure is annotated again by the
    strong model (``engine.cascade``), under the run's review threshold.
    """
    item = RunItem.objects.select_related("image").get(id=item_id)

    def calls(model: Backend, *, strong: bool = False) -> ImageCalls:
        return ImageCalls(
            model,
            renew=lambda: lease_renew(item_id, me),
            record=lambda usage: _record_usage(run, usage, running, strong=strong),
        )

    result: UAMCResult | CascadeResult
    try:
        request = annotation_request_for(item.image, run)
        if models.strong is None:
            result = run_uamc(calls(models.backend), request, params)
        else:
            result = run_cascade(
                calls(models.backend),
                calls(models.strong, strong=True),
                request,
                params,
                threshold=run.review_threshold,
            )
    except LeaseLost:
        log.info("run %s: image %s was taken over by another worker", run.code, item.image.code)
        return
    except VLLMError as exc:
        item_fail(run.id, item_id, me, vllm_reason(exc))
        return
    except Exception as exc:
        log.exception("run %s: image %s failed", run.code, item.image.code)
        item_fail(run.id, item_id, me, f"internal error: {type(exc).__name__}: {exc}")
        return
    result_store(run, item_id, item.image_id, me, result)


def _record_usage(
    run: GenerationRun, usage: Usage, running: _RunningGate, *, strong: bool = False
) -> None:
    """Add one model call's usage to the run as it returns, and stop at the cost cap.

    A cascade's strong-model call is added to the strong model's share as well.
    """
    if not (usage.requests or usage.prompt_tokens or usage.completion_tokens or usage.cost_usd):
        return
    fields = ("requests", "prompt_tokens", "completion_tokens")
    values: dict[str, Any] = {name: getattr(usage, name) for name in fields}
    values["cost_usd"] = money(usage.cost_usd)
    changes = {name: F(name) + value for name, value in values.items()}
    if strong:
        changes |= {f"strong_{name}": F(f"strong_{name}") + value for name, value in values.items()}
    GenerationRun.objects.filter(id=run.id).update(**changes)
    if run.budget_usd is not None and run_stop_at_budget(run.id):
        running.stop()


def item_claim(item_id: int, me: str) -> bool:
    """Take an item that is pending or whose lease has expired (a conditional UPDATE)."""
    return (
        RunItem.objects.filter(id=item_id)
        .filter(Q(status=RunItem.Status.PENDING) | expired())
        .update(
            status=RunItem.Status.LEASED,
            lease_until=lease_end(),
            worker=me,
            attempts=F("attempts") + 1,
        )
        == 1
    )


def _expired_items(run_id: int, *, since: timedelta = timedelta(0)) -> list[int]:
    """Items whose lease ran out (at least ``since`` ago)."""
    return list(
        RunItem.objects.filter(
            run_id=run_id, status=RunItem.Status.LEASED, lease_until__lt=Now() - since
        ).values_list("id", flat=True)
    )


def annotation_request_for(image: FaceImage, run: GenerationRun) -> AnnotationRequest:
    with image.file.open("rb") as handle:
        data = handle.read()
    known = KnownLabels(
        expression=image.known_expression,
        valence=image.known_valence,
        arousal=image.known_arousal,
        aus=image.known_aus_dict(),
    )
    version = run.prompt_version
    return AnnotationRequest(
        image_bytes=data,
        vocabulary=run.dataset.vocabulary(),
        known=known,
        knowledge_text=version.knowledge_text
        + (f"\n\n{version.rule_notes}" if version.rule_notes else ""),
        exemplars=tuple(version.exemplars),
        image_id=str(image.code),
    )


def vllm_reason(exc: VLLMError) -> str:
    retry = "a retry may help" if exc.retryable else "a retry will not help"
    status = f"HTTP {exc.status}: " if exc.status else ""
    return f"model call failed ({status}{exc}); {retry}"


def _holds(item_id: int, me: str) -> bool:
    item = RunItem.objects.select_for_update().get(id=item_id)
    return item.status == RunItem.Status.LEASED and item.worker == me


def item_fail(run_id: int, item_id: int, me: str, reason: str) -> None:
    with transaction.atomic():
        if not _holds(item_id, me):
            return
        RunItem.objects.filter(id=item_id).update(
            status=RunItem.Status.FAILED,
            error=reason[:2000],
            lease_until=None,
            finished_at=timezone.now(),
        )
        GenerationRun.objects.filter(id=run_id).update(n_failed=F("n_failed") + 1)


def result_store(
    run: GenerationRun,
    item_id: int,
    image_id: int,
    me: str,
    result: UAMCResult | CascadeResult,
) -> None:
    escalated = isinstance(result, CascadeResult) and result.escalated
    with transaction.atomic():
        if not _holds(item_id, me):
            # Our lease expired and another worker took the image over: theirs counts.
            return
        annotation = Annotation.objects.create(
            run=run,
            image_id=image_id,
            prompt_version=run.prompt_version,
            **(
                cascade_fields(result)
                if isinstance(result, CascadeResult)
                else annotation_fields(result)
            ),
        )
        AnnotationSample.objects.bulk_create(
            cascade_sample_rows(annotation, result)
            if isinstance(result, CascadeResult)
            else sample_rows(annotation, result)
        )
        for hook in hooks.annotation_written:
            hook(annotation)
        RunItem.objects.filter(id=item_id).update(
            status=RunItem.Status.DONE, lease_until=None, error="", finished_at=timezone.now()
        )
        # The usage was added to the run call by call (``_record_usage``). The
        # counters follow the run's current threshold, which cannot change while
        # it is at work (``seke_app.runs.threshold``).
        accepted = annotation.is_confident(run.review_threshold)
        GenerationRun.objects.filter(id=run.id).update(
            n_done=F("n_done") + 1,
            n_flagged=F("n_flagged") + int(not accepted),
            n_accepted=F("n_accepted") + int(accepted),
            n_escalated=F("n_escalated") + int(escalated),
        )


# --- Run state -----------------------------------------------------------------------


def _announce_stop(run_id: int) -> None:
    """Tell whoever listens that the run stopped: webhooks (``run.finished``) and the
    other apps' hooks. Called in the transaction of the UPDATE that stopped it, and
    only when that UPDATE changed the row, so that each stop is announced once."""
    run = GenerationRun.objects.select_related("dataset", "prompt_version").get(id=run_id)
    webhook_events.run_finished(run)
    for hook in hooks.run_finished:
        hook(run)


def run_stop_at_budget(run_id: int) -> bool:
    with transaction.atomic():
        stopped = GenerationRun.objects.filter(
            id=run_id,
            status=Status.RUNNING,
            budget_usd__isnull=False,
            cost_usd__gte=F("budget_usd"),
        ).update(status=Status.BUDGET_EXHAUSTED, finished_at=timezone.now())
        if stopped:
            _announce_stop(run_id)
    if stopped:
        log.info("run %s stopped at its cost cap", run_id)
    return bool(stopped)


def run_finish_if_done(run_id: int) -> None:
    open_items = RunItem.objects.filter(
        run_id=run_id, status__in=[RunItem.Status.PENDING, RunItem.Status.LEASED]
    )
    if open_items.exists():
        return
    with transaction.atomic():
        finished = GenerationRun.objects.filter(
            id=run_id, status__in=[Status.RUNNING, Status.QUEUED]
        ).update(status=Status.COMPLETED, finished_at=timezone.now())
        if finished:
            _announce_stop(run_id)


def run_fail(run_id: int, reason: str) -> None:
    # A run that has stopped already keeps its end (and the reason it was given):
    # every chunk job of a run whose backend is missing comes here.
    with transaction.atomic():
        failed = (
            GenerationRun.objects.filter(id=run_id)
            .exclude(status__in=GenerationRun.FINISHED)
            .update(status=Status.FAILED, error=reason, finished_at=timezone.now())
        )
        if failed:
            _announce_stop(run_id)


def run_cancel(*, run: GenerationRun) -> None:
    """Stop handing out new images; images in flight finish and are kept."""
    with transaction.atomic():
        changed = GenerationRun.objects.filter(
            id=run.id, status__in=[Status.QUEUED, Status.RUNNING]
        ).update(status=Status.CANCELLED, cancelled_at=timezone.now(), finished_at=timezone.now())
        if not changed:
            raise RunRefused(
                f"a run that is {run.get_status_display().lower()} cannot be cancelled"
            )
        _announce_stop(run.id)
    if run.batch:
        batches.batch_cancel_open(run=run)


_STOPPED = (Status.CANCELLING, Status.CANCELLED, Status.BUDGET_EXHAUSTED, Status.FAILED)


def run_resume(*, run: GenerationRun) -> int:
    """Queue again every image not done: never started, or held under a lease that ran out.

    Safe at any time. A stopped run (cancelled, at its cost cap, failed) is queued
    again. A queued or running run keeps its status, so that its jobs at work go
    on without a pause: the images are handed to new chunk jobs, and claims are
    atomic, so a job for images another worker already took finds nothing to do.
    The run's jobs take over a dead worker's images by themselves; this is for a
    run with no job left, e.g. one whose only worker died.
    """
    if run.status == Status.COMPLETED:
        raise RunRefused("the run is complete; retry its failed images instead")
    stopped = run.status in _STOPPED
    if not stopped and not run_resumable(run):
        raise RunRefused("every remaining image is being worked on; nothing to resume")
    with transaction.atomic():
        RunItem.objects.filter(expired(), run=run).update(
            status=RunItem.Status.PENDING, lease_until=None, worker=""
        )
        GenerationRun.objects.filter(id=run.id, status__in=_STOPPED).update(
            status=Status.QUEUED, finished_at=None, cancelled_at=None, error=""
        )
        transaction.on_commit(lambda: run_enqueue(run_id=run.id))
    return RunItem.objects.filter(run=run, status=RunItem.Status.PENDING).count()


def run_retry_failed(*, run: GenerationRun) -> int:
    """Queue the run's failed images again; return how many."""
    if run.status in (Status.QUEUED, Status.RUNNING):
        raise RunRefused("wait for the run to stop before retrying its failed images")
    with transaction.atomic():
        count = RunItem.objects.filter(run=run, status=RunItem.Status.FAILED).update(
            status=RunItem.Status.PENDING,
            error="",
            lease_until=None,
            worker="",
            finished_at=None,
            batch_failures=0,
        )
        if not count:
            raise RunRefused("the run has no failed images")
        GenerationRun.objects.filter(id=run.id).update(
            status=Status.QUEUED, n_failed=F("n_failed") - count, finished_at=None, error=""
        )
        transaction.on_commit(lambda: run_enqueue(run_id=run.id))
    return count


def run_resumable(run: GenerationRun) -> bool:
    """True when some image of the run is pending or held under an expired lease."""
    return RunItem.objects.filter(Q(status=RunItem.Status.PENDING) | expired(), run=run).exists()


def run_stalled_items(run: GenerationRun) -> int:
    """Images held under a lease that ran out a while ago and that no job took over.

    The run's jobs take such an image over within a poll of its lease running out;
    one still waiting ``STALLED_AFTER`` later means no job of the run is left
    (its only worker died, say), and **Re-queue waiting images** is needed.
    """
    return len(_expired_items(run.id, since=STALLED_AFTER))


def run_throughput(run: GenerationRun, *, now: datetime | None = None) -> float | None:
    """Images finished per second, from when they actually finished.

    For a run at work, over the last ``THROUGHPUT_WINDOW`` (or since it was last
    started or resumed, if that is later), so that the time left follows the
    current pace; for a finished run, over its last stretch of work. None until
    an image has finished.
    """
    since = run.resumed_at or run.started_at
    if since is None:
        return None
    end = run.finished_at if run.is_finished() and run.finished_at else now or timezone.now()
    start = since if run.is_finished() else max(since, end - THROUGHPUT_WINDOW)
    span = (end - start).total_seconds()
    if span <= 0:
        return None
    finished = RunItem.objects.filter(run=run, finished_at__gt=start, finished_at__lte=end)
    count = finished.count()
    return count / span if count else None


def generation_workers() -> int:
    """How many RQ workers listen on the generation queue (raises QueueUnavailable)."""
    queue = get_queue("generation")
    try:
        return Worker.count(queue=queue)
    except redis.RedisError as exc:
        raise QueueUnavailable(f"Redis does not answer: {exc}") from None


def run_recent_errors(run: GenerationRun, limit: int = 10) -> list[tuple[str, str]]:
    rows = (
        RunItem.objects.filter(run=run, status=RunItem.Status.FAILED)
        .order_by("-finished_at", "-id")
        .values_list("image__original_name", "error")[:limit]
    )
    return [(name, error) for name, error in rows]
