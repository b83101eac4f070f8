"""Batch runs: SV-UAMC's rounds of calls sent through the OpenAI Batch API.

A batch run (``GenerationRun.batch``) makes the same calls as a synchronous run,
but a round at a time, each round one Batch API job billed at half the list
price and answered within 24 hours (``RunBatch``):

1. A *round* replays every open image from the replies recorded on its item
   (``engine.llm.batch.replay``). An image whose replies answer every call it
   makes gets its annotation, written by the same ``result_store`` as a synchronous run
   (so review, audits and certificates see no difference); every other image adds
   its next call as a line of the round's JSONL: the first samples, extra samples
   while it is unsure, or the verification. The file is uploaded
   (``purpose=batch``), the batch created (its metadata naming the run and the
   round), and its id stored before anything else happens, so that it is never
   lost. A job that dies between the creation and the storing, or a creation
   that got no answer (it is sent once, never retried: the endpoint may have
   created the batch all the same), leaves a round without a batch id: its poll
   looks the batch up by its metadata among the
   endpoint's recent batches and adopts it. Only when the endpoint has no such
   batch (or cannot list its batches at all) is the round closed as not sent and
   its lines sent again, so that a batch that can be found is not paid for twice.
2. A *poll* asks the endpoint about the run's open batch every
   ``SEKE_BATCH_POLL_SECONDS`` (a job scheduled in Redis, which survives a
   worker's restart; ``run_resume`` queues one again when it was lost). Once the
   batch has stopped, its output and error files are read: each answered line's
   completion is recorded on its item and its usage added to the run at batch
   prices (``client.batch_price``); a line that failed or expired is sent again
   in the next round, until the image has had ``SEKE_BATCH_LINE_ATTEMPTS`` such
   lines, when it fails with the last line's reason. Then the next round starts,
   or the run is complete when no image is open.

Cancelling the run cancels its open batch (``batch_cancel_open``); its lines
answered before the cancel are still collected, since they are paid for, and a
resumed run goes on from them. The cost cap is checked between rounds.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import DateTimeField, F, Max, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from seke_app.engine.llm.backend import OpenAIBackend
from seke_app.engine.llm.batch import Call, CallKind, ReplayMismatch, Reply, replay
from seke_app.engine.llm.client import BatchState, VLLMError
from seke_app.engine.types import Usage
from seke_app.engine.uamc import UAMCParams
from seke_app.models import GenerationRun, RunBatch, RunItem
from seke_app.queue import get_queue
from seke_app.runs import rows, services
from seke_app.runs.backends import BackendUnavailable, batch_backend_for

log = logging.getLogger("seke.runs")

Status = GenerationRun.Status

# The Batch API's limits per batch are 50,000 lines and a 200 MB input file; a round
# stays under both, and the images left out go in the next round.
MAX_LINES = 50_000
MAX_BYTES = 190 * 1024 * 1024
_POLL_TIMEOUT = 600
# A lost batch is looked for among those created since its round was recorded, less
# this margin for a difference between SEKE's clock and the endpoint's.
_FIND_MARGIN = timedelta(hours=1)


def batch_enqueue(*, run_id: int, delay_s: int = 0) -> None:
    """Queue the run's next batch step (a poll of its open batch, or a new round)."""
    queue = get_queue("generation")
    args = ("seke_app.runs.jobs.batch_step", run_id)
    options: dict[str, Any] = {"job_timeout": settings.JOB_TIMEOUT, "failure_ttl": 7 * 24 * 3600}
    if delay_s > 0:
        queue.enqueue_in(timedelta(seconds=delay_s), *args, **options)
    else:
        queue.enqueue(*args, **options)


def open_batch(run_id: int) -> RunBatch | None:
    """The run's batch whose replies are not yet collected, if any."""
    return RunBatch.objects.filter(run_id=run_id, collected_at__isnull=True).first()


def run_batch_step(*, run_id: int) -> None:
    """Poll the run's open batch, or start its next round when it has none."""
    batch = open_batch(run_id)
    if batch is not None:
        batch_poll(batch_pk=batch.pk)
    else:
        batch_round(run_id=run_id)


# --- Rounds ---------------------------------------------------------------------------


def _start(run_id: int) -> GenerationRun | None:
    """The run, taken from queued to running; None when it is not to be worked on."""
    now = timezone.now()
    GenerationRun.objects.filter(id=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING,
        started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
        resumed_at=now,
    )
    run = GenerationRun.objects.select_related("dataset", "prompt_version").get(id=run_id)
    return run if run.status == Status.RUNNING else None


def batch_round(*, run_id: int) -> RunBatch | None:
    """Store the images whose replies are complete and send the others' next calls
    as one batch; finish the run when no image is open. Returns the new round."""
    run = _start(run_id)
    if run is None:
        return None
    try:
        backend = batch_backend_for(run.model_name)
    except BackendUnavailable as exc:
        services.run_fail(run_id, str(exc))
        return None
    with backend:
        lines, sent, data = _lines(run, backend)
        if not lines:
            services.run_finish_if_done(run_id)
            return None
        return _send(run, backend, lines, sent, data)


def _lines(
    run: GenerationRun, backend: OpenAIBackend
) -> tuple[list[list[Any]], Counter[str], bytes]:
    """Advance every open image; return the lines of their next calls, what they ask
    (first, more, verify) and the JSONL."""
    params = UAMCParams.from_json(run.params)
    lines: list[list[Any]] = []
    asked: Counter[str] = Counter()
    chunks: list[bytes] = []
    size = 0
    for item in _open_items(run):
        call = _advance(run, backend, params, item)
        if call is None:
            continue
        index = len(item.batch_replies)
        chunk = _jsonl_line(item.id, index, call)
        if len(lines) >= MAX_LINES or size + len(chunk) > MAX_BYTES:
            break
        chunks.append(chunk)
        size += len(chunk)
        lines.append([item.id, index, call.kind, call.k])
        asked["verify" if call.kind == "verify" else "first" if index == 0 else "more"] += 1
    return lines, asked, b"".join(chunks)


def _open_items(run: GenerationRun) -> Iterator[RunItem]:
    items = RunItem.objects.filter(run=run, status=RunItem.Status.PENDING).select_related("image")
    return items.order_by("id").iterator(chunk_size=200)


def _custom_id(item_id: int, index: int) -> str:
    return f"item-{item_id}-call-{index}"


def _jsonl_line(item_id: int, index: int, call: Call) -> bytes:
    line = {
        "custom_id": _custom_id(item_id, index),
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": call.body,
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def _advance(
    run: GenerationRun, backend: OpenAIBackend, params: UAMCParams, item: RunItem
) -> Call | None:
    """The image's next call, or None once its annotation (or failure) is written."""
    me = f"batch:{services.worker_name()}"
    try:
        request = services.annotation_request_for(item.image, run)
        replies = [Reply.from_json(reply) for reply in item.batch_replies]
        outcome = replay(backend, replies, request, params)
    except (VLLMError, ReplayMismatch) as exc:
        _fail_item(run.id, item.id, f"the recorded replies cannot be used: {exc}")
        return None
    except Exception as exc:
        log.exception("run %s: image %s failed", run.code, item.image.code)
        _fail_item(run.id, item.id, f"internal error: {type(exc).__name__}: {exc}")
        return None
    if isinstance(outcome, Call):
        return outcome
    if services.item_claim(item.id, me):
        services.result_store(run, item.id, item.image_id, me, outcome)
    return None


def _fail_item(run_id: int, item_id: int, reason: str) -> None:
    me = f"batch:{services.worker_name()}"
    if services.item_claim(item_id, me):
        services.item_fail(run_id, item_id, me, reason)


def _send(
    run: GenerationRun,
    backend: OpenAIBackend,
    lines: list[list[Any]],
    asked: Counter[str],
    data: bytes,
) -> RunBatch | None:
    """Record the round, then upload its file and create its batch."""
    if not services.run_is_running(run.id):
        # Cancelled while the round was being built: nothing is sent.
        return None
    number = (RunBatch.objects.filter(run=run).aggregate(n=Max("number"))["n"] or 0) + 1
    try:
        with transaction.atomic():
            batch = RunBatch.objects.create(
                run=run, number=number, asked=dict(asked), lines=lines, n_lines=len(lines)
            )
    except IntegrityError:
        # Another job of the run started this round (a resume while a poll ran).
        return None
    client = backend.client
    try:
        file_id = client.batch_upload(data, filename=f"seke-{run.code}-{number}.jsonl")
    except VLLMError as exc:
        _round_not_sent(run, batch, exc)
        return None
    RunBatch.objects.filter(pk=batch.pk).update(input_file_id=file_id)
    metadata = {"seke_run": str(run.code), "seke_round": str(number)}
    try:
        state = client.batch_create(file_id, metadata=metadata)
    except VLLMError as exc:
        if not exc.retryable:
            _round_not_sent(run, batch, exc)
            return None
        # No answer (a timeout, a 5xx): the endpoint may have created the batch all
        # the same. The round stays open without an id, and the next poll looks for
        # its batch by its metadata; only if there is none is the round sent again.
        RunBatch.objects.filter(pk=batch.pk).update(error=services.vllm_reason(exc))
        batch_enqueue(run_id=run.id, delay_s=settings.BATCH_POLL_SECONDS)
        return None
    RunBatch.objects.filter(pk=batch.pk).update(batch_id=state.id)
    _mirror(batch.pk, state)
    log.info("run %s: round %d sent as batch %s (%d lines)", run.code, number, state.id, len(lines))
    batch_enqueue(run_id=run.id, delay_s=settings.BATCH_POLL_SECONDS)
    batch.refresh_from_db()
    return batch


def _round_not_sent(run: GenerationRun, batch: RunBatch, exc: VLLMError) -> None:
    """A round whose file or batch the endpoint did not take: closed with the reason;
    tried again later when a retry can help, else the run fails."""
    RunBatch.objects.filter(pk=batch.pk).update(
        status=RunBatch.Status.FAILED,
        error=services.vllm_reason(exc),
        finished_at=timezone.now(),
        collected_at=timezone.now(),
    )
    if exc.retryable:
        batch_enqueue(run_id=run.id, delay_s=settings.BATCH_POLL_SECONDS)
    else:
        services.run_fail(run.id, f"round {batch.number} could not be sent: {exc}")


# --- Polls ----------------------------------------------------------------------------


def _mirror(batch_pk: int, state: BatchState) -> None:
    """Copy the endpoint's view of the batch onto its row."""
    fields: dict[str, Any] = {
        "status": state.status,
        "n_completed": state.completed,
        "n_failed": state.failed,
    }
    if state.status not in RunBatch.Status.values:
        fields["status"] = RunBatch.Status.FAILED
        fields["error"] = f"unknown batch status {state.status!r}"
    if state.final:
        fields["finished_at"] = timezone.now()
    if state.errors:
        fields["error"] = "; ".join(state.errors)[:2000]
    RunBatch.objects.filter(pk=batch_pk, collected_at__isnull=True).update(**fields)


def batch_poll(*, batch_pk: int) -> None:
    """Ask about an open batch; once it has stopped, collect it and go on with the run."""
    batch = RunBatch.objects.select_related("run").get(pk=batch_pk)
    run = batch.run
    if batch.collected_at is not None:
        return
    try:
        backend = batch_backend_for(run.model_name)
    except BackendUnavailable as exc:
        services.run_fail(run.id, str(exc))
        return
    with backend:
        if not batch.batch_id:
            found = _find_again(batch, backend)
            if found is None:
                return
            batch = found
        try:
            state = backend.client.batch_retrieve(batch.batch_id)
        except VLLMError as exc:
            RunBatch.objects.filter(pk=batch_pk).update(error=services.vllm_reason(exc))
            if not exc.retryable:
                services.run_fail(run.id, f"batch {batch.batch_id} cannot be read: {exc}")
                return
            batch_enqueue(run_id=run.id, delay_s=settings.BATCH_POLL_SECONDS)
            return
        _mirror(batch_pk, state)
        if not state.final:
            batch_enqueue(run_id=run.id, delay_s=settings.BATCH_POLL_SECONDS)
            return
        if not _collect(batch, state, backend):
            return
    _after_collection(run)


def _find_again(batch: RunBatch, backend: OpenAIBackend) -> RunBatch | None:
    """A round without a batch id, once its batch is found by its metadata and its
    id stored; None when it is not (the round is closed, or looked for again later).

    The job that recorded the round died after the upload or the creation but
    before the batch id was stored. The batch may exist all the same; sending the
    lines again would pay for them twice and never read the first answers.
    """
    run = batch.run
    metadata = {"seke_run": str(run.code), "seke_round": str(batch.number)}
    try:
        state = backend.client.batch_find(metadata, created_after=batch.created_at - _FIND_MARGIN)
    except VLLMError as exc:
        if exc.retryable:
            RunBatch.objects.filter(pk=batch.pk).update(
                error=f"its batch cannot be looked for yet: {services.vllm_reason(exc)}"
            )
            batch_enqueue(run_id=run.id, delay_s=settings.BATCH_POLL_SECONDS)
            return None
        _round_lost(batch, f"the endpoint cannot list its batches: {services.vllm_reason(exc)}")
        return None
    if state is None:
        _round_lost(batch, "the endpoint has no batch for it")
        return None
    fields = {"batch_id": state.id, "error": ""}
    if state.input_file_id:
        fields["input_file_id"] = state.input_file_id
    adopted = RunBatch.objects.filter(pk=batch.pk, batch_id="", collected_at__isnull=True)
    if not adopted.update(**fields):
        return None  # Another job of the run found it first and polls it.
    _mirror(batch.pk, state)
    log.warning(
        "run %s: round %d had no batch id; found its batch %s again by its metadata",
        run.code,
        batch.number,
        state.id,
    )
    if GenerationRun.objects.filter(id=run.id, status=Status.CANCELLED).exists():
        # Cancelled while the batch was lost: it is cancelled as an open batch would be.
        batch_cancel_open(run=run)
    batch.refresh_from_db()
    return batch


def _round_lost(batch: RunBatch, why: str) -> None:
    """Close a round whose batch was not found: nothing was sent under it (as far as
    can be known), so its lines go out again in the next round."""
    RunBatch.objects.filter(pk=batch.pk, collected_at__isnull=True).update(
        status=RunBatch.Status.FAILED,
        error=f"the round was not sent (no batch was created for it as far as can be told; {why})",
        collected_at=timezone.now(),
    )
    batch_enqueue(run_id=batch.run_id)


def _after_collection(run: GenerationRun) -> None:
    """Go on with a running run: stop at its cost cap, or start the next round."""
    if run.budget_usd is not None and services.run_stop_at_budget(run.id):
        return
    status = GenerationRun.objects.values_list("status", flat=True).get(id=run.id)
    if status == Status.RUNNING:
        batch_round(run_id=run.id)


def _file_rows(backend: OpenAIBackend, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    text = backend.client.file_text(file_id)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _collect(batch: RunBatch, state: BatchState, backend: OpenAIBackend) -> bool:
    """Record a stopped batch's replies and failures; False when another job did."""
    try:
        rows = _file_rows(backend, state.output_file_id) + _file_rows(backend, state.error_file_id)
    except (VLLMError, ValueError) as exc:
        RunBatch.objects.filter(pk=batch.pk).update(error=f"its files cannot be read: {exc}")
        batch_enqueue(run_id=batch.run_id, delay_s=settings.BATCH_POLL_SECONDS)
        return False
    by_id = {str(row.get("custom_id")): row for row in rows}
    outcome = _Outcome()
    with transaction.atomic():
        locked = RunBatch.objects.select_for_update().get(pk=batch.pk)
        if locked.collected_at is not None:
            return False
        for item_id, index, kind, k in locked.lines:
            row = by_id.get(_custom_id(item_id, index))
            outcome.line(item_id, index, kind, k, row, state, backend)
        outcome.record(batch.run_id)
        RunBatch.objects.filter(pk=batch.pk).update(
            collected_at=timezone.now(),
            n_completed=outcome.completed,
            n_failed=outcome.failed,
            n_expired=outcome.expired,
        )
    log.info(
        "run %s: batch %s collected (%d answered, %d failed, %d expired)",
        batch.run_id,
        batch.batch_id,
        outcome.completed,
        outcome.failed,
        outcome.expired,
    )
    return True


class _Outcome:
    """What a batch's lines came to: replies recorded, failures counted, usage summed."""

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.expired = 0
        self.usage = Usage()
        self._failures: dict[int, str] = {}

    def line(
        self,
        item_id: int,
        index: int,
        kind: CallKind,
        k: int,
        row: dict[str, Any] | None,
        state: BatchState,
        backend: OpenAIBackend,
    ) -> None:
        body, problem, expired = _reply_of(row, state)
        if body is not None:
            try:
                result = backend.client.batch_result(body, k)
            except VLLMError as exc:
                self.usage = self.usage + exc.usage
                problem = str(exc)
            else:
                self.usage = self.usage + result.usage
                self.completed += 1
                _record_reply(item_id, index, Reply(kind, k, body))
                return
        if expired:
            self.expired += 1
        else:
            self.failed += 1
        self._failures[item_id] = problem or "the line has no result"

    def record(self, run_id: int) -> None:
        usage = self.usage
        if usage.requests or usage.prompt_tokens or usage.completion_tokens:
            GenerationRun.objects.filter(id=run_id).update(
                requests=F("requests") + usage.requests,
                prompt_tokens=F("prompt_tokens") + usage.prompt_tokens,
                completion_tokens=F("completion_tokens") + usage.completion_tokens,
                cost_usd=F("cost_usd") + rows.money(usage.cost_usd),
            )
        for item_id, reason in self._failures.items():
            _line_failed(run_id, item_id, reason)


def _reply_of(
    row: dict[str, Any] | None, state: BatchState
) -> tuple[dict[str, Any] | None, str | None, bool]:
    """A line's completion body, or why it has none and whether it expired."""
    if row is None:
        expired = state.status == "expired"
        reason = (
            "the batch expired before the line was answered"
            if expired
            else (
                f"the line has no result (the batch is {state.status}"
                + (f": {'; '.join(state.errors)})" if state.errors else ")")
            )
        )
        return None, reason, expired
    error = row.get("error") or {}
    if error:
        code = str(error.get("code") or "")
        message = str(error.get("message") or code or "the line failed")
        return None, f"{message} ({code})" if code else message, code == "batch_expired"
    response = row.get("response") or {}
    status = int(response.get("status_code") or 0)
    body = response.get("body")
    if status == 200 and isinstance(body, dict):
        return body, None, False
    detail = body.get("error") if isinstance(body, dict) else None
    said = detail.get("message") if isinstance(detail, dict) else None
    return None, f"HTTP {status}: {said or 'the line failed'}", False


def _record_reply(item_id: int, index: int, reply: Reply) -> None:
    """Append a reply to the image's record, once: a reply for another call index
    (a line collected twice, or a stale one) is ignored."""
    item = RunItem.objects.select_for_update().get(id=item_id)
    if item.status != RunItem.Status.PENDING or len(item.batch_replies) != index:
        return
    RunItem.objects.filter(id=item_id).update(batch_replies=[*item.batch_replies, reply.to_json()])


def _line_failed(run_id: int, item_id: int, reason: str) -> None:
    """Count a failed or expired line; past the limit the image fails with its reason."""
    item = RunItem.objects.select_for_update().get(id=item_id)
    if item.status != RunItem.Status.PENDING:
        return
    failures = item.batch_failures + 1
    if failures < settings.BATCH_LINE_ATTEMPTS:
        RunItem.objects.filter(id=item_id).update(batch_failures=failures)
        return
    RunItem.objects.filter(id=item_id).update(
        batch_failures=failures,
        status=RunItem.Status.FAILED,
        error=f"batch line failed {failures} times; last: {reason}"[:2000],
        finished_at=timezone.now(),
    )
    GenerationRun.objects.filter(id=run_id).update(n_failed=F("n_failed") + 1)


# --- Cancel ---------------------------------------------------------------------------


def batch_cancel_open(*, run: GenerationRun) -> RunBatch | None:
    """Ask the endpoint to cancel the run's open batch; the poll collects what it
    answered before. A failure to ask is recorded on the round, not raised: the run
    is cancelled either way."""
    batch = open_batch(run.id)
    if batch is None or not batch.batch_id or batch.status in _FINAL:
        return batch
    try:
        with batch_backend_for(run.model_name) as backend:
            state = backend.client.batch_cancel(batch.batch_id)
    except (VLLMError, BackendUnavailable) as exc:
        reason = services.vllm_reason(exc) if isinstance(exc, VLLMError) else str(exc)
        RunBatch.objects.filter(pk=batch.pk).update(error=f"cancel failed: {reason}")
    else:
        _mirror(batch.pk, state)
    batch.refresh_from_db()
    return batch


_FINAL = frozenset(
    {
        RunBatch.Status.COMPLETED,
        RunBatch.Status.FAILED,
        RunBatch.Status.EXPIRED,
        RunBatch.Status.CANCELLED,
    }
)
