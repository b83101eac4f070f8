"""Blind random audits: the draw, one task per audited image, and a page that shows no answer."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.models import ReviewDecision, ReviewTask
from review.tasks.services import Decision, ReviewRefused, decision_record, task_create_for
from seke_app.models import Annotation, GenerationRun, RunItem
from seke_app.runs.services import audit_draw
from tests.conftest import client_for
from tests.factories import make_flagged_annotations

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def test_it_audits_a_share_but_at_least_fifty_images() -> None:
    assert GenerationRun.audit_size(0.05, 10_000) == 500
    assert GenerationRun.audit_size(0.05, 400) == 50
    assert GenerationRun.audit_size(0.05, 30) == 30
    assert GenerationRun.audit_size(0.0, 400) == 0
    ids = list(range(1000))
    drawn = audit_draw(ids, share=0.05, seed=7)
    assert len(drawn) == 50 and drawn == audit_draw(ids, share=0.05, seed=7)
    assert drawn != audit_draw(ids, share=0.05, seed=8)


def audited_task() -> ReviewTask:
    """A flagged annotation that is also drawn for the audit, with its one task."""
    (annotation,) = make_flagged_annotations(1, write_files=True)
    ReviewTask.objects.all().delete()
    RunItem.objects.create(run=annotation.run, image=annotation.image, audit=True)
    task_create_for(Annotation.objects.select_related("run").get(id=annotation.id))
    return ReviewTask.objects.get()


def test_it_opens_one_blind_task_for_an_audited_flagged_image() -> None:
    task = audited_task()
    assert task.audit and task.kind == "first"
    # Its place in the queue says nothing about the machine's confidence.
    assert task.priority != task.annotation.confidence


def claimed_by(task: ReviewTask, user: User) -> None:
    from review.tasks.services import task_claim_next

    assert task_claim_next(user=user) == task


def test_it_renders_audit_tasks_blind(annotator: User) -> None:
    task = audited_task()
    claimed_by(task, annotator)
    annotation = task.annotation
    page = client_for(annotator).get(reverse("review:task", args=[task.code])).content.decode()
    assert "blind audit" in page and annotation.image.original_name in page
    for shown in (
        "chart-data",
        "chart-votes",
        "confidence",
        annotation.flag_reasons[0],
        annotation.evidence["expression"],
        "Machine",
        "Self-verification",
        "checked",
        "Accept as is",
    ):
        assert shown not in page
    queue = client_for(annotator).get(reverse("review:queue")).content.decode()
    assert annotation.flag_reasons[0] not in queue


def test_it_refuses_to_accept_a_blind_audit_and_records_labels_as_audit(annotator: User) -> None:
    task = audited_task()
    claimed_by(task, annotator)
    with pytest.raises(ReviewRefused, match="blind"):
        decision_record(task=task, user=annotator, decision=Decision(action="accept"))
    with pytest.raises(ReviewRefused, match="valence"):
        decision_record(task=task, user=annotator, decision=Decision("correct", "fear"))
    assert not ReviewDecision.objects.exists()
    row = decision_record(
        task=task,
        user=annotator,
        decision=Decision("correct", "fear", valence=-0.5, arousal=0.6, aus={1: True}),
    )
    assert row.audit and row.expression == "fear"


def drawn_again(annotation: Annotation) -> Annotation:
    """Another run's annotation of the same image, drawn for that run's audit."""
    run = GenerationRun.objects.create(
        dataset=annotation.run.dataset,
        backend="offline",
        model_name="other",
        prompt_version=annotation.prompt_version,
        status=GenerationRun.Status.COMPLETED,
    )
    RunItem.objects.create(run=run, image=annotation.image, audit=True)
    again = Annotation.objects.create(
        run=run, image=annotation.image, prompt_version=run.prompt_version, confidence=0.95
    )
    task_create_for(Annotation.objects.select_related("run").get(id=again.id))
    return again


def test_it_makes_a_waiting_task_blind_when_another_run_draws_its_image() -> None:
    (annotation,) = make_flagged_annotations(1)
    waiting = ReviewTask.objects.get()
    assert not waiting.audit and waiting.priority == annotation.confidence
    drawn_again(annotation)
    # One image, one review: no second task, but the waiting one is now blind, at
    # an audit's place in the queue.
    task = ReviewTask.objects.get()
    assert task.id == waiting.id and task.audit and task.status == "open"
    assert task.priority != annotation.confidence


def test_it_leaves_a_claimed_task_as_it_is(annotator: User) -> None:
    (annotation,) = make_flagged_annotations(1)
    task = ReviewTask.objects.get()
    claimed_by(task, annotator)
    drawn_again(annotation)
    # Its reviewer may have seen the machine's answer: it serves once decided.
    task.refresh_from_db()
    assert ReviewTask.objects.count() == 1 and not task.audit and task.status == "claimed"
