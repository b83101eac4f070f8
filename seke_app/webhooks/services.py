"""Webhooks: register, test, disable, rotate, delete; deliver, retry, give up.

**Sending.** A delivery is sent by a job on the "default" queue (``jobs.deliver``,
the delivery's code in), one attempt per job. The job claims the row with a
conditional UPDATE (waiting, due, its webhook active, nobody's claim in force),
which also counts the attempt; it schedules a *watchdog* (the same job, due when
the claim runs out), POSTs the signed payload (``http.post``), and records the
attempt and the delivery's new state in one transaction. An answer of 2xx
delivers it. Anything else (another status, a redirect, a timeout, a refused
connection) fails it: the next attempt is due after the next pause of
``WEBHOOK_RETRY_DELAYS`` and a job is scheduled for then; after the last pause
SEKE gives up. A worker that dies mid-send loses nothing: the row keeps its claim
until it runs out, and the watchdog then tries again; the attempt cut short stays
in the log, marked so. Scheduled jobs need RQ's scheduler, which SEKE's
``rqworker`` runs; a worker on "default" also queues every delivery that is due
when it starts (``sweep``), so that deliveries survive a lost queue too.

**Signing.** Each POST carries ``X-SEKE-Timestamp`` (Unix seconds, when it was
sent) and ``X-SEKE-Signature: sha256=<hex>``, the HMAC-SHA256 of
``"<timestamp>.<body>"`` keyed with the webhook's secret: the receiver checks
both that SEKE sent it and that it is recent, so a captured request cannot be
replayed later (README, "Webhooks").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q, QuerySet
from django.utils import timezone

from seke_app.models.webhooks import (
    SUBSCRIBABLE,
    EventName,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    url_problem,
)
from seke_app.queue import QueueUnavailable, get_queue
from seke_app.webhooks import http

log = logging.getLogger("seke.webhooks")

DELIVER = "seke_app.webhooks.jobs.deliver"
SWEEP = "seke_app.webhooks.jobs.sweep"
QUEUE = "default"
INTERRUPTED = "No answer was recorded: the worker stopped during this attempt."
# How early a job may find its delivery: RQ's scheduler counts whole seconds (a job
# scheduled for 10:00:30.7 is queued at 10:00:30), and the scheduler's machine's
# clock may be a little behind the worker's. Without this slack such a job would
# find its retry, or the claim it watches, not yet due and do nothing.
EARLY_BY = timedelta(seconds=5)
Status = WebhookDelivery.Status


class WebhookRefused(Exception):
    """A webhook action that is not allowed now; the message says why. Nothing changed."""


# --- Webhooks ------------------------------------------------------------------------


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def events_problem(events: Sequence[str]) -> str | None:
    """Why ``events`` is not a list of events a webhook can ask for, or None."""
    if not events:
        return "Choose at least one event."
    known = {value for value, _ in SUBSCRIBABLE}
    unknown = sorted(set(events) - known)
    if unknown:
        return f"Unknown events: {', '.join(unknown)}; choose among {', '.join(sorted(known))}."
    return None


def webhook_create(
    *,
    url: str,
    events: Sequence[str],
    description: str = "",
    user: AbstractBaseUser | None = None,
) -> Webhook:
    """A new active webhook with a secret made here; refused with the reason otherwise."""
    url = url.strip()
    problem = url_problem(url) or events_problem(events)
    if problem is None and len(description) > 200:
        problem = "The description is longer than 200 characters."
    if problem:
        raise WebhookRefused(problem)
    ordered = [value for value, _ in SUBSCRIBABLE if value in set(events)]
    return Webhook.objects.create(
        url=url,
        events=ordered,
        description=description.strip(),
        secret=new_secret(),
        created_by=user,  # type: ignore[misc]
    )


def webhook_set_active(*, hook: Webhook, active: bool) -> None:
    """Enable or disable a webhook.

    A disabled webhook gets no new deliveries, and its waiting ones are not sent;
    enabled again, those that came due meanwhile are queued at once.
    """
    if hook.active == active:
        state = "enabled" if active else "disabled"
        raise WebhookRefused(f"The webhook is already {state}.")
    with transaction.atomic():
        Webhook.objects.filter(id=hook.id).update(active=active)
        hook.active = active
        if active:
            due = deliveries_due(timezone.now()).filter(hook=hook)
            codes = [str(code) for code in due.values_list("code", flat=True)]
            transaction.on_commit(lambda: _enqueue(codes))


def webhook_rotate_secret(*, hook: Webhook) -> str:
    """Give the webhook a new secret; deliveries sent from now on are signed with it."""
    hook.secret = new_secret()
    hook.secret_rotated_at = timezone.now()
    hook.save(update_fields=["secret", "secret_rotated_at"])
    return hook.secret


def webhook_delete(*, hook: Webhook) -> None:
    """Delete the webhook with its deliveries and their log; nothing more is sent to it."""
    hook.delete()


def webhook_ping(*, hook: Webhook, user: AbstractBaseUser | None = None) -> WebhookDelivery:
    """Send the webhook a test event (``ping``), whatever events it asks for."""
    if not hook.active:
        raise WebhookRefused("The webhook is disabled: enable it to send it a test event.")
    # Checked before anything is written: a ping that cannot be queued is not made.
    get_queue(QUEUE)
    data = {
        "webhook": str(hook.code),
        "url": hook.url,
        "sent_by": user.get_username() if user is not None else None,
        "message": "A test event from SEKE: this URL receives the webhook's events.",
    }
    recorded = event_record(
        name=EventName.PING, key=f"ping:{uuid.uuid4()}", data=data, hooks=[hook]
    )
    assert recorded is not None, "a ping's key is new every time"
    return recorded[1][0]


# --- Events and deliveries -----------------------------------------------------------


def event_record(
    *, name: str, key: str, data: dict[str, Any], hooks: Sequence[Webhook]
) -> tuple[WebhookEvent, list[WebhookDelivery]] | None:
    """Record an event once, with a delivery for each of ``hooks``, queued after commit.

    Call it inside the transaction of the change it reports, so that a change that
    rolls back announces nothing. None when an event with ``key`` was recorded
    already (the change was announced by whoever reported it first).
    """
    with transaction.atomic():
        try:
            with transaction.atomic():
                event = WebhookEvent.objects.create(name=name, key=key, data=data)
        except IntegrityError:
            return None
        deliveries = [
            WebhookDelivery.objects.create(hook=hook, event=event, next_attempt_at=event.created_at)
            for hook in hooks
        ]
        codes = [str(delivery.code) for delivery in deliveries]
        if codes:
            transaction.on_commit(lambda: _enqueue(codes))
    return event, deliveries


def delivery_redeliver(*, delivery: WebhookDelivery) -> None:
    """Queue a failed delivery again, now, with a fresh round of retries.

    The payload and its ``id`` stay the same, so a receiver that already handled
    it (and failed to say so) can tell it is the same event.
    """
    if not delivery.can_redeliver():
        raise WebhookRefused(
            f"Only a failed delivery can be sent again; this one is"
            f" {delivery.get_status_display().lower()}."
        )
    if not delivery.hook.active:
        raise WebhookRefused("The webhook is disabled: enable it before sending again.")
    get_queue(QUEUE)
    now = timezone.now()
    with transaction.atomic():
        failed = WebhookDelivery.objects.filter(
            id=delivery.id, status__in=[Status.FAILED, Status.GAVE_UP]
        )
        rows = failed.filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)).update(
            status=Status.PENDING, attempts=0, next_attempt_at=now, claimed_until=None
        )
        if not rows:
            raise WebhookRefused("The delivery is being sent right now; wait for its answer.")
        code = str(delivery.code)
        transaction.on_commit(lambda: _enqueue([code]))


def deliveries_due(now: datetime) -> QuerySet[WebhookDelivery]:
    """Waiting deliveries whose next attempt is due, to an active webhook, unclaimed."""
    return WebhookDelivery.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        status__in=WebhookDelivery.WAITING,
        next_attempt_at__lte=now,
        hook__active=True,
    )


def deliveries_sweep(*, now: datetime | None = None) -> int:
    """Queue a job for every delivery that is due; how many.

    Run when a worker on "default" starts: it sends what a lost queue, a stopped
    scheduler or a crash left waiting. Jobs queued twice do no harm: only one can
    claim a delivery.
    """
    due = deliveries_due(now or timezone.now()).order_by("next_attempt_at", "id")
    codes = [str(code) for code in due.values_list("code", flat=True)]
    _enqueue(codes)
    return len(codes)


def sweep_enqueue() -> None:
    """Queue one sweep (``deliveries_sweep``) for a worker on "default"."""
    get_queue(QUEUE).enqueue(SWEEP, job_timeout=settings.JOB_TIMEOUT)


def retry_delay(attempts: int) -> timedelta | None:
    """The pause after the ``attempts``-th failed attempt, or None: give up."""
    delays: list[int] = settings.WEBHOOK_RETRY_DELAYS
    if attempts > len(delays):
        return None
    return timedelta(seconds=delays[attempts - 1])


def max_attempts() -> int:
    return 1 + len(settings.WEBHOOK_RETRY_DELAYS)


def job_timeout() -> int:
    """How long one attempt's job may run: each step of the POST may take the timeout."""
    return math.ceil(3 * settings.WEBHOOK_TIMEOUT) + 30


def _claim_span() -> timedelta:
    # Longer than the job may run, so that a live job never loses its claim.
    return timedelta(seconds=job_timeout() + 10)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed with ``secret``."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def body_bytes(delivery: WebhookDelivery) -> bytes:
    """The POSTed body: the payload as compact JSON, the same bytes on every attempt."""
    return json.dumps(delivery.payload(), separators=(",", ":"), ensure_ascii=False).encode()


def delivery_send(*, delivery_code: str, now: datetime | None = None) -> WebhookAttempt | None:
    """Make one attempt of the delivery if it is due; the attempt, or None if it was not.

    ``now`` is the time the attempt is due by (give or take ``EARLY_BY``) and recorded
    at (tests pass their own); the signature's timestamp is always the clock's, since
    the receiver compares it with its own.
    """
    now = now or timezone.now()
    claim = now + _claim_span()
    claimed = (
        deliveries_due(now + EARLY_BY)
        .filter(code=delivery_code)
        .update(claimed_until=claim, attempts=F("attempts") + 1)
    )
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("hook", "event").get(code=delivery_code)
    if delivery.attempts > max_attempts():
        _give_up_cut_short(delivery, claim)
        return None
    watchdog = _schedule(delivery_code, claim)
    attempt = _attempt_start(delivery, now)
    body = body_bytes(delivery)
    headers = _headers(delivery, body, timestamp=str(int(time.time())))
    answer = http.post(delivery.hook.url, body, headers, timeout=settings.WEBHOOK_TIMEOUT)
    _attempt_end(delivery, attempt, answer, claim=claim, started=now)
    if watchdog is not None:
        _unschedule(watchdog)
    attempt.refresh_from_db()
    return attempt


def _headers(delivery: WebhookDelivery, body: bytes, *, timestamp: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-SEKE-Event": delivery.event.name,
        "X-SEKE-Delivery": str(delivery.code),
        "X-SEKE-Timestamp": timestamp,
        "X-SEKE-Signature": signature(delivery.hook.secret, timestamp, body),
    }


def _give_up_cut_short(delivery: WebhookDelivery, claim: datetime) -> None:
    """The watchdog found the delivery's last attempt cut short: that was the last."""
    WebhookDelivery.objects.filter(id=delivery.id, claimed_until=claim).update(
        status=Status.GAVE_UP,
        attempts=F("attempts") - 1,
        next_attempt_at=None,
        claimed_until=None,
        last_error=INTERRUPTED,
    )
    WebhookAttempt.objects.filter(delivery=delivery, finished_at__isnull=True).update(
        error=INTERRUPTED
    )


def _attempt_start(delivery: WebhookDelivery, now: datetime) -> WebhookAttempt:
    """The attempt's row, written before the POST; an earlier one never finished was cut short."""
    earlier = WebhookAttempt.objects.filter(delivery=delivery)
    earlier.filter(finished_at__isnull=True).update(error=INTERRUPTED)
    number = (earlier.aggregate(n=Max("number"))["n"] or 0) + 1
    return WebhookAttempt.objects.create(delivery=delivery, number=number, started_at=now)


def _attempt_end(
    delivery: WebhookDelivery,
    attempt: WebhookAttempt,
    answer: http.Answer,
    *,
    claim: datetime,
    started: datetime,
) -> None:
    """Record the answer and the delivery's new state: delivered, retry due, or given up."""
    finished = started + timedelta(milliseconds=answer.duration_ms)
    problem = answer.problem()
    state: dict[str, Any] = {
        "claimed_until": None,
        "last_status_code": answer.status_code,
        "last_error": problem,
    }
    delay = None if answer.ok else retry_delay(delivery.attempts)
    if answer.ok:
        state |= {"status": Status.DELIVERED, "delivered_at": finished, "next_attempt_at": None}
    elif delay is None:
        state |= {"status": Status.GAVE_UP, "next_attempt_at": None}
    else:
        state |= {"status": Status.FAILED, "next_attempt_at": finished + delay}
    with transaction.atomic():
        WebhookAttempt.objects.filter(id=attempt.id).update(
            finished_at=finished,
            duration_ms=answer.duration_ms,
            status_code=answer.status_code,
            error=problem,
            response_body=answer.body,
        )
        # Only while its claim holds: a job that outlived it has been replaced.
        ours = WebhookDelivery.objects.filter(id=delivery.id, claimed_until=claim).update(**state)
        if ours and delay is not None:
            code, due = str(delivery.code), state["next_attempt_at"]
            transaction.on_commit(lambda: _schedule(code, due))
    outcome = "delivered" if answer.ok else ("gave up" if delay is None else "failed")
    log.info(
        "webhook delivery %s (%s) attempt %d %s: %s",
        delivery.code,
        delivery.event.name,
        attempt.number,
        outcome,
        answer.status_code or problem,
    )


# --- The queue -----------------------------------------------------------------------


def _enqueue(codes: Sequence[str]) -> None:
    """Queue an attempt of each delivery now. Called after commit: a queue that does not
    answer is logged, not raised, since the change being announced has happened; the
    deliveries wait in the database until a worker on "default" starts (``sweep``)."""
    if not codes:
        return
    try:
        queue = get_queue(QUEUE)
        for code in codes:
            queue.enqueue(DELIVER, code, job_timeout=job_timeout(), failure_ttl=7 * 24 * 3600)
    except (QueueUnavailable, redis.RedisError) as exc:
        log.warning(
            "%d webhook deliveries wait in the database (the queue did not answer: %s);"
            " a worker on 'default' sends them when it starts",
            len(codes),
            exc,
        )


def _schedule(code: str, when: datetime) -> str | None:
    """Schedule an attempt of the delivery at ``when``; the job's id (None if the queue
    did not answer: the delivery then waits for the next sweep)."""
    try:
        job = get_queue(QUEUE).enqueue_at(
            when, DELIVER, code, job_timeout=job_timeout(), failure_ttl=7 * 24 * 3600
        )
    except (QueueUnavailable, redis.RedisError) as exc:
        log.warning("webhook delivery %s could not be scheduled (%s)", code, exc)
        return None
    return str(job.id)


def _unschedule(job_id: str) -> None:
    """Drop a watchdog that is no longer needed: the attempt's answer is recorded."""
    try:
        get_queue(QUEUE).scheduled_job_registry.remove(job_id, delete_job=True)
    except (QueueUnavailable, redis.RedisError) as exc:
        log.warning("a webhook watchdog job could not be removed (%s); it will do nothing", exc)
