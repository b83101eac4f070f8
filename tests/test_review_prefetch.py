"""The next face fetched ahead: claimed for the reviewer while they look at the
current one, sent as a panel alone, and decisions answered in JSON for the page's
script. Blind audit tasks stay blind on this path too."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from review.models import ReviewDecision, ReviewTask
from review.tasks.services import ReviewRefused, task_claim_ahead, task_claim_next
from seke_app.models import Annotation, RunItem
from tests.conftest import client_for
from tests.factories import make_flagged_annotations

pytestmark = pytest.mark.django_db

JSON = {"Accept": "application/json"}


@pytest.fixture(autouse=True)
def _no_gold(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def started(client: Client, user: User) -> ReviewTask:
    client.post(reverse("review:start"))
    return ReviewTask.objects.get(holder=user, status="claimed")


def test_it_claims_one_task_ahead_and_keeps_it(annotator: User) -> None:
    make_flagged_annotations(3)
    current = task_claim_next(user=annotator)
    assert current is not None
    ahead = task_claim_ahead(user=annotator, current=current)
    assert ahead is not None and ahead != current
    assert task_claim_ahead(user=annotator, current=current) == ahead, "asked again: the same"
    held = ReviewTask.objects.filter(holder=annotator, status="claimed")
    assert set(held) == {current, ahead}
    # The face on screen is still the one the queue page continues with.
    assert task_claim_next(user=annotator) == current


def test_it_claims_nothing_ahead_of_a_task_that_is_not_the_reviewers(
    annotator: User, teammate: User
) -> None:
    make_flagged_annotations(3)
    current = task_claim_next(user=annotator)
    assert current is not None
    with pytest.raises(ReviewRefused):
        task_claim_ahead(user=teammate, current=current)
    ReviewTask.objects.filter(id=current.id).update(lease_until=timezone.now())
    with pytest.raises(ReviewRefused, match="expired"):
        task_claim_ahead(user=annotator, current=current)
    assert not ReviewTask.objects.filter(holder=teammate).exists()
    assert ReviewTask.objects.filter(holder=annotator).count() == 1


def test_it_sends_the_next_panel_and_answers_a_decision_in_json(annotator: User) -> None:
    make_flagged_annotations(3, write_files=True)
    client = client_for(annotator)
    current = started(client, annotator)
    response = client.post(reverse("review:ahead", args=[current.code]))
    assert response.status_code == 200
    ahead = ReviewTask.objects.get(code=response["X-Review-Task"])
    html = response.content.decode().strip()
    assert html.startswith('<div class="review-panel"') and "<html" not in html
    assert f'data-code="{ahead.code}"' in html and 'id="chart-data"' in html

    response = client.post(
        reverse("review:decide", args=[current.code]), {"action": "accept"}, headers=JSON
    )
    result = json.loads(response.content)
    assert result["saved"] == f"Accepted {current.annotation.image.original_name}."
    assert result["error"] == ""
    assert result["next"]["code"] == str(ahead.code), "the face fetched ahead comes next"
    assert result["next"]["url"] == reverse("review:task", args=[ahead.code])
    assert result["progress"] == {"done": 1, "left": 2, "total": 3}
    assert result["undoable"] is True
    panel = client.get(result["next"]["panel"])
    assert panel.status_code == 200 and f'data-code="{ahead.code}"' in panel.content.decode()

    # A refusal changes nothing and says so, and which task is on screen.
    before = list(ReviewDecision.objects.values())
    response = client.post(
        reverse("review:decide", args=[current.code]), {"action": "accept"}, headers=JSON
    )
    result = json.loads(response.content)
    assert "already been decided" in result["error"] and result["saved"] == ""
    assert result["next"]["code"] == str(ahead.code)
    assert list(ReviewDecision.objects.values()) == before


def test_it_answers_a_skip_in_json_and_sends_to_the_queue_when_nothing_is_left(
    annotator: User,
) -> None:
    make_flagged_annotations(1, write_files=True)
    client = client_for(annotator)
    current = started(client, annotator)
    assert client.post(reverse("review:ahead", args=[current.code])).status_code == 204
    result = json.loads(
        client.post(reverse("review:skip", args=[current.code]), headers=JSON).content
    )
    assert result["saved"].startswith("Skipped ") and result["next"] is None
    assert result["queue"] == reverse("review:queue")
    page = client.get(result["queue"])
    assert "Nothing left to review" in " ".join(str(m) for m in page.context["messages"])


def test_it_refuses_the_panel_of_a_task_the_reviewer_does_not_hold(
    annotator: User, teammate: User
) -> None:
    make_flagged_annotations(2, write_files=True)
    current = started(client_for(annotator), annotator)
    response = client_for(teammate).get(reverse("review:panel", args=[current.code]))
    assert response.status_code == 409
    assert "review-panel" not in response.content.decode()


# --- Blind audits stay blind -------------------------------------------------------------

SECRET = "the machine whispers"


def audit_after_a_flagged_task() -> tuple[ReviewTask, ReviewTask]:
    """A flagged task first in the queue, and a blind audit task right after it."""
    first, audited = make_flagged_annotations(2, write_files=True)
    Annotation.objects.filter(id=audited.id).update(
        evidence={"expression": SECRET, "va": SECRET, "aus": SECRET},
        flag_reasons=[f"expression confidence 0.10 under 1.00: {SECRET}"],
        expression="contempt",
    )
    task = ReviewTask.objects.get(annotation=audited)
    ReviewTask.objects.filter(id=task.id).update(audit=True, priority=2.0)
    RunItem.objects.create(run=audited.run, image=audited.image, audit=True)
    flagged = ReviewTask.objects.get(annotation=first)
    return flagged, ReviewTask.objects.get(id=task.id)


def assert_blind(text: str, annotation: Annotation) -> None:
    for shown in (
        SECRET,
        "chart-data",
        "confidence",
        "Machine",
        "checked",
        "Accept as is",
        f"{annotation.valence}",
        "predicted by the model",
    ):
        assert shown not in text, shown


def test_it_keeps_an_audit_blind_when_it_is_fetched_ahead(annotator: User) -> None:
    flagged, audit = audit_after_a_flagged_task()
    client = client_for(annotator)
    assert started(client, annotator) == flagged
    response = client.post(reverse("review:ahead", args=[flagged.code]))
    assert response["X-Review-Task"] == str(audit.code)
    html = response.content.decode()
    assert 'data-blind="1"' in html and "blind audit" in html
    assert_blind(html, audit.annotation)
    panel = client.get(reverse("review:panel", args=[audit.code])).content.decode()
    assert_blind(panel, audit.annotation)

    # Neither the answer to the decision before it nor the audit's own says anything.
    decided = client.post(
        reverse("review:decide", args=[flagged.code]), {"action": "accept"}, headers=JSON
    ).content.decode()
    assert json.loads(decided)["next"]["code"] == str(audit.code)
    assert_blind(decided, audit.annotation)
    # The audit's whole page, as the back button or a reload would show it.
    page = client.get(reverse("review:task", args=[audit.code]))
    assert page.status_code == 200
    assert_blind(page.content.decode(), audit.annotation)

    # Blind labels equal to the machine's are the reviewer's own: never an accept.
    machine = audit.annotation
    labels = {
        "action": "correct",
        "expression": machine.expression,
        "valence": str(machine.valence),
        "arousal": str(machine.arousal),
    } | {f"au_{au}": "on" for au, on in machine.aus_dict().items() if on}
    answered = client.post(
        reverse("review:decide", args=[audit.code]), labels, headers=JSON
    ).content.decode()
    assert json.loads(answered)["saved"]
    assert_blind(answered, audit.annotation)
    row = ReviewDecision.objects.get(task=audit)
    assert row.audit and row.action == "correct" and row.expression == "contempt"
