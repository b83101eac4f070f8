"""One image, one review: no second task for a decided image, re-review by admins,
disagreements across annotations adjudicated, earlier decisions on the review page."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.models import ReviewTask
from review.tasks.services import Decision, decision_record, task_claim_next, task_create_for
from seke_app.models import Annotation, FaceImage, GenerationRun
from tests.conftest import client_for
from tests.factories import make_flagged_annotations

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def second_run_on(annotation: Annotation, **values: Any) -> Annotation:
    """Another run's flagged annotation of the same image."""
    run = GenerationRun.objects.create(
        dataset=annotation.run.dataset,
        backend="offline",
        model_name="again",
        prompt_version=annotation.prompt_version,
        status=GenerationRun.Status.COMPLETED,
    )
    fields = {"expression": "fear", "confidence": 0.2, "flagged": True, "held": True} | values
    again = Annotation.objects.create(
        run=run, image=annotation.image, prompt_version=annotation.prompt_version, **fields
    )
    task_create_for(again)
    return again


def decide(user: User, decision: Decision) -> None:
    task = task_claim_next(user=user)
    assert task is not None
    decision_record(task=task, user=user, decision=decision)


def test_it_opens_no_second_task_for_an_image_with_a_task_or_a_decision(annotator: User) -> None:
    (first,) = make_flagged_annotations(1)
    second_run_on(first)
    assert ReviewTask.objects.count() == 1
    decide(annotator, Decision("accept"))
    third = second_run_on(first)
    assert ReviewTask.objects.count() == 1 and not third.review_tasks.exists()


def test_it_adjudicates_disagreeing_decisions_on_one_image(
    annotator: User, teammate: User, admin_user: User
) -> None:
    (first,) = make_flagged_annotations(1, write_files=True)
    decide(annotator, Decision("accept"))
    again = second_run_on(first, expression="anger")
    client_for(admin_user).post(reverse("review:rereview", args=[first.image.code]))
    task = ReviewTask.objects.get(status="open")
    assert task.annotation == again and task.opened_by == admin_user
    decide(teammate, Decision("accept"))
    adjudication = ReviewTask.objects.get(kind="adjudication")
    assert adjudication.annotation.image_id == first.image_id
    page = client_for(admin_user).get(
        reverse("review:task", args=[task_claim_next(user=admin_user).code])  # type: ignore[union-attr]
    )
    text = page.content.decode()
    assert 'id="earlier-decisions"' in text and "ann" in text and "tim" in text


def test_it_agrees_without_adjudication_when_decisions_match(
    annotator: User, teammate: User, admin_user: User
) -> None:
    (first,) = make_flagged_annotations(1)
    decide(annotator, Decision("correct", "anger"))
    second_run_on(first, expression="anger", valence=-0.2, arousal=0.6, aus=first.aus)
    client_for(admin_user).post(reverse("review:rereview", args=[first.image.code]))
    decide(teammate, Decision("accept"))
    assert not ReviewTask.objects.filter(kind="adjudication").exists()


@pytest.mark.parametrize("who", ["annotator", "outsider", None])
def test_it_lets_only_admins_send_an_image_to_review_again(
    who: str | None, request: pytest.FixtureRequest, annotator: User
) -> None:
    (first,) = make_flagged_annotations(1)
    decide(annotator, Decision("accept"))
    user = request.getfixturevalue(who) if who else None
    client_for(user).post(reverse("review:rereview", args=[first.image.code]))
    assert not ReviewTask.objects.filter(status="open").exists()


def test_it_refuses_a_rereview_while_a_review_waits(admin_user: User) -> None:
    (first,) = make_flagged_annotations(1)
    image = FaceImage.objects.get(id=first.image_id)
    page = client_for(admin_user).post(reverse("review:rereview", args=[image.code]), follow=True)
    assert "already waiting" in page.content.decode()
    assert ReviewTask.objects.count() == 1
