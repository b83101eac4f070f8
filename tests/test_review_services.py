"""Claiming, deciding, skipping and undoing review tasks."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from review.models import ReviewDecision, ReviewTask
from review.tasks import services
from review.tasks.services import (
    Decision,
    QueueFilter,
    ReviewRefused,
    decision_record,
    decision_undo,
    queue_tasks,
    task_claim_next,
    task_skip,
)
from seke_app.models import Annotation, FaceImage
from seke_app.roles import user_create
from tests.concurrency import needs_postgresql, rendezvous, run_together
from tests.factories import make_flagged_annotations


@pytest.fixture
def tasks(db: None) -> list[Annotation]:
    return make_flagged_annotations(6)


def snapshot(annotation: Annotation) -> dict[str, Any]:
    annotation.refresh_from_db()
    return {f.name: getattr(annotation, f.name) for f in Annotation._meta.fields}


def test_it_claims_the_lowest_confidence_first(tasks: list[Annotation], annotator: User) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    assert task.annotation.confidence == min(a.confidence for a in tasks)
    assert task.status == "claimed" and task.holder == annotator
    assert task.lease_until is not None and task.lease_until > timezone.now()


def test_it_orders_by_one_grain_and_filters(tasks: list[Annotation], annotator: User) -> None:
    ordered = list(queue_tasks(QueueFilter(order="expression")))
    confidences = [t.expression_confidence for t in ordered]
    assert confidences == sorted(confidences)
    fear = list(queue_tasks(QueueFilter(expression="fear")))
    assert fear and all(t.annotation.expression == "fear" for t in fear)
    by_reason = list(queue_tasks(QueueFilter(flag_reason="between surprise")))
    assert by_reason and all("surprise" in t.annotation.flag_reasons[0] for t in by_reason)


def test_it_gives_two_annotators_different_tasks_and_keeps_a_held_one(
    tasks: list[Annotation], annotator: User, teammate: User
) -> None:
    mine = task_claim_next(user=annotator)
    theirs = task_claim_next(user=teammate)
    assert mine and theirs and mine.id != theirs.id
    # Coming back, the annotator finds the same task still held.
    again = task_claim_next(user=annotator)
    assert again is not None and again.id == mine.id


def test_it_returns_an_expired_lease_to_the_queue(
    tasks: list[Annotation], annotator: User, teammate: User
) -> None:
    mine = task_claim_next(user=annotator)
    assert mine is not None
    ReviewTask.objects.filter(id=mine.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    theirs = task_claim_next(user=teammate)
    assert theirs is not None and theirs.id == mine.id
    with pytest.raises(ReviewRefused, match="not yours"):
        decision_record(task=mine, user=annotator, decision=Decision(action="accept"))
    assert not ReviewDecision.objects.exists()


def test_it_refuses_a_decision_after_the_lease_expired(
    tasks: list[Annotation], annotator: User
) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    ReviewTask.objects.filter(id=task.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ReviewRefused, match="expired"):
        decision_record(task=task, user=annotator, decision=Decision(action="accept"))
    assert not ReviewDecision.objects.exists()


def test_it_records_a_correction_without_touching_the_machine_annotation(
    tasks: list[Annotation], annotator: User
) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    before = snapshot(task.annotation)
    decision = decision_record(
        task=task,
        user=annotator,
        decision=Decision(
            action="correct",
            expression="surprise",
            valence=0.3,
            arousal=0.8,
            aus={1: True, 2: True, 5: True},
            au_intensity={5: "C"},
            note="wide eyes",
            time_spent_ms=4200,
        ),
    )
    assert snapshot(task.annotation) == before
    assert decision.expression == "surprise" and decision.aus == {"1": True, "2": True, "5": True}
    assert decision.before["expression"] == before["expression"]
    assert decision.time_spent_ms == 4200 and decision.note == "wide eyes"
    task.refresh_from_db()
    assert task.status == "done" and task.closed_at is not None


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        (Decision(action="correct", expression="joy"), "not in the vocabulary"),
        (Decision(action="correct", valence=1.5, arousal=0.0), "outside [-1, 1]"),
        (Decision(action="correct", valence=0.5), "given together"),
        (Decision(action="correct", aus={99: True}), "unknown aus: au99"),
        (Decision(action="correct", aus={1: True}, au_intensity={1: "Z"}), "intensity"),
        (Decision(action="reject_image"), "say why"),
        (Decision(action="delete"), "unknown action"),
    ],
)
def test_it_refuses_invalid_values_and_changes_nothing(
    tasks: list[Annotation], annotator: User, decision: Decision, message: str
) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    with pytest.raises(ReviewRefused) as error:
        decision_record(task=task, user=annotator, decision=decision)
    assert message in str(error.value).lower()
    task.refresh_from_db()
    assert task.status == "claimed" and not ReviewDecision.objects.exists()


def test_it_rejects_an_image_and_undoes_it(tasks: list[Annotation], annotator: User) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    decision = decision_record(
        task=task,
        user=annotator,
        decision=Decision(action="reject_image", reject_reason="not a face"),
    )
    assert FaceImage.objects.get(id=task.annotation.image_id).rejected
    again = decision_undo(decision=decision, user=annotator)
    assert again.id == task.id and again.status == "claimed" and again.holder == annotator
    assert not FaceImage.objects.get(id=task.annotation.image_id).rejected
    decision.refresh_from_db()
    assert decision.undone_at is not None
    with pytest.raises(ReviewRefused, match="already been undone"):
        decision_undo(decision=decision, user=annotator)


def test_it_refuses_undo_by_another_reviewer_or_too_late(
    tasks: list[Annotation], annotator: User, teammate: User, settings: Any
) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    decision = decision_record(task=task, user=annotator, decision=Decision(action="accept"))
    with pytest.raises(ReviewRefused, match="Only the reviewer"):
        decision_undo(decision=decision, user=teammate)
    ReviewDecision.objects.filter(id=decision.id).update(
        created_at=timezone.now() - timedelta(seconds=settings.REVIEW_UNDO_SECONDS + 1)
    )
    with pytest.raises(ReviewRefused, match="Too late"):
        decision_undo(decision=decision, user=annotator)


def test_it_skips_a_task_back_to_the_queue(tasks: list[Annotation], annotator: User) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    task_skip(task=task, user=annotator)
    task.refresh_from_db()
    assert task.status == "open" and task.holder is None
    nxt = task_claim_next(user=annotator, queue_filter=QueueFilter(exclude_ids=(task.id,)))
    assert nxt is not None and nxt.id != task.id


def test_it_accepts_the_machine_values(tasks: list[Annotation], annotator: User) -> None:
    task = task_claim_next(user=annotator)
    assert task is not None
    decision = decision_record(task=task, user=annotator, decision=Decision(action="accept"))
    annotation = task.annotation
    assert (decision.expression, decision.valence, decision.aus) == (
        annotation.expression,
        annotation.valence,
        annotation.aus,
    )


@pytest.mark.django_db(transaction=True)
def test_it_never_decides_a_task_twice_under_concurrency() -> None:
    """20 threads claim and decide for a while; every task decided exactly once.

    Fifteen seconds of twenty threads racing for the same rows; set
    ``SEKE_CLAIM_TEST_SECONDS`` to stress it longer.
    """
    if connection.vendor != "postgresql":
        pytest.skip(reason="the 20-thread claim test needs PostgreSQL row locks (CI has them)")
    seconds = float(os.environ.get("SEKE_CLAIM_TEST_SECONDS", "15"))
    make_flagged_annotations(3000, dataset_name="contended")
    users = [
        user_create(username=f"a{i}", password="pw-123456789", role="annotator") for i in range(20)
    ]
    decided: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def annotate(user: User) -> None:
        try:
            while time.monotonic() < deadline:
                task = task_claim_next(user=user)
                if task is None:
                    return
                decision_record(task=task, user=user, decision=Decision(action="accept"))
                with lock:
                    decided.append(task.id)
        except BaseException as exc:  # reported below, with the thread's failure
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=annotate, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert decided, "no task was decided"
    assert len(decided) == len(set(decided))
    assert ReviewDecision.objects.count() == len(decided)
    done = ReviewTask.objects.filter(status="done").count()
    open_or_held = ReviewTask.objects.exclude(status="done").count()
    assert done == len(decided) and done + open_or_held == 3000
    # Nothing is lost: every task not decided is still available or held by one annotator.
    assert ReviewTask.objects.filter(status="claimed").count() <= 20


@pytest.mark.django_db(transaction=True)
def test_it_gives_one_reviewer_one_task_however_many_claims_arrive_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three claims from one reviewer at once (three tabs, a triple click): one task."""
    needs_postgresql()
    make_flagged_annotations(6)
    user = user_create(username="ann", password="pw-123456789", role="annotator")
    rendezvous(monkeypatch, services, "_take", parties=3)
    claimed = run_together(*[lambda: task_claim_next(user=user)] * 3)
    held = ReviewTask.objects.get(holder=user, status=ReviewTask.Status.CLAIMED)
    assert [task.id if task else None for task in claimed] == [held.id] * 3
