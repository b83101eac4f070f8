"""Double review, adjudication by an admin, gold questions and reviewer scores."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.models import GoldQuestion, ReviewDecision, ReviewTask
from review.quality.services import gold_question_set, gold_scores
from review.tasks.services import (
    Decision,
    ReviewRefused,
    decision_record,
    decision_undo,
    double_reviewed,
    task_claim_next,
)
from seke_app.models import Annotation, GenerationRun
from seke_app.roles import user_create
from tests.conftest import client_for
from tests.factories import make_flagged_annotations

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold_by_default(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def double_reviewed_run(n: int = 4) -> list[Annotation]:
    annotations = make_flagged_annotations(n)
    run = annotations[0].run
    GenerationRun.objects.filter(id=run.id).update(double_review_share=1.0)
    ReviewTask.objects.all().delete()
    from review.tasks.services import task_create_for

    for annotation in Annotation.objects.filter(run=run):
        task_create_for(annotation)
    return list(Annotation.objects.filter(run=run))


def test_it_selects_a_stable_share_for_double_review() -> None:
    annotations = make_flagged_annotations(200)
    chosen = [a for a in annotations if double_reviewed(a, 0.3)]
    assert 0.2 < len(chosen) / 200 < 0.4
    assert chosen == [a for a in annotations if double_reviewed(a, 0.3)]
    assert not any(double_reviewed(a, 0.0) for a in annotations)


def test_it_never_gives_both_rounds_to_one_annotator(annotator: User, teammate: User) -> None:
    annotations = double_reviewed_run(1)
    assert ReviewTask.objects.filter(annotation=annotations[0]).count() == 2
    first = task_claim_next(user=annotator)
    assert first is not None
    decision_record(task=first, user=annotator, decision=Decision(action="accept"))
    # The same annotator gets nothing more: the other round must be someone else's.
    assert task_claim_next(user=annotator) is None
    second = task_claim_next(user=teammate)
    assert second is not None and second.kind != first.kind


def test_it_sends_disagreements_to_an_admin(
    annotator: User, teammate: User, admin_user: User
) -> None:
    double_reviewed_run(1)
    a = task_claim_next(user=annotator)
    assert a is not None
    decision_record(
        task=a,
        user=annotator,
        decision=Decision(action="correct", expression="fear", valence=-0.1, arousal=0.7),
    )
    b = task_claim_next(user=teammate)
    assert b is not None
    decision_record(
        task=b,
        user=teammate,
        decision=Decision(action="correct", expression="surprise", valence=0.3, arousal=0.8),
    )
    adjudication = ReviewTask.objects.get(kind="adjudication")
    assert adjudication.status == "open"
    # Annotators never see it; an admin gets it first.
    assert (
        task_claim_next(user=user_create(username="c", password="pw-123456789", role="annotator"))
        is None
    )
    claimed = task_claim_next(user=admin_user)
    assert claimed is not None and claimed.id == adjudication.id
    decision = decision_record(
        task=claimed,
        user=admin_user,
        decision=Decision(action="correct", expression="fear", valence=0.0, arousal=0.75),
    )
    assert decision.kind == "adjudication"
    assert sorted(ReviewDecision.objects.values_list("kind", flat=True)) == [
        "adjudication",
        "first",
        "second",
    ]


def test_it_needs_no_adjudication_when_reviews_agree(annotator: User, teammate: User) -> None:
    double_reviewed_run(1)
    for user in (annotator, teammate):
        task = task_claim_next(user=user)
        assert task is not None
        decision_record(task=task, user=user, decision=Decision(action="accept"))
    assert not ReviewTask.objects.filter(kind="adjudication").exists()


def test_it_withdraws_an_adjudication_when_a_review_is_undone(
    annotator: User, teammate: User
) -> None:
    double_reviewed_run(1)
    a = task_claim_next(user=annotator)
    assert a is not None
    decision_record(task=a, user=annotator, decision=Decision(action="accept"))
    b = task_claim_next(user=teammate)
    assert b is not None
    second = decision_record(
        task=b, user=teammate, decision=Decision(action="reject_image", reject_reason="not a face")
    )
    assert ReviewTask.objects.filter(kind="adjudication").exists()
    decision_undo(decision=second, user=teammate)
    assert not ReviewTask.objects.filter(kind="adjudication").exists()


def test_it_mixes_in_gold_questions_and_scores_reviewers(
    annotator: User, teammate: User, admin_user: User, settings: Any
) -> None:
    annotations = make_flagged_annotations(5)
    image = annotations[0].image
    gold_question_set(
        image=image,
        expression="fear",
        valence=-0.2,
        arousal=0.7,
        aus={1: True, 2: True, 4: True},
        user=admin_user,
    )
    settings.GOLD_RATE = 1.0
    task = task_claim_next(user=annotator)
    assert task is not None and task.kind == "gold" and task.annotation.image == image
    decision_record(
        task=task,
        user=annotator,
        decision=Decision(
            action="correct",
            expression="fear",
            valence=-0.2,
            arousal=0.5,
            aus={1: True, 2: True, 4: False},
        ),
    )
    # Answered once: the next claim is an ordinary task.
    nxt = task_claim_next(user=annotator)
    assert nxt is not None and nxt.kind == "first"
    other = task_claim_next(user=teammate)
    assert other is not None and other.kind == "gold"
    decision_record(
        task=other, user=teammate, decision=Decision(action="correct", expression="surprise")
    )
    scores = {s.reviewer: s for s in gold_scores()}
    assert scores["ann"].expression_accuracy == 1.0
    assert scores["ann"].va_distance == pytest.approx(0.2)
    assert scores["ann"].au_accuracy == pytest.approx(2 / 3)
    assert scores["tom"].expression_accuracy == 0.0
    # A gold answer never rejects or otherwise changes the image.
    assert not GoldQuestion.objects.get().image.rejected


def test_it_refuses_a_gold_question_without_an_expression(admin_user: User) -> None:
    image = make_flagged_annotations(1)[0].image
    with pytest.raises(ReviewRefused, match="needs at least its expression"):
        gold_question_set(
            image=image, expression=None, valence=None, arousal=None, aus=None, user=admin_user
        )
    assert not GoldQuestion.objects.exists()


def test_it_shows_quality_pages_to_admins_only(
    annotator: User, admin_user: User, outsider: User
) -> None:
    image = make_flagged_annotations(1)[0].image
    url = reverse("review:quality")
    assert client_for(None).get(url).status_code == 302
    assert client_for(outsider).get(url).status_code == 403
    assert client_for(annotator).get(url).status_code == 403
    assert client_for(admin_user).get(url).status_code == 200
    mark = reverse("review:gold_mark", args=[image.code])
    assert client_for(annotator).post(mark, {"expression": "fear"}).status_code == 403
    response = client_for(admin_user).post(mark, {"expression": "fear", "au_4": "on"})
    assert response.status_code == 302
    assert GoldQuestion.objects.get().aus["4"] is True
