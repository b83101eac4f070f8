"""Webhooks: signed deliveries to a receiver on 127.0.0.1, retries with backoff, giving
up, timeouts, crashes, each event at its moment and once, the pages and the API.

Time is driven by handing ``delivery_send`` the moment it runs at; nothing sleeps
for a backoff. The receiver (``tests/webhook_receiver.py``) is a real HTTP server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rq.scheduler import RQScheduler

from review.models import ReviewTask
from review.tasks.services import (
    Decision,
    decision_record,
    decision_undo,
    task_claim_next,
    task_create_for,
)
from seke_app.engine.uamc import UAMCParams
from seke_app.exports.options import ExportOptions
from seke_app.exports.services import export_create, export_run
from seke_app.insights.certificates import run_certify
from seke_app.models import GenerationRun
from seke_app.models.webhooks import (
    EventName,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from seke_app.queue import get_queue
from seke_app.runs.services import run_cancel, run_create, run_fail
from seke_app.runs.threshold import run_threshold_set
from seke_app.webhooks import events, services
from seke_app.webhooks.services import (
    WebhookRefused,
    delivery_redeliver,
    delivery_send,
    signature,
    webhook_create,
    webhook_ping,
    webhook_set_active,
)
from tests.api_client import ApiClient
from tests.browser import BrowserPage
from tests.conftest import PASSWORD, client_for
from tests.factories import make_dataset, make_flagged_annotations
from tests.test_certificates import EXPRESSION, audited_run
from tests.test_curation import annotate, make_images, make_run
from tests.test_settings import start as start_settings
from tests.webhook_receiver import HANG, Receiver, failed_delivery
from tests.workers import WorkerProcess, kill_worker_process, wait_for_worker, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
ALL_EVENTS = [value for value, _ in EventName.choices if value != EventName.PING]


@pytest.fixture(autouse=True)
def _quick_retries(settings: Any) -> None:
    settings.WEBHOOK_RETRY_DELAYS = [30, 120, 600]
    settings.WEBHOOK_TIMEOUT = 5.0
    settings.GOLD_RATE = 0.0


@pytest.fixture
def queue(worker_redis: None) -> Iterator[Any]:
    """The "default" queue, with nothing queued or scheduled before and after the test."""
    default = get_queue("default")

    def clear() -> None:
        default.empty()
        for job_id in default.scheduled_job_registry.get_job_ids():
            default.scheduled_job_registry.remove(job_id, delete_job=True)
        # A killed worker's scheduler holds its lock for a minute; the next test's
        # worker must be able to run its own.
        default.connection.delete(RQScheduler.get_locking_key("default"))

    clear()
    yield default
    clear()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(*answers: int | str, body: bytes = b"thanks") -> Receiver:
        receiver = Receiver(answers or (200,), body=body)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()


def readme_check() -> Callable[[str, str, str, bytes], bool]:
    """The README's own snippet for checking a delivery (section "Webhooks")."""
    section = (ROOT / "README.md").read_text().split("\n## Webhooks\n", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's Webhooks section has no Python snippet"
    namespace: dict[str, Any] = {}
    exec(found.group(1), namespace)
    check: Callable[[str, str, str, bytes], bool] = namespace["seke_delivery_is_genuine"]
    return check


def hook_for(receiver: Receiver, *events: str) -> Webhook:
    return webhook_create(url=receiver.url, events=list(events or ALL_EVENTS))


def sent(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in receiver.received]


def only_delivery(hook: Webhook) -> WebhookDelivery:
    return WebhookDelivery.objects.select_related("event").get(hook=hook)


def scheduled_at(queue: Any) -> list[datetime]:
    registry = queue.scheduled_job_registry
    return sorted(registry.get_scheduled_time(job_id) for job_id in registry.get_job_ids())


# --- Signing -------------------------------------------------------------------------


def test_it_signs_each_delivery_as_the_readme_shows(
    queue: Any, receivers: Callable[..., Receiver], admin_user: User
) -> None:
    receiver = receivers(200)
    hook = hook_for(receiver, EventName.RUN_FINISHED)
    delivery = webhook_ping(hook=hook, user=admin_user)
    work_in_process("default")

    (request,) = receiver.received
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-seke-event"] == "ping"
    assert headers["x-seke-delivery"] == str(delivery.code)
    payload = json.loads(request.body)
    assert payload["id"] == str(delivery.code) and payload["event"] == "ping"
    assert payload["data"]["webhook"] == str(hook.code) and payload["data"]["sent_by"] == "ada"
    assert payload["created_at"] == delivery.event.created_at.isoformat()

    genuine = readme_check()
    timestamp, signed = headers["x-seke-timestamp"], headers["x-seke-signature"]
    assert signed.startswith("sha256=")
    assert genuine(hook.secret, timestamp, signed, request.body)
    # Another body, another secret, another time, or a stale signature all fail.
    assert not genuine(hook.secret, timestamp, signed, request.body + b" ")
    assert not genuine("not the secret", timestamp, signed, request.body)
    assert not genuine(hook.secret, str(int(timestamp) + 1), signed, request.body)
    stale = str(int(timestamp) - 3600)
    resigned = signature(hook.secret, stale, request.body)
    assert not genuine(hook.secret, stale, resigned, request.body)
    assert not genuine(hook.secret, "soon", signed, request.body)

    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 1
    assert delivery.last_status_code == 200 and delivery.delivered_at is not None
    (attempt,) = delivery.log.all()
    assert (attempt.status_code, attempt.error, attempt.response_body) == (200, "", "thanks")


def test_a_new_secret_signs_what_is_sent_after_it(
    queue: Any, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(200)
    hook = hook_for(receiver)
    old = hook.secret
    new = services.webhook_rotate_secret(hook=hook)
    assert new != old and len(new) >= 40
    webhook_ping(hook=Webhook.objects.get(id=hook.id))
    work_in_process("default")
    (request,) = receiver.received
    genuine = readme_check()
    args = (request.headers["x-seke-timestamp"], request.headers["x-seke-signature"], request.body)
    assert genuine(new, *args) and not genuine(old, *args)


# --- Retries, giving up, timeouts, crashes ----------------------------------------------


def test_it_retries_with_backoff_until_the_receiver_takes_it(
    queue: Any, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(500, 502, 200)
    hook = hook_for(receiver)
    delivery = webhook_ping(hook=hook)
    start = timezone.now()

    first = delivery_send(delivery_code=str(delivery.code), now=start)
    assert first is not None and first.status_code == 500
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 1
    assert delivery.last_error == "The receiver answered HTTP 500."
    assert delivery.next_attempt_at is not None
    pause = delivery.next_attempt_at - start
    assert timedelta(seconds=30) <= pause < timedelta(seconds=35)
    # The retry is a job scheduled for then (the watchdog of the attempt is gone).
    assert scheduled_at(queue) == [delivery.next_attempt_at.replace(microsecond=0)]

    # Not before it is due.
    assert delivery_send(delivery_code=str(delivery.code), now=start + pause / 2) is None
    assert len(receiver.received) == 1

    second_at = delivery.next_attempt_at
    second = delivery_send(delivery_code=str(delivery.code), now=second_at)
    assert second is not None and second.status_code == 502
    delivery.refresh_from_db()
    assert delivery.next_attempt_at is not None
    assert timedelta(seconds=120) <= delivery.next_attempt_at - second_at < timedelta(seconds=125)

    third = delivery_send(delivery_code=str(delivery.code), now=delivery.next_attempt_at)
    assert third is not None and third.status_code == 200
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("delivered", 3, None)
    assert [a.status_code for a in delivery.log.all()] == [500, 502, 200]
    assert [a.number for a in delivery.log.all()] == [1, 2, 3]
    # The same payload, under the same id, every time.
    assert len({r.body for r in receiver.received}) == 1
    assert {r.headers["x-seke-delivery"] for r in receiver.received} == {str(delivery.code)}


def test_it_gives_up_after_the_last_retry_and_can_send_again(
    queue: Any, receivers: Callable[..., Receiver], settings: Any
) -> None:
    settings.WEBHOOK_RETRY_DELAYS = [1, 2]
    receiver = receivers(503, 503, 503, 204, body=b"e" * 5000)
    delivery = webhook_ping(hook=hook_for(receiver))
    code = str(delivery.code)
    moment = timezone.now()
    for _ in range(3):
        attempt = delivery_send(delivery_code=code, now=moment)
        assert attempt is not None and attempt.status_code == 503
        # The receiver's long answer is kept up to 2 KiB.
        assert attempt.response_body == "e" * 2048
        moment += timedelta(hours=1)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("gave_up", 3, None)
    assert delivery_send(delivery_code=code, now=moment + timedelta(days=1)) is None
    assert len(receiver.received) == 3

    delivery_redeliver(delivery=delivery)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert queue.job_ids, "the redelivery is queued"
    work_in_process("default")
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.last_status_code == 204
    assert [a.number for a in delivery.log.all()] == [1, 2, 3, 4]
    with pytest.raises(WebhookRefused, match="this one is delivered"):
        delivery_redeliver(delivery=delivery)


def test_a_receiver_that_does_not_answer_times_out(
    queue: Any, receivers: Callable[..., Receiver], settings: Any
) -> None:
    settings.WEBHOOK_TIMEOUT = 0.5
    receiver = receivers(HANG)
    delivery = webhook_ping(hook=hook_for(receiver))
    attempt = delivery_send(delivery_code=str(delivery.code))
    assert attempt is not None and attempt.status_code is None
    assert "No answer within the timeout of 0.5 s" in attempt.error
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.last_status_code is None
    assert "timeout" in delivery.last_error


def test_a_redirect_is_not_followed(queue: Any, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(302)
    delivery = webhook_ping(hook=hook_for(receiver))
    attempt = delivery_send(delivery_code=str(delivery.code))
    assert attempt is not None and attempt.status_code == 302
    assert "does not follow redirects" in attempt.error and f"{receiver.url}/moved" in attempt.error
    assert [r.path for r in receiver.received] == ["/seke-events"]


def test_a_refused_connection_is_an_error_and_is_retried(
    queue: Any, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(200)
    url = receiver.url
    receiver.close()
    delivery = webhook_ping(hook=webhook_create(url=url, events=[EventName.RUN_FINISHED]))
    attempt = delivery_send(delivery_code=str(delivery.code))
    assert attempt is not None and attempt.status_code is None
    assert attempt.error.startswith("The request failed: ConnectError")
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.next_attempt_at is not None


def test_a_worker_killed_mid_send_loses_nothing(
    queue: Any,
    receivers: Callable[..., Receiver],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    receiver = receivers(HANG, 200)
    delivery = webhook_ping(hook=hook_for(receiver))
    worker = start_worker(("default",), env={"SEKE_WEBHOOK_TIMEOUT": "60"})
    receiver.wait_for(1, timeout=60)
    kill_worker_process(worker)

    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 1
    assert delivery.claimed_until is not None
    (cut_short,) = delivery.log.all()
    assert cut_short.finished_at is None
    # Nobody sends it while the dead worker's claim holds; the watchdog job is
    # scheduled for when it runs out.
    assert delivery_send(delivery_code=str(delivery.code)) is None
    assert delivery.claimed_until.replace(microsecond=0) in scheduled_at(queue)

    attempt = delivery_send(
        delivery_code=str(delivery.code), now=delivery.claimed_until + timedelta(seconds=1)
    )
    assert attempt is not None and attempt.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 2
    first, second = delivery.log.all()
    assert first.error == services.INTERRUPTED and second.ok
    assert len(receiver.received) == 2


def test_a_delivery_cut_short_on_its_last_attempt_is_given_up(
    queue: Any, receivers: Callable[..., Receiver], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.WEBHOOK_RETRY_DELAYS = [1]
    receiver = receivers(200)
    delivery = webhook_ping(hook=hook_for(receiver))

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit("the work horse was killed")

    monkeypatch.setattr(services.http, "post", dies)
    moment = timezone.now()
    for _ in range(2):
        with pytest.raises(SystemExit):
            delivery_send(delivery_code=str(delivery.code), now=moment)
        delivery.refresh_from_db()
        assert delivery.status == "pending" and delivery.claimed_until is not None
        moment = delivery.claimed_until + timedelta(seconds=1)
    # The watchdog finds both attempts cut short: there is no third.
    assert delivery_send(delivery_code=str(delivery.code), now=moment) is None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.claimed_until) == ("gave_up", 2, None)
    assert [a.error for a in delivery.log.all()] == [services.INTERRUPTED] * 2
    assert receiver.received == []


def test_a_worker_retries_by_itself_with_its_scheduler(
    queue: Any,
    receivers: Callable[..., Receiver],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    receiver = receivers(500, 200)
    delivery = webhook_ping(hook=hook_for(receiver))
    # A plain ``rqworker default``: the scheduler that moves retries to the queue runs
    # without being asked for.
    worker = start_worker(("default",), env={"SEKE_WEBHOOK_RETRY_DELAYS": "1"})
    try:
        receiver.wait_for(2, timeout=60)
    except AssertionError:
        raise AssertionError(worker.output()) from None
    deadline = time.monotonic() + 30
    while delivery.status != "delivered" and time.monotonic() < deadline:
        time.sleep(0.1)
        delivery.refresh_from_db()
    assert delivery.status == "delivered", worker.output()
    assert [a.status_code for a in delivery.log.all()] == [500, 200]


def test_a_starting_worker_queues_what_is_due(
    queue: Any, receivers: Callable[..., Receiver], start_worker: Callable[..., WorkerProcess]
) -> None:
    receiver = receivers(200)
    hook = hook_for(receiver)
    # Recorded while the queue was lost: the rows wait, nothing is queued.
    with transaction.atomic():
        run = make_run(make_images(1, name="lost")[0])
        GenerationRun.objects.filter(id=run.id).update(finished_at=timezone.now())
        run.refresh_from_db()
        events.run_finished(run)
    queue.empty()
    assert only_delivery(hook).status == "pending"
    wait_for_worker(start_worker(("default",), burst=True), timeout=120)
    assert sent(receiver)[0]["event"] == "run.finished"
    assert only_delivery(hook).status == "delivered"


# --- Disabled webhooks --------------------------------------------------------------


def test_a_disabled_webhook_gets_nothing_until_enabled(
    queue: Any, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(500, 200)
    hook = hook_for(receiver)
    delivery = webhook_ping(hook=hook)
    work_in_process("default")
    delivery.refresh_from_db()
    assert delivery.status == "failed"

    webhook_set_active(hook=hook, active=False)
    due = delivery.next_attempt_at
    assert due is not None
    assert delivery_send(delivery_code=str(delivery.code), now=due) is None
    with pytest.raises(WebhookRefused, match="disabled"):
        webhook_ping(hook=hook)
    run_cancel(run=_running_run())
    assert WebhookDelivery.objects.filter(hook=hook).count() == 1
    with pytest.raises(WebhookRefused, match="already disabled"):
        webhook_set_active(hook=hook, active=False)

    # Enabled again, what came due meanwhile is queued at once.
    WebhookDelivery.objects.filter(id=delivery.id).update(next_attempt_at=timezone.now())
    queue.empty()
    webhook_set_active(hook=hook, active=True)
    assert len(queue.job_ids) == 1
    work_in_process("default")
    delivery.refresh_from_db()
    assert delivery.status == "delivered"


# --- Events: each at its moment, once ------------------------------------------------


def _running_run(name: str = "events") -> GenerationRun:
    dataset, _ = make_images(1, name=name)
    run = make_run(dataset)
    GenerationRun.objects.filter(id=run.id).update(status=GenerationRun.Status.RUNNING)
    run.refresh_from_db()
    return run


def test_a_real_worker_finishing_a_run_sends_run_finished_once(
    tmp_path: Path,
    queue: Any,
    receivers: Callable[..., Receiver],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    receiver = receivers(200)
    others = receivers(200)
    hook = hook_for(receiver, EventName.RUN_FINISHED)
    hook_for(others, EventName.EXPORT_READY)
    dataset = make_dataset(tmp_path, n=3)
    run = run_create(
        dataset=dataset, backend="offline", params=UAMCParams(strategy="single"), audit_share=0.0
    )
    assert not WebhookEvent.objects.exists(), "nothing is announced before the run ends"
    wait_for_worker(start_worker(("generation", "default"), burst=True), timeout=240)

    run.refresh_from_db()
    assert run.status == "completed"
    (payload,) = sent(receiver)
    assert payload["event"] == "run.finished"
    data = payload["data"]
    assert data["status"] == "completed" and data["run"]["code"] == str(run.code)
    assert data["run"]["dataset"] == {"code": str(dataset.code), "name": dataset.name}
    assert data["counts"]["images"] == 3 and data["counts"]["done"] == 3
    assert data["links"]["run"] == reverse("run_detail", args=[run.code])
    assert others.received == [], "a webhook gets only the events it asked for"
    assert WebhookEvent.objects.filter(name="run.finished").count() == 1
    assert only_delivery(hook).status == "delivered"
    request = receiver.received[0]
    assert readme_check()(
        hook.secret,
        request.headers["x-seke-timestamp"],
        request.headers["x-seke-signature"],
        request.body,
    )


def test_a_run_cancelled_or_failed_is_announced_once_with_its_status(
    receivers: Callable[..., Receiver], settings: Any
) -> None:
    settings.SITE_URL = "https://seke.example.org/"
    hook = hook_for(receivers(200), EventName.RUN_FINISHED)
    cancelled = _running_run("cancelled")
    with transaction.atomic():
        run_cancel(run=cancelled)
    with pytest.raises(Exception, match="cannot be cancelled"):
        run_cancel(run=cancelled)
    failed = _running_run("failed")
    run_fail(failed.id, "no backend")
    run_fail(failed.id, "no backend again")
    events = WebhookEvent.objects.filter(name="run.finished").order_by("id")
    assert [(e.data["run"]["code"], e.data["status"]) for e in events] == [
        (str(cancelled.code), "cancelled"),
        (str(failed.code), "failed"),
    ]
    assert events[1].data["error"] == "no backend"
    assert events[0].data["links"]["run"] == (
        f"https://seke.example.org{reverse('run_detail', args=[cancelled.code])}"
    )
    assert WebhookDelivery.objects.filter(hook=hook).count() == 2


def test_nothing_is_announced_for_a_change_that_rolls_back(
    queue: Any, receivers: Callable[..., Receiver]
) -> None:
    hook_for(receivers(200))
    run = _running_run()
    with pytest.raises(RuntimeError), transaction.atomic():
        run_cancel(run=run)
        raise RuntimeError("something later in the transaction failed")
    run.refresh_from_db()
    assert run.status == "running"
    assert not WebhookEvent.objects.exists() and not WebhookDelivery.objects.exists()
    assert queue.job_ids == []


def test_an_export_announces_ready_or_failed_once(
    receivers: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = hook_for(receivers(200), EventName.EXPORT_READY, EventName.EXPORT_FAILED)
    dataset, images = make_images(3, name="exported")
    run = make_run(dataset)
    for image in images:
        annotate(image, run)
    export = export_create(dataset=dataset, kind="feid", options=ExportOptions(), enqueue=False)
    assert not WebhookEvent.objects.exists()
    export_run(export_id=export.id)
    export.refresh_from_db()
    assert export.status == "done"
    ready = WebhookEvent.objects.get(name="export.ready")
    assert ready.data["export"]["code"] == str(export.code)
    assert ready.data["images_written"] == 3 and ready.data["file_size"] == export.file_size
    assert ready.data["links"]["download"] == reverse("export_download", args=[export.code])
    export_run(export_id=export.id)
    assert WebhookEvent.objects.filter(name="export.ready").count() == 1

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr("seke_app.exports.services.write_export", broken)
    failing = export_create(dataset=dataset, kind="feid", options=ExportOptions(), enqueue=False)
    export_run(export_id=failing.id)
    failed = WebhookEvent.objects.get(name="export.failed")
    assert failed.data["error"] == "OSError: disk full" and failed.data["file_name"] is None
    assert WebhookDelivery.objects.filter(hook=hook).count() == 2


def test_a_certified_threshold_is_announced_and_a_failed_certification_is_not(
    receivers: Callable[..., Receiver], annotator: User, admin_user: User
) -> None:
    hook_for(receivers(200), EventName.CERTIFICATE_ISSUED)
    small, _ = audited_run(annotator, n=20)
    uncertified = run_certify(run=small, targets=EXPRESSION, user=admin_user)
    assert uncertified.threshold is None
    assert not WebhookEvent.objects.filter(name="certificate.issued").exists()

    run, _ = audited_run(annotator)
    certificate = run_certify(run=run, targets=EXPRESSION, user=admin_user)
    assert certificate.threshold is not None
    event = WebhookEvent.objects.get(name="certificate.issued")
    assert event.data["certificate"]["code"] == str(certificate.code)
    assert event.data["certificate"]["threshold"] == certificate.threshold
    assert event.data["run"]["code"] == str(run.code) and event.data["created_by"] == "ada"


def _decide(user: User) -> Any:
    task = task_claim_next(user=user)
    assert task is not None
    return decision_record(
        task=task, user=user, decision=Decision(action="accept", time_spent_ms=1000)
    )


def test_an_emptied_review_queue_is_announced_once_per_emptying(
    receivers: Callable[..., Receiver], annotator: User
) -> None:
    hook = hook_for(receivers(200), EventName.REVIEW_QUEUE_EMPTY)
    annotations = make_flagged_annotations(2, dataset_name="queue")
    run = annotations[0].run
    queue_events = WebhookEvent.objects.filter(name="review.queue_empty")

    _decide(annotator)
    assert not queue_events.exists(), "one task still waits"
    last = _decide(annotator)
    event = queue_events.get()
    assert event.data["run"]["code"] == str(run.code)
    assert event.data["tasks"] == {"decided": 2, "closed_without_decision": 0}
    assert WebhookDelivery.objects.filter(hook=hook, event=event).count() == 1

    # Undone, the task waits again; decided again, the queue empties again.
    decision_undo(decision=last, user=annotator)
    assert queue_events.count() == 1
    task = ReviewTask.objects.get(id=last.task_id)
    decision_record(
        task=task, user=annotator, decision=Decision(action="accept", time_spent_ms=1000)
    )
    assert queue_events.count() == 2


def test_a_queue_emptied_while_the_run_works_is_announced_when_it_stops(
    receivers: Callable[..., Receiver], annotator: User
) -> None:
    hook_for(receivers(200), EventName.REVIEW_QUEUE_EMPTY, EventName.RUN_FINISHED)
    (annotation,) = make_flagged_annotations(1, dataset_name="working")
    run = annotation.run
    GenerationRun.objects.filter(id=run.id).update(status=GenerationRun.Status.RUNNING)
    _decide(annotator)
    assert not WebhookEvent.objects.filter(name="review.queue_empty").exists()
    run.refresh_from_db()
    run_cancel(run=run)
    names = list(WebhookEvent.objects.order_by("id").values_list("name", flat=True))
    assert names == ["run.finished", "review.queue_empty"]


def test_a_threshold_that_closes_the_last_tasks_empties_the_queue(
    receivers: Callable[..., Receiver], admin_user: User
) -> None:
    hook_for(receivers(200), EventName.REVIEW_QUEUE_EMPTY)
    dataset, images = make_images(2, name="closing")
    run = make_run(dataset)
    GenerationRun.objects.filter(id=run.id).update(review_threshold=0.9)
    run.refresh_from_db()
    for image in images:
        task_create_for(annotate(image, run, confidence=0.8))
    assert ReviewTask.objects.filter(annotation__run=run, status="open").count() == 2
    run_threshold_set(run=run, threshold=0.5, user=admin_user)
    event = WebhookEvent.objects.get(name="review.queue_empty")
    assert event.data["tasks"] == {"decided": 0, "closed_without_decision": 2}


# --- Refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://example.org/hook", "not a ftp: URL"),
        ("file:///etc/passwd", "not a file: URL"),
        ("javascript:alert(1)", "not a javascript: URL"),
        ("example.org/hook", "without http:// or https://"),
        ("http:///hook", "has no host name"),
        ("https://example.org:99999/", "port"),
        ("https://exa mple.org/", "spaces"),
    ],
)
def test_only_http_urls_are_accepted_and_nothing_is_saved(
    url: str, said: str, admin_user: User
) -> None:
    page = client_for(admin_user).post(
        reverse("webhook_new"), {"url": url, "events": ["run.finished"]}
    )
    assert page.status_code == 200
    assert said in page.content.decode().replace("&#x27;", "'")
    answer = ApiClient(admin_user).post(
        "/api/v1/webhooks", {"url": url, "events": ["run.finished"]}
    )
    assert answer.status_code == 422
    assert said in answer.json()["detail"]
    with pytest.raises(WebhookRefused, match=re.escape(said)):
        webhook_create(url=url, events=["run.finished"])
    assert not Webhook.objects.exists()


def test_a_webhook_needs_known_events(admin_user: User) -> None:
    page = client_for(admin_user).post(reverse("webhook_new"), {"url": "https://example.org/h"})
    assert "This field is required." in page.content.decode()
    with pytest.raises(WebhookRefused, match="Unknown events: nope"):
        webhook_create(url="https://example.org/h", events=["nope"])
    with pytest.raises(WebhookRefused, match="at least one event"):
        webhook_create(url="https://example.org/h", events=[])
    assert not Webhook.objects.exists()


def _pages(hook: Webhook, delivery: WebhookDelivery) -> list[tuple[str, str]]:
    return [
        ("get", reverse("webhook_list")),
        ("get", reverse("webhook_new")),
        ("post", reverse("webhook_new")),
        ("get", reverse("webhook_detail", args=[hook.code])),
        ("post", reverse("webhook_ping", args=[hook.code])),
        ("post", reverse("webhook_disable", args=[hook.code])),
        ("post", reverse("webhook_enable", args=[hook.code])),
        ("post", reverse("webhook_rotate", args=[hook.code])),
        ("post", reverse("webhook_delete", args=[hook.code])),
        ("get", reverse("webhook_delivery", args=[delivery.code])),
        ("post", reverse("webhook_redeliver", args=[delivery.code])),
    ]


def test_only_admins_open_the_pages(annotator: User, outsider: User) -> None:
    delivery = failed_delivery()
    hook = delivery.hook
    for user in (annotator, outsider):
        client = client_for(user)
        for method, url in _pages(hook, delivery):
            assert getattr(client, method)(url).status_code == 403, (user, url)
    for method, url in _pages(hook, delivery):
        assert getattr(client_for(None), method)(url).status_code == 302, url
    for user in (annotator, outsider):
        assert ApiClient(user).get("/api/v1/webhooks").status_code == 403
    hook.refresh_from_db()
    assert hook.active and Webhook.objects.count() == 1


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SEKE_WEBHOOK_RETRY_DELAYS", "30,soon", "must list whole seconds above 0"),
        ("SEKE_WEBHOOK_RETRY_DELAYS", "0", "must list whole seconds above 0"),
        ("SEKE_WEBHOOK_TIMEOUT", "0", "SEKE_WEBHOOK_TIMEOUT must be at least 0.1"),
        ("SEKE_SITE_URL", "seke.example.org", "SEKE_SITE_URL must start with one of"),
    ],
)
def test_bad_webhook_settings_stop_start_up_naming_the_variable(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = start_settings({variable: value}, tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# --- Pages ---------------------------------------------------------------------------


def test_an_admin_registers_tests_and_manages_a_webhook_from_the_pages(
    queue: Any, receivers: Callable[..., Receiver], admin_user: User
) -> None:
    receiver = receivers(500)
    client = client_for(admin_user)
    nav = client.get(reverse("home")).content.decode()
    assert f'href="{reverse("webhook_list")}"' in nav

    response = client.post(
        reverse("webhook_new"),
        {"url": receiver.url, "events": ["run.finished", "export.ready"], "description": "CI"},
    )
    hook = Webhook.objects.get()
    assert response["Location"] == reverse("webhook_detail", args=[hook.code])
    assert (hook.events, hook.created_by, hook.description) == (
        ["run.finished", "export.ready"],
        admin_user,
        "CI",
    )
    listed = client.get(reverse("webhook_list")).content.decode()
    assert receiver.url in listed and "run.finished, export.ready" in listed
    hook_url = reverse("webhook_detail", args=[hook.code])
    page = client.get(hook_url).content.decode()
    assert hook.secret in page and "Nothing sent yet" in page

    client.post(reverse("webhook_ping", args=[hook.code]))
    work_in_process("default")
    page = client.get(hook_url).content.decode()
    assert "HTTP 500" in page and "Failed, will retry" in page

    delivery = only_delivery(hook)
    detail = client.get(reverse("webhook_delivery", args=[delivery.code])).content.decode()
    assert str(delivery.code) in detail and "&quot;event&quot;: &quot;ping&quot;" in detail
    assert "Send it again" in detail
    client.post(reverse("webhook_redeliver", args=[delivery.code]))
    delivery.refresh_from_db()
    assert delivery.status == "pending"

    old = hook.secret
    client.post(reverse("webhook_rotate", args=[hook.code]))
    hook.refresh_from_db()
    assert hook.secret != old and hook.secret in client.get(hook_url).content.decode()

    client.post(reverse("webhook_disable", args=[hook.code]))
    hook.refresh_from_db()
    assert not hook.active
    refused = client.post(reverse("webhook_ping", args=[hook.code]), follow=True)
    assert "enable it to send it a test event" in refused.content.decode()
    client.post(reverse("webhook_enable", args=[hook.code]))
    hook.refresh_from_db()
    assert hook.active

    client.post(reverse("webhook_delete", args=[hook.code]))
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()


def test_the_delivery_log_is_paged_and_shows_every_attempt(admin_user: User) -> None:
    hook = webhook_create(url="https://example.org/h", events=["run.finished"])
    event = WebhookEvent.objects.create(name="run.finished", key="k", data={})
    for i in range(30):
        delivery = WebhookDelivery.objects.create(hook=hook, event=event, status="gave_up")
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=1,
            started_at=timezone.now(),
            finished_at=timezone.now(),
            status_code=400 + i,
            error=f"The receiver answered HTTP {400 + i}.",
        )
    client = client_for(admin_user)
    url = reverse("webhook_detail", args=[hook.code])
    first = client.get(url).content.decode()
    assert "HTTP 429" in first and "HTTP 400" not in first and "page 1 of 2" in first
    second = client.get(url, {"page": 2}).content.decode()
    assert "HTTP 400" in second and "HTTP 429" not in second


# --- API -----------------------------------------------------------------------------


def test_the_api_registers_lists_reads_and_deletes_webhooks(admin_user: User) -> None:
    api = ApiClient(admin_user)
    made = api.post(
        "/api/v1/webhooks",
        {"url": "https://example.org/h", "events": ["run.finished"], "description": "ci"},
    )
    assert made.status_code == 201, made.json()
    body = made.json()
    hook = Webhook.objects.get()
    assert body["code"] == str(hook.code) and body["secret"] == hook.secret
    assert body["created_by"] == "ada" and body["recent_deliveries"] == []
    assert [h["code"] for h in api.get("/api/v1/webhooks").json()] == [str(hook.code)]
    assert api.get(f"/api/v1/webhooks/{hook.code}").json()["events"] == ["run.finished"]

    bad = api.post("/api/v1/webhooks", {"url": "https://example.org/h", "events": ["nope"]})
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]
    assert Webhook.objects.count() == 1

    assert api.delete(f"/api/v1/webhooks/{hook.code}").status_code == 204
    assert api.get(f"/api/v1/webhooks/{hook.code}").status_code == 404
    assert not Webhook.objects.exists()


def test_the_api_pings_and_redelivers(
    queue: Any, receivers: Callable[..., Receiver], admin_user: User
) -> None:
    receiver = receivers(200)
    api = ApiClient(admin_user)
    failed = failed_delivery(receiver.url)
    hook = failed.hook

    again = api.post(f"/api/v1/webhooks/deliveries/{failed.code}/redeliver")
    assert again.status_code == 202 and again.json()["status"] == "pending"
    work_in_process("default")
    failed.refresh_from_db()
    assert failed.status == "delivered"
    refused = api.post(f"/api/v1/webhooks/deliveries/{failed.code}/redeliver")
    assert refused.status_code == 409 and "this one is delivered" in refused.json()["detail"]

    pinged = api.post(f"/api/v1/webhooks/{hook.code}/ping")
    assert pinged.status_code == 202 and pinged.json()["event"] == "ping"
    work_in_process("default")
    detail = api.get(f"/api/v1/webhooks/{hook.code}").json()
    latest = detail["recent_deliveries"][0]
    assert latest["code"] == pinged.json()["code"] and latest["status"] == "delivered"
    assert latest["log"][0]["status_code"] == 200 and latest["payload"]["event"] == "ping"

    webhook_set_active(hook=hook, active=False)
    before = WebhookDelivery.objects.count()
    disabled = api.post(f"/api/v1/webhooks/{hook.code}/ping")
    assert disabled.status_code == 409 and "disabled" in disabled.json()["detail"]
    assert WebhookDelivery.objects.count() == before


@pytest.mark.parametrize("n", [3, 30])
def test_the_delivery_log_reads_in_the_same_queries_at_any_size(n: int, admin_user: User) -> None:
    hook = webhook_create(url="https://example.org/h", events=["run.finished"])
    for i in range(n):
        event = WebhookEvent.objects.create(name="run.finished", key=f"k{i}", data={"i": i})
        delivery = WebhookDelivery.objects.create(hook=hook, event=event, status="failed")
        for number in (1, 2):
            WebhookAttempt.objects.create(
                delivery=delivery, number=number, started_at=timezone.now(), status_code=500
            )
    api = ApiClient(admin_user)
    with CaptureQueriesContext(connection) as queries:
        page = api.get(f"/api/v1/webhooks/{hook.code}/deliveries", page_size=20).json()
    assert len(page["results"]) == min(n, 20)
    assert [d["payload"]["data"]["i"] for d in page["results"]] == list(
        range(n - 1, max(n - 21, -1), -1)
    )
    assert all(len(d["log"]) == 2 for d in page["results"])
    # The token's lookup and use, the webhook, the page, and the attempts.
    assert len(queries) == 6, [q["sql"] for q in queries]


@pytest.mark.browser
def test_an_admin_registers_a_webhook_in_the_browser_and_sees_its_test_delivery(
    live_server: Any,
    browser_page: BrowserPage,
    admin_user: User,
    queue: Any,
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    receiver = receivers(500, 200)
    page = browser_page.page
    expect = browser_page.expect
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    page.get_by_role("link", name="Register a webhook").click()
    page.get_by_label("URL").fill("ftp://example.org/seke")
    page.get_by_label("A run stopped: completed, failed, cancelled or at its cost cap").check()
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#field-url .errorlist")).to_contain_text("not a ftp: URL")
    page.get_by_label("URL").fill(receiver.url)
    page.get_by_role("button", name="Register").click()
    hook = Webhook.objects.get()
    expect(page.get_by_test_id("webhook-secret")).to_have_text(hook.secret)

    page.get_by_role("button", name="Send a test event").click()
    expect(page.get_by_text("Test event queued")).to_be_visible()
    work_in_process("default")
    page.reload()
    log = page.get_by_role("table", name="Deliveries")
    expect(log).to_contain_text("HTTP 500")
    expect(log).to_contain_text("Failed, will retry")
    page.screenshot(path=str(tmp_path / "webhook.png"), full_page=True)

    log.get_by_role("link").first.click()
    page.get_by_role("button", name="Send it again").click()
    work_in_process("default")
    page.reload()
    expect(page.get_by_role("table", name="Attempts")).to_contain_text("HTTP 200")
    expect(page.locator("#delivery-facts")).to_contain_text("Delivered")
    expect(page.locator("#payload")).to_contain_text('"event": "ping"')
    assert len(receiver.received) == 2
