"""The review views through Django's test client: who may do what, CSRF, refused
values that change nothing, and query counts that do not grow with the queue."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from review.models import ReviewDecision, ReviewTask
from review.tasks import services
from review.tasks.services import task_claim_next, task_create_for
from seke_app.datasets.services import dataset_import
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, Dataset, FaceImage, RunItem
from seke_app.runs.services import run_create, run_process_chunk
from tests.concurrency import needs_postgresql, rendezvous, run_together
from tests.conftest import client_for, draw_face
from tests.factories import make_flagged_annotations

pytestmark = pytest.mark.django_db


def flagged_tasks(tmp_path: Path, n: int = 2) -> list[ReviewTask]:
    """``n`` drawn faces annotated by the offline backend, every one flagged for review."""
    src = tmp_path / "faces"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.png").write_bytes(draw_face(seed=i, smile=i % 2 == 0))
    (src / "manifest.csv").write_text(
        "file,expression\n" + "".join(f"{i}.png,happiness\n" for i in range(n))
    )
    dataset_import(path=src, dataset_name="faces")
    run = run_create(
        dataset=Dataset.objects.get(name="faces"),
        backend="offline",
        params=UAMCParams(review_threshold=1.0),
        concurrency=1,
        audit_share=0.0,
    )
    # Processed here, in the test's transaction, as the worker's job would do it.
    run_process_chunk(run_id=run.id, item_ids=list(RunItem.objects.values_list("id", flat=True)))
    tasks = list(ReviewTask.objects.order_by("priority", "id"))
    assert len(tasks) == n
    return tasks


def grow_queue(total: int) -> None:
    """More flagged annotations (copies of the first, on copies of its image) up to ``total``."""
    template = Annotation.objects.select_related("image").order_by("id").first()
    assert template is not None
    for i in range(ReviewTask.objects.count(), total):
        image = FaceImage.objects.get(id=template.image_id)
        image.pk = None
        image.code = uuid.uuid4()
        image.sha256 = f"{i:064x}"
        image.save()
        annotation = Annotation.objects.get(id=template.id)
        annotation.pk = None
        annotation.code = uuid.uuid4()
        annotation.image = image
        annotation.confidence = 0.01 * (i % 90)
        annotation.save()
        task_create_for(annotation)
    assert ReviewTask.objects.count() == total


def state() -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    return {
        "tasks": list(ReviewTask.objects.order_by("id").values()),
        "decisions": list(ReviewDecision.objects.order_by("id").values()),
        "annotations": list(Annotation.objects.order_by("id").values()),
        "rejected": list(FaceImage.objects.filter(rejected=True).values_list("id", flat=True)),
    }


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


ACCEPT = {"action": "accept", "time_spent_ms": "1200"}


def urls(task: ReviewTask) -> dict[str, tuple[str, str]]:
    """Every review view: name -> (method, url)."""
    return {
        "queue": ("get", reverse("review:queue")),
        "start": ("post", reverse("review:start")),
        "task": ("get", reverse("review:task", args=[task.code])),
        "decide": ("post", reverse("review:decide", args=[task.code])),
        "skip": ("post", reverse("review:skip", args=[task.code])),
        "undo": ("post", reverse("review:undo")),
    }


def call(client: Client, method: str, url: str, data: dict[str, str] | None = None) -> Any:
    return getattr(client, method)(url, data or {})


# --- Who may do what ----------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_the_login_page(tmp_path: Path) -> None:
    task = flagged_tasks(tmp_path)[0]
    before = state()
    for name, (method, url) in urls(task).items():
        response = call(Client(), method, url, ACCEPT)
        assert response.status_code == 302, name
        assert response["Location"].startswith(reverse("login")), name
    assert state() == before


def test_it_forbids_every_review_view_to_users_without_a_role(
    tmp_path: Path, outsider: User
) -> None:
    task = flagged_tasks(tmp_path)[0]
    before = state()
    for name, (method, url) in urls(task).items():
        assert call(client_for(outsider), method, url, ACCEPT).status_code == 403, name
    assert state() == before


def test_it_refuses_get_on_every_mutation(tmp_path: Path, annotator: User) -> None:
    task = flagged_tasks(tmp_path)[0]
    for name, (method, url) in urls(task).items():
        if method == "post":
            assert client_for(annotator).get(url).status_code == 405, name


@pytest.mark.parametrize("role", ["annotator", "admin_user"])
def test_it_lets_annotators_and_admins_review(
    role: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    user: User = request.getfixturevalue(role)
    first, second = flagged_tasks(tmp_path)
    client = client_for(user)

    page = client.get(reverse("review:queue"))
    assert page.status_code == 200
    assert page.context["n_waiting"] == 2 and "Start reviewing" in page.content.decode()

    response = client.post(reverse("review:start"))
    assert response["Location"] == reverse("review:task", args=[first.code])
    page = client.get(response["Location"])
    assert page.status_code == 200 and 'id="chart-data"' in page.content.decode()

    response = client.post(reverse("review:skip", args=[first.code]))
    assert response["Location"] == reverse("review:task", args=[second.code])
    first.refresh_from_db()
    assert first.status == "open" and first.holder is None

    response = client.post(reverse("review:decide", args=[second.code]), ACCEPT)
    assert response["Location"] == reverse("review:queue"), "the skipped task is not offered"
    decision = ReviewDecision.objects.get()
    assert (decision.reviewer, decision.action, decision.time_spent_ms) == (user, "accept", 1200)

    response = client.post(reverse("review:undo"))
    assert response["Location"] == reverse("review:task", args=[second.code])
    decision.refresh_from_db()
    second.refresh_from_db()
    assert decision.undone_at is not None
    assert second.status == "claimed" and second.holder == user


def test_it_keeps_an_annotator_off_a_teammates_task(
    tmp_path: Path, annotator: User, teammate: User
) -> None:
    tasks = flagged_tasks(tmp_path)
    task = task_claim_next(user=annotator)
    assert task == tasks[0]
    before = state()
    client = client_for(teammate)
    expected = {
        "task": "This task is not yours",
        "decide": "This task is not yours",
        "skip": "This task is not yours",
        "undo": "Nothing to undo",
    }
    for name, message in expected.items():
        method, url = urls(task)[name]
        response = call(client, method, url, ACCEPT | {"note": "mine now"})
        assert response.status_code == 302, name
        assert response["Location"] == reverse("review:queue"), name
        page = client.get(response["Location"])
        assert any(message in m for m in messages_of(page)), (name, messages_of(page))
        assert state() == before, name
    # Starting gives the teammate the other task, never the one that is held.
    response = client.post(reverse("review:start"))
    assert response["Location"] == reverse("review:task", args=[tasks[1].code])


def test_it_refuses_to_undo_a_teammates_decision(
    tmp_path: Path, annotator: User, teammate: User
) -> None:
    task = flagged_tasks(tmp_path)[0]
    client_for(annotator).post(reverse("review:start"))
    client_for(annotator).post(reverse("review:decide", args=[task.code]), ACCEPT)
    before = state()
    response = client_for(teammate).post(reverse("review:undo"), follow=True)
    assert "Nothing to undo" in " ".join(messages_of(response))
    assert state() == before


def test_it_refuses_a_decision_once_the_lease_has_expired(
    tmp_path: Path, annotator: User, settings: Any
) -> None:
    task = flagged_tasks(tmp_path)[0]
    client = client_for(annotator)
    client.post(reverse("review:start"))
    ReviewTask.objects.filter(id=task.id).update(lease_until="2000-01-01T00:00:00Z")
    before = state()
    response = client.post(reverse("review:decide", args=[task.code]), ACCEPT, follow=True)
    assert response.redirect_chain[-1][0] == reverse("review:queue")
    assert any("hold on this task expired" in m for m in messages_of(response))
    assert state() == before
    page = client.get(reverse("review:task", args=[task.code]), follow=True)
    assert any("expired" in m for m in messages_of(page))


def test_it_shows_where_each_grain_comes_from(tmp_path: Path, annotator: User) -> None:
    # The faces come with a known expression; the offline annotator does not observe AUs.
    task = flagged_tasks(tmp_path, n=1)[0]
    annotation = task.annotation
    assert annotation.expression == "happiness" and annotation.known_grains == ["expression"]
    assert annotation.inferred_from == {"aus": "expression"}
    client = client_for(annotator)
    client.post(reverse("review:start"))
    page = client.get(reverse("review:task", args=[task.code])).content.decode()
    assert (
        '<span class="badge provenance human" id="provenance-expression">given by the dataset<'
        in page
    )
    assert 'id="provenance-va">predicted by the model<' in page
    assert 'id="provenance-aus">inferred from the expression<' in page
    assert 'id="aus-inferred"' in page
    # Only the predicted valence-arousal can flag it: nothing says the AUs are disputed,
    # nor that the answer contradicts the label it was given.
    assert annotation.flag_reasons
    assert all(
        r.startswith("valence/arousal") or r.startswith("knowledge")
        for r in annotation.flag_reasons
    )
    assert "disputed" not in page and "contradicts" not in page


# --- CSRF ------------------------------------------------------------------------------


def test_it_enforces_csrf_on_every_mutation(tmp_path: Path, annotator: User) -> None:
    task = flagged_tasks(tmp_path)[0]
    task_claim_next(user=annotator)
    client = Client(enforce_csrf_checks=True)
    client.force_login(annotator)
    before = state()
    for name, (method, url) in urls(task).items():
        if method == "post":
            assert client.post(url, ACCEPT).status_code == 403, name
    assert state() == before
    # The same request with the page's token goes through.
    client.get(reverse("review:task", args=[task.code]))
    token = client.cookies["csrftoken"].value
    response = client.post(
        reverse("review:decide", args=[task.code]),
        ACCEPT | {"csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert ReviewDecision.objects.filter(task=task, action="accept").exists()


# --- Values ----------------------------------------------------------------------------


BAD_VALUES: dict[str, tuple[dict[str, str], str]] = {
    "expression outside the vocabulary": (
        {"action": "correct", "expression": "joy"},
        "expression 'joy' is not in the vocabulary",
    ),
    "valence above 1": (
        {"action": "correct", "valence": "1.5", "arousal": "0"},
        "valence 1.5 is outside [-1, 1]",
    ),
    "arousal below -1": (
        {"action": "correct", "valence": "0", "arousal": "-1.01"},
        "arousal -1.01 is outside [-1, 1]",
    ),
    "valence without arousal": (
        {"action": "correct", "valence": "0.2"},
        "valence and arousal must be given together",
    ),
    "valence not a number": (
        {"action": "correct", "valence": "high", "arousal": "0"},
        "not a number",
    ),
    "AU outside the vocabulary": ({"action": "correct", "au_11": "on"}, "unknown AUs: AU11"),
    "a field that is no AU": ({"action": "correct", "au_lips": "on"}, "au_lips is not an AU field"),
    "AU intensity outside A-E": (
        {"action": "correct", "au_12": "on", "au_12_intensity": "Z"},
        "AU intensity must be A-E",
    ),
    "reject without a reason": ({"action": "reject_image"}, "say why the image is rejected"),
    "unknown action": ({"action": "delete"}, "unknown action 'delete'"),
    "negative time spent": ({"action": "accept", "time_spent_ms": "-5"}, "time spent"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_it_refuses_invalid_values_and_changes_nothing(
    case: str, tmp_path: Path, annotator: User
) -> None:
    task = flagged_tasks(tmp_path, n=1)[0]
    client = client_for(annotator)
    client.post(reverse("review:start"))
    before = state()
    data, message = BAD_VALUES[case]
    response = client.post(reverse("review:decide", args=[task.code]), data, follow=True)
    assert response.redirect_chain == [(reverse("review:task", args=[task.code]), 302)]
    assert any(message.lower() in m.lower() for m in messages_of(response)), messages_of(response)
    assert state() == before


def test_it_records_a_correction_as_a_new_row(tmp_path: Path, annotator: User) -> None:
    task = flagged_tasks(tmp_path, n=1)[0]
    client = client_for(annotator)
    client.post(reverse("review:start"))
    annotations = list(Annotation.objects.values())
    data = {
        "action": "correct",
        "expression": "surprise",
        "valence": "0.25",
        "arousal": "0.8",
        "au_1": "on",
        "au_1_intensity": "C",
        "au_26": "on",
        "au_2_intensity": "B",
        "note": "mouth open",
        "time_spent_ms": "4321",
    }
    client.post(reverse("review:decide", args=[task.code]), data)
    decision = ReviewDecision.objects.get()
    assert (decision.expression, decision.valence, decision.arousal) == ("surprise", 0.25, 0.8)
    assert decision.aus is not None
    assert {au for au, on in decision.aus.items() if on} == {"1", "26"}
    assert decision.au_intensity == {"1": "C"}, "an intensity counts only for a present AU"
    assert decision.before["expression"] == task.annotation.expression
    assert decision.note == "mouth open" and decision.time_spent_ms == 4321
    assert list(Annotation.objects.values()) == annotations


@pytest.mark.django_db(transaction=True)
def test_it_gives_one_task_to_three_start_requests_from_one_session(
    annotator: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_postgresql()
    make_flagged_annotations(6)
    session = client_for(annotator).cookies
    tabs = [Client() for _ in range(3)]
    for tab in tabs:
        tab.cookies = session
    rendezvous(monkeypatch, services, "_take", parties=3)
    responses = run_together(*[lambda tab=tab: tab.post(reverse("review:start")) for tab in tabs])
    held = ReviewTask.objects.get(holder=annotator, status=ReviewTask.Status.CLAIMED)
    target = reverse("review:task", args=[held.code])
    assert [response["Location"] for response in responses] == [target] * 3


# --- Queries ---------------------------------------------------------------------------


def queries(request: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = request()
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_it_renders_the_queue_and_review_pages_in_queries_independent_of_the_data(
    tmp_path: Path, annotator: User, django_assert_max_num_queries: Any
) -> None:
    flagged_tasks(tmp_path, n=2)
    grow_queue(5)
    client = client_for(annotator)
    queue_url = reverse("review:queue")
    task = task_claim_next(user=annotator)
    assert task is not None
    task_url = reverse("review:task", args=[task.code])

    def review_page() -> Any:
        return client.get(task_url)

    small = (queries(lambda: client.get(queue_url)), queries(review_page))
    grow_queue(50)
    large = (queries(lambda: client.get(queue_url)), queries(review_page))
    assert large == small
    with django_assert_max_num_queries(10):
        client.get(queue_url)
    # One more than before for the image's earlier decisions, whatever their number.
    with django_assert_max_num_queries(8):
        review_page()
