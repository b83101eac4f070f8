"""Double review, adjudication by an admin, gold questions and reviewer scores."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.models import GoldQuestion, ReviewDecision, ReviewTask
from review.quality.services import gold_question_set, gold_scores
from review.tasks import services
from review.tasks.services import (
    Decision,
    ReviewRefused,
    decision_record,
    decision_undo,
    double_reviewed,
    task_claim_next,
)
from review.tasks.store import decision_of
from seke_app.insights.references import DecisionAction, DecisionKind, disputes
from seke_app.models import Annotation, FaceImage, GenerationRun
from seke_app.roles import user_create
from tests.concurrency import needs_postgresql, rendezvous, run_together
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


def test_it_keeps_an_image_rejected_while_another_review_rejects_it(
    annotator: User, teammate: User
) -> None:
    (annotation,) = double_reviewed_run(1)
    rejections = []
    for user in (annotator, teammate):
        task = task_claim_next(user=user)
        assert task is not None
        rejections.append(
            decision_record(
                task=task,
                user=user,
                decision=Decision(action=DecisionAction.REJECT_IMAGE, reject_reason="blurred"),
            )
        )
    image = FaceImage.objects.get(id=annotation.image_id)
    decision_undo(decision=rejections[1], user=teammate)
    image.refresh_from_db()
    assert image.rejected, "the first review still rejects the image"
    decision_undo(decision=rejections[0], user=annotator)
    image.refresh_from_db()
    assert not image.rejected


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


# --- Simultaneous reviews (PostgreSQL) ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_never_gives_both_reviews_to_one_reviewer_claiming_twice_at_once(
    annotator: User, teammate: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_postgresql()
    double_reviewed_run(1)
    rendezvous(monkeypatch, services, "_take", parties=2)
    run_together(lambda: task_claim_next(user=annotator), lambda: task_claim_next(user=annotator))
    assert ReviewTask.objects.filter(holder=annotator).count() == 1
    other = task_claim_next(user=teammate)
    assert other is not None and other.holder == teammate


@pytest.mark.django_db(transaction=True)
def test_it_opens_an_adjudication_when_both_reviews_are_decided_at_once(
    annotator: User, teammate: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_postgresql()
    double_reviewed_run(1)
    first = task_claim_next(user=annotator)
    second = task_claim_next(user=teammate)
    assert first is not None and second is not None
    rendezvous(monkeypatch, services, "_adjudicate_if_needed", parties=2)
    run_together(
        lambda: decision_record(
            task=first, user=annotator, decision=Decision(action="correct", expression="fear")
        ),
        lambda: decision_record(
            task=second, user=teammate, decision=Decision(action="correct", expression="surprise")
        ),
    )
    assert ReviewTask.objects.filter(kind=DecisionKind.ADJUDICATION).count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_keeps_double_reviews_independent_and_adjudicated_under_load() -> None:
    """Six reviewers with two tabs each work through 120 double-reviewed annotations."""
    needs_postgresql()
    double_reviewed_run(120)
    reviewers = [
        user_create(username=f"r{i}", password="pw-123456789", role="annotator") for i in range(6)
    ]
    most_held: list[int] = []

    def review(user: User, seed: int) -> None:
        rng = random.Random(seed)
        while (task := task_claim_next(user=user)) is not None:
            most_held.append(
                ReviewTask.objects.filter(holder=user, status=ReviewTask.Status.CLAIMED).count()
            )
            expression = rng.choice(["fear", "surprise", None])
            decision = Decision(action=DecisionAction.CORRECT, expression=expression)
            # Refused when the reviewer's other tab decided it first.
            with contextlib.suppress(ReviewRefused):
                decision_record(task=task, user=user, decision=decision)

    run_together(*[lambda u=u, s=s: review(u, s) for u in reviewers for s in range(2)])
    assert max(most_held) == 1
    rounds = [DecisionKind.FIRST, DecisionKind.SECOND]
    assert not ReviewTask.objects.filter(kind__in=rounds).exclude(status="done").exists()
    for annotation in Annotation.objects.all():
        pair = list(ReviewDecision.objects.filter(annotation=annotation, kind__in=rounds))
        assert len(pair) == 2 and pair[0].reviewer_id != pair[1].reviewer_id
        disputed = disputes(decision_of(pair[0]), decision_of(pair[1]))
        adjudicated = annotation.review_tasks.filter(kind=DecisionKind.ADJUDICATION).exists()
        assert adjudicated == bool(disputed), annotation.id
