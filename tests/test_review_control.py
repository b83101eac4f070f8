"""What a reviewer controls and what decisions mean: a correction that changes nothing
is an accept, a new expression wants its valence-arousal looked at, undo takes back
a skip, held faces can be released, the queue's filters apply to the next face even
while one is held, and the queue shows progress and pages."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from review.models import ReviewDecision, ReviewTask
from review.tasks.services import (
    Decision,
    QueueFilter,
    ReviewRefused,
    decision_record,
    task_claim_next,
    task_skip,
    task_skip_undo,
    tasks_release,
    unchanged_grains,
)
from seke_app.models import Annotation
from tests.conftest import client_for
from tests.factories import make_flagged_annotations

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def machine_decision(annotation: Annotation, **changes: Any) -> Decision:
    """A correction that posts back exactly what the page showed for ``annotation``."""
    values: dict[str, Any] = {
        "action": "correct",
        "expression": annotation.expression,
        "valence": annotation.valence,
        "arousal": annotation.arousal,
        "aus": {au: on for au, on in annotation.aus_dict().items()},
        "au_intensity": {},
    }
    return Decision(**(values | changes))


def other_than(expression: str | None) -> str:
    """An expression other than ``expression`` that the scripted annotations use twice."""
    return "surprise" if expression != "surprise" else "fear"


def claimed(user: User) -> ReviewTask:
    task = task_claim_next(user=user)
    assert task is not None
    return task


# --- Decisions mean what they say ------------------------------------------------------


def test_it_records_a_correction_that_changes_nothing_as_an_accept(annotator: User) -> None:
    make_flagged_annotations(2)
    task = claimed(annotator)
    annotation = task.annotation
    assert annotation.valence is not None
    # The page shows valence and arousal to three decimals; that is what comes back.
    shown = machine_decision(
        annotation, valence=round(annotation.valence + 0.0004, 3), arousal=annotation.arousal
    )
    assert unchanged_grains(shown, annotation) == {"expression", "va", "aus"}
    row = decision_record(task=task, user=annotator, decision=shown)
    assert row.action == "accept"
    assert (row.valence, row.arousal, row.aus) == (
        annotation.valence,
        annotation.arousal,
        annotation.aus,
    )
    assert row.before["valence"] == row.valence


@pytest.mark.parametrize(
    "change",
    [
        {"expression": "fear"},
        {"valence": 0.1},
        {"aus": {1: True, 2: False, 4: False}},
        {"au_intensity": {1: "B"}},
    ],
    ids=["expression", "valence", "an AU", "an intensity"],
)
def test_it_keeps_a_correction_that_changes_one_grain(
    change: dict[str, Any], annotator: User
) -> None:
    make_flagged_annotations(1)
    task = claimed(annotator)
    if "expression" in change:
        change = {"expression": other_than(task.annotation.expression)}
    decision = machine_decision(task.annotation, **change)
    row = decision_record(task=task, user=annotator, decision=decision)
    assert row.action == "correct"


def test_it_asks_for_valence_arousal_when_only_the_expression_changed(
    annotator: User,
) -> None:
    (annotation,) = make_flagged_annotations(1)
    task = claimed(annotator)
    client = client_for(annotator)
    other = "happiness" if annotation.expression != "happiness" else "sadness"
    form = {
        "action": "correct",
        "expression": other,
        "valence": "-0.2",
        "arousal": "0.6",
        "au_1": "on",
        "au_2": "on",
    }
    response = client.post(reverse("review:decide", args=[task.code]), form, follow=True)
    messages = [str(m) for m in response.context["messages"]]
    assert any("still the machine's" in m and other in m for m in messages), messages
    assert not ReviewDecision.objects.exists()
    # Kept on purpose, or changed: either is taken.
    client.post(reverse("review:decide", args=[task.code]), form | {"va_confirmed": "1"})
    row = ReviewDecision.objects.get()
    assert (row.action, row.expression, row.valence) == ("correct", other, -0.2)


def test_it_shows_valence_and_arousal_with_three_decimals_at_most(annotator: User) -> None:
    (annotation,) = make_flagged_annotations(1, write_files=True)
    Annotation.objects.filter(id=annotation.id).update(valence=-0.34945000000000004, arousal=0.5)
    task = claimed(annotator)
    page = client_for(annotator).get(reverse("review:task", args=[task.code])).content.decode()
    assert 'id="valence" min="-1" max="1" step="0.001" value="-0.349"' in page
    assert 'id="arousal" min="-1" max="1" step="0.001" value="0.5"' in page
    assert "0.34945" not in page.split('id="chart-data"')[0]


# --- Undo of a skip --------------------------------------------------------------------


def test_it_undoes_a_skip_and_names_the_face_it_brings_back(annotator: User) -> None:
    make_flagged_annotations(3, write_files=True)
    client = client_for(annotator)
    client.post(reverse("review:start"))
    skipped = ReviewTask.objects.get(holder=annotator, status="claimed")
    client.post(reverse("review:decide", args=[skipped.code]), {"action": "accept"})
    decided = ReviewDecision.objects.get()
    following = ReviewTask.objects.get(holder=annotator, status="claimed")
    # The skip is later than the decision: undo takes back the skip.
    response = client.post(reverse("review:skip", args=[following.code]))
    assert response.status_code == 302
    response = client.post(reverse("review:undo"), follow=True)
    assert response.redirect_chain[0][0] == reverse("review:task", args=[following.code])
    name = following.annotation.image.original_name
    assert f"Skip undone: {name} is yours again." in [str(m) for m in response.context["messages"]]
    following.refresh_from_db()
    assert following.status == "claimed" and following.holder == annotator
    held = ReviewTask.objects.filter(holder=annotator, status="claimed")
    assert list(held) == [following], "the face claimed after the skip went back"
    decided.refresh_from_db()
    assert decided.undone_at is None
    # The next undo takes back the decision.
    client.post(reverse("review:undo"))
    decided.refresh_from_db()
    assert decided.undone_at is not None


def test_it_refuses_to_undo_a_skip_once_someone_took_the_face(
    annotator: User, teammate: User
) -> None:
    make_flagged_annotations(2)
    task = claimed(annotator)
    task_skip(task=task, user=annotator)
    assert claimed(teammate) == task
    with pytest.raises(ReviewRefused, match="someone took it"):
        task_skip_undo(task=task, user=annotator)
    task.refresh_from_db()
    assert task.holder == teammate


# --- Release ---------------------------------------------------------------------------


def test_it_releases_the_faces_a_reviewer_holds(annotator: User, teammate: User) -> None:
    make_flagged_annotations(4, write_files=True)
    client = client_for(annotator)
    client.post(reverse("review:start"))
    current = ReviewTask.objects.get(holder=annotator)
    client.post(reverse("review:ahead", args=[current.code]))
    ahead = ReviewTask.objects.exclude(id=current.id).get(holder=annotator, status="claimed")
    other = claimed(teammate)

    # The page gives back the face fetched ahead, by its code, when it is left.
    response = client.post(reverse("review:release"), {"task": str(ahead.code)})
    assert response.status_code == 204
    ahead.refresh_from_db()
    current.refresh_from_db()
    assert ahead.status == "open" and ahead.holder is None
    assert current.status == "claimed"

    response = client.post(reverse("review:release"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("review:queue")
    name = current.annotation.image.original_name
    assert any(name in str(m) for m in response.context["messages"])
    current.refresh_from_db()
    assert current.status == "open" and current.holder is None
    other.refresh_from_db()
    assert other.holder == teammate, "a teammate's face is not released"
    assert client_for(teammate).post(reverse("review:release"), {"task": str(other.code)})
    other.refresh_from_db()
    assert other.holder == teammate or other.status == "open"


def test_it_releases_only_what_the_new_filters_leave_out(annotator: User) -> None:
    annotations = make_flagged_annotations(6)
    held = claimed(annotator)
    assert held.annotation.expression == annotations[0].expression
    kept = tasks_release(
        user=annotator, keep=QueueFilter(expression=held.annotation.expression or "")
    )
    assert kept == []
    other = other_than(held.annotation.expression)
    released = tasks_release(user=annotator, keep=QueueFilter(expression=other))
    assert released == [held]


def test_it_applies_new_filters_to_the_next_face_while_one_is_held(annotator: User) -> None:
    make_flagged_annotations(8, write_files=True)
    client = client_for(annotator)
    client.post(reverse("review:start"))
    held = ReviewTask.objects.get(holder=annotator)
    other = other_than(held.annotation.expression)
    # The queue page offers to start with other filters, though a face is held.
    page = client.get(reverse("review:queue") + f"?expression={other}").content.decode()
    assert "Continue your task" in page and "Start with these filters" in page
    response = client.post(reverse("review:start"), {"expression": other})
    task = ReviewTask.objects.get(holder=annotator, status="claimed")
    assert response["Location"] == reverse("review:task", args=[task.code])
    assert task.annotation.expression == other
    held.refresh_from_db()
    assert held.status == "open", "the face the new filters leave out went back"
    # The next faces follow the new filters too.
    client.post(reverse("review:ahead", args=[task.code]))
    ahead = ReviewTask.objects.filter(holder=annotator, status="claimed").exclude(id=task.id)
    assert [t.annotation.expression for t in ahead] == [other]


# --- The queue -------------------------------------------------------------------------


def test_it_shows_progress_and_pages_with_faces_big_enough_to_read(annotator: User) -> None:
    make_flagged_annotations(60, write_files=True)
    client = client_for(annotator)
    first = claimed(annotator)
    decision_record(task=first, user=annotator, decision=Decision("accept"))
    response = client.get(reverse("review:queue"))
    assert response.context["progress"] == {"done": 1, "left": 59, "total": 60}
    page = response.content.decode()
    assert "<strong>1</strong> of 60 done, 59 left" in page
    assert page.count('class="thumb"') == 50 and 'width="112" height="112"' in page
    assert "page 1 of 2" in page and "page=2" in page
    second = client.get(reverse("review:queue") + "?page=2").content.decode()
    assert second.count('class="thumb"') == 9 and "51\N{EN DASH}59 of 59" in second
    # A filter carries over to the next page, and progress follows it.
    filtered = client.get(reverse("review:queue") + "?expression=fear")
    assert filtered.context["progress"]["total"] == sum(
        1 for t in ReviewTask.objects.all() if t.annotation.expression == "fear"
    )


def test_it_says_so_when_the_back_button_leads_to_a_decided_face(annotator: User) -> None:
    make_flagged_annotations(2, write_files=True)
    client = client_for(annotator)
    client.post(reverse("review:start"))
    first = ReviewTask.objects.get(holder=annotator)
    client.post(reverse("review:decide", args=[first.code]), {"action": "accept"})
    second = ReviewTask.objects.get(holder=annotator, status="claimed")
    response = client.get(reverse("review:task", args=[first.code]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("review:task", args=[second.code])
    name = first.annotation.image.original_name
    assert any(f"You have decided {name} already" in str(m) for m in response.context["messages"])


def test_it_refuses_release_and_ahead_to_other_methods_and_roles(
    annotator: User, outsider: User
) -> None:
    make_flagged_annotations(1)
    task = claimed(annotator)
    for url in (reverse("review:release"), reverse("review:ahead", args=[task.code])):
        assert client_for(annotator).get(url).status_code == 405
        assert client_for(outsider).post(url).status_code == 403
        assert Client().post(url).status_code == 302
        csrf = Client(enforce_csrf_checks=True)
        csrf.force_login(annotator)
        assert csrf.post(url).status_code == 403
    task.refresh_from_db()
    assert task.status == "claimed" and task.holder == annotator
