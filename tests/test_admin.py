"""Django's admin: machine output and review decisions are shown, never written."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Model
from django.urls import reverse

from review.models import ReviewDecision, ReviewTask
from seke_app.insights.references import DecisionAction
from seke_app.models import Annotation, AnnotationSample
from tests.conftest import client_for
from tests.factories import make_flagged_annotations, record_decision

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.org", "pw-123456789")


@pytest.fixture
def decision(annotator: User) -> ReviewDecision:
    annotation = make_flagged_annotations(1)[0]
    AnnotationSample.objects.create(
        annotation=annotation, index=0, kind="expression", raw_text="{}"
    )
    return record_decision(
        annotation, annotator, action=DecisionAction.CORRECT, expression="surprise"
    )


def audit_trail(decision: ReviewDecision) -> list[Model]:
    """The decision, the machine annotation it decided and that annotation's sample."""
    return [decision, decision.annotation, AnnotationSample.objects.get()]


def rows() -> dict[str, Any]:
    return {
        "annotations": list(Annotation.objects.order_by("id").values()),
        "samples": list(AnnotationSample.objects.order_by("id").values()),
        "decisions": list(ReviewDecision.objects.order_by("id").values()),
    }


def admin_url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize("who", ["admin_user", "superuser"])
def test_it_shows_decisions_annotations_and_samples_to_admins(
    decision: ReviewDecision, who: str, request: pytest.FixtureRequest
) -> None:
    client = client_for(request.getfixturevalue(who))
    for row in audit_trail(decision):
        assert client.get(admin_url(type(row), "changelist")).status_code == 200
        page = client.get(admin_url(type(row), "change", row.pk))
        # A read-only page: its values shown as text, no save button.
        assert page.status_code == 200
        assert b'name="_save"' not in page.content and b"Close" in page.content


@pytest.mark.parametrize("who", ["admin_user", "superuser"])
def test_it_refuses_to_add_change_or_delete_them(
    decision: ReviewDecision, who: str, request: pytest.FixtureRequest
) -> None:
    client = client_for(request.getfixturevalue(who))
    before = rows()
    for row in audit_trail(decision):
        model = type(row)
        assert client.get(admin_url(model, "add")).status_code == 403
        assert client.post(admin_url(model, "add"), {}).status_code == 403
        assert client.post(admin_url(model, "delete", row.pk), {"post": "yes"}).status_code == 403
    change = client.post(
        admin_url(ReviewDecision, "change", decision.pk),
        {"action": "accept", "expression": "fear", "before": "{}", "note": "rewritten"},
    )
    assert change.status_code == 403
    bulk = client.post(
        admin_url(ReviewDecision, "changelist"),
        {"action": "delete_selected", "_selected_action": [decision.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    # Nor through what they belong to: that deletion would take them with it.
    annotation = decision.annotation
    for owner in (annotation.run, annotation.image):
        url = admin_url(type(owner), "delete", owner.pk)
        assert client.post(url, {"post": "yes"}).status_code == 403
    assert rows() == before


def test_it_sends_annotators_and_outsiders_to_the_admin_login(
    decision: ReviewDecision, outsider: User
) -> None:
    for user in (decision.reviewer, outsider):
        page = client_for(user).get(admin_url(ReviewDecision, "changelist"))
        assert page.status_code == 302 and "/admin/login/" in page["Location"]


def test_it_shows_review_tasks_and_never_writes_them(
    decision: ReviewDecision, admin_user: User, superuser: User
) -> None:
    task = decision.task
    before = list(ReviewTask.objects.order_by("id").values())
    for user in (admin_user, superuser):
        client = client_for(user)
        assert client.get(admin_url(ReviewTask, "changelist")).status_code == 200
        page = client.get(admin_url(ReviewTask, "change", task.pk))
        assert page.status_code == 200 and b'name="_save"' not in page.content
        reopened = {"annotation": task.annotation_id, "kind": "first", "status": "open",
                    "priority": "0.0", "expression_confidence": "0", "va_confidence": "0",
                    "au_confidence": "0", "_save": "Save"}  # fmt: skip
        assert client.post(admin_url(ReviewTask, "change", task.pk), reopened).status_code == 403
        assert client.get(admin_url(ReviewTask, "add")).status_code == 403
        assert client.post(admin_url(ReviewTask, "add"), reopened).status_code == 403
        url = admin_url(ReviewTask, "delete", task.pk)
        assert client.post(url, {"post": "yes"}).status_code == 403
    assert list(ReviewTask.objects.order_by("id").values()) == before
