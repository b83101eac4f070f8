"""Review through the API: claim, decide, skip, undo and release under the review
page's rules, blind audits and gold questions that show what the page shows, the
page's refusals (which write nothing), lists scoped per role, and query counts
that do not grow with the data."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from review.models import ReviewDecision, ReviewTask
from review.quality.services import gold_question_set
from review.tasks import services
from review.tasks.services import task_create_for
from seke_app.models import Annotation, FaceImage, RunItem
from tests.api_client import ApiClient
from tests.concurrency import needs_postgresql, rendezvous, run_together
from tests.factories import make_flagged_annotations, record_decision

pytestmark = pytest.mark.django_db

CLAIM = "/api/v1/review/claim"
UNDO = "/api/v1/review/undo"
RELEASE = "/api/v1/review/release"
TASKS = "/api/v1/review/tasks"
DECISIONS = "/api/v1/review/decisions"


@pytest.fixture(autouse=True)
def _no_gold(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def decide_url(code: str) -> str:
    return f"{TASKS}/{code}/decide"


def skip_url(code: str) -> str:
    return f"{TASKS}/{code}/skip"


def state() -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    return {
        "tasks": list(ReviewTask.objects.order_by("id").values()),
        "decisions": list(ReviewDecision.objects.order_by("id").values()),
        "annotations": list(Annotation.objects.order_by("id").values()),
        "rejected": list(FaceImage.objects.filter(rejected=True).values_list("id", flat=True)),
    }


def claimed(api: ApiClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = api.post(CLAIM, body)
    assert response.status_code == 200, response.json()
    task: dict[str, Any] = response.json()
    return task


def codes(response: Any) -> list[str]:
    assert response.status_code == 200, response.json()
    return [row["code"] for row in response.json()["results"]]


# --- The cycle -------------------------------------------------------------------------


def test_it_claims_decides_undoes_and_skips_and_never_gives_two_annotators_one_task(
    annotator: User, teammate: User
) -> None:
    make_flagged_annotations(4)
    ann, tom = ApiClient(annotator), ApiClient(teammate)
    first, other = claimed(ann), claimed(tom)
    assert first["code"] != other["code"]
    assert first["yours"] and first["holder"] == "ann" and first["lease_until"]
    # Asked again, claim answers the task held.
    assert claimed(ann)["code"] == first["code"]

    response = ann.post(
        decide_url(first["code"]),
        {"action": "correct", "expression": "surprise", "valence": 0.3, "arousal": 0.7},
    )
    assert response.status_code == 201, response.json()
    decided = response.json()
    assert decided["detail"].startswith("Saved your answer for")
    assert decided["decision"]["expression"] == "surprise"
    assert decided["decision"]["before"]["expression"] == first["panel"]["machine"]["expression"]
    # The AUs left out are the machine's, as the page's form starts with them.
    assert decided["decision"]["aus"] == {
        str(au["au"]): au["present"] for au in first["panel"]["machine"]["aus"]
    }
    assert ReviewTask.objects.get(code=first["code"]).status == ReviewTask.Status.DONE

    second = claimed(ann)
    assert second["code"] not in (first["code"], other["code"])
    response = ann.post(UNDO)
    assert response.status_code == 200, response.json()
    assert response.json()["undone"] == "decision"
    assert response.json()["task"]["code"] == first["code"]
    assert ReviewDecision.objects.get().undone_at is not None
    # The task claimed since went back to the queue, so the undone one is on screen.
    assert ReviewTask.objects.get(code=second["code"]).status == ReviewTask.Status.OPEN

    response = ann.post(skip_url(first["code"]))
    assert response.status_code == 200, response.json()
    assert ReviewTask.objects.get(code=first["code"]).status == ReviewTask.Status.OPEN
    after_skip = claimed(ann)
    assert after_skip["code"] not in (first["code"], other["code"])

    response = ann.post(UNDO)
    assert response.status_code == 200, response.json()
    assert (response.json()["undone"], response.json()["task"]["code"]) == ("skip", first["code"])
    assert ReviewTask.objects.get(code=after_skip["code"]).status == ReviewTask.Status.OPEN
    assert claimed(ann)["code"] == first["code"]
    assert claimed(tom)["code"] == other["code"]
    held = ReviewTask.objects.filter(status=ReviewTask.Status.CLAIMED)
    assert {(t.holder_id, str(t.code)) for t in held} == {
        (annotator.id, first["code"]),
        (teammate.id, other["code"]),
    }


def test_it_offers_a_skipped_task_again_only_when_asked(annotator: User) -> None:
    make_flagged_annotations(2)
    api = ApiClient(annotator)
    first = claimed(api)
    assert api.post(skip_url(first["code"])).status_code == 200
    # The memory of skips is the user's, not one client's: another token sees it.
    other_client = ApiClient(annotator)
    second = claimed(other_client)
    assert second["code"] != first["code"]
    assert first["code"] not in codes(other_client.get(TASKS, status="open"))
    assert api.post(skip_url(second["code"])).status_code == 200
    response = api.post(CLAIM)
    assert response.status_code == 404
    assert (
        response.json()["detail"]
        == "The queue is empty: nothing is left for you to review with these filters."
    )
    assert claimed(api, {"forget_skips": True})["code"] == first["code"]


def test_it_claims_under_the_queue_filters_and_releases(annotator: User) -> None:
    runs = [make_flagged_annotations(2, dataset_name=name)[0].run for name in ("one", "two")]
    api = ApiClient(annotator)
    task = claimed(api, {"run": str(runs[1].code)})
    assert task["run"] == str(runs[1].code)
    # Other filters: the task held that they leave out goes back first, as the page's start.
    again = claimed(api, {"run": str(runs[0].code)})
    assert again["run"] == str(runs[0].code)
    assert ReviewTask.objects.get(code=task["code"]).status == ReviewTask.Status.OPEN
    response = api.post(CLAIM, {"run": "00000000-0000-4000-8000-000000000000"})
    assert response.status_code == 404 and "no run" in response.json()["detail"]
    response = api.post(CLAIM, {"order": "random"})
    assert response.status_code == 422

    response = api.post(RELEASE, {"task": again["code"]})
    assert response.status_code == 200
    assert response.json()["released"] == [again["code"]]
    assert not ReviewTask.objects.filter(status=ReviewTask.Status.CLAIMED).exists()
    assert api.post(RELEASE).json() == {"detail": "You held no task to release.", "released": []}
    # A script may send no body at all where every field is optional.
    response = api.client.post(CLAIM, "", content_type="application/json", headers=api.headers)
    assert response.status_code == 200, response.json()


@pytest.mark.django_db(transaction=True)
def test_it_gives_simultaneous_claims_different_tasks(
    annotator: User, teammate: User, admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_postgresql()
    make_flagged_annotations(6)
    clients = [ApiClient(user) for user in (annotator, teammate, admin_user)]
    rendezvous(monkeypatch, services, "_take", parties=3)
    responses = run_together(*[lambda api=api: api.post(CLAIM) for api in clients])
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len({r.json()["code"] for r in responses}) == 3


# --- What a task shows -------------------------------------------------------------------


def audited_task() -> ReviewTask:
    """A flagged annotation also drawn for the audit, with its one (blind) task."""
    (annotation,) = make_flagged_annotations(1)
    ReviewTask.objects.all().delete()
    RunItem.objects.create(run=annotation.run, image=annotation.image, audit=True)
    task_create_for(Annotation.objects.select_related("run").get(id=annotation.id))
    task = ReviewTask.objects.get()
    assert task.audit
    return task


def test_it_shows_a_task_held_as_the_review_page_does(annotator: User) -> None:
    (annotation,) = make_flagged_annotations(1)
    task = claimed(ApiClient(annotator))
    assert task["blind"] is False and task["kind"] == "first"
    assert task["image"]["file_url"].endswith(f"/images/{annotation.image.code}/file")
    machine = task["panel"]["machine"]
    assert (machine["expression"], machine["valence"], machine["arousal"]) == (
        annotation.expression,
        annotation.valence,
        annotation.arousal,
    )
    assert machine["grains"]["expression"]["evidence"] == "brows raised"
    assert machine["grains"]["expression"]["reasons"] == annotation.flag_reasons
    assert {au["au"] for au in machine["aus"] if au["present"]} == {1, 2}
    assert task["panel"]["earlier_decisions"] == []
    assert task["machine"]["flag_reasons"] == annotation.flag_reasons


def test_it_shows_a_blind_audit_without_anything_the_machine_said(
    annotator: User, admin_user: User
) -> None:
    task = audited_task()
    annotation = task.annotation
    api = ApiClient(annotator)
    shown = claimed(api)
    assert shown["code"] == str(task.code) and shown["blind"] is True
    assert shown["machine"] is None
    panel = shown["panel"]
    assert (panel["machine"], panel["known_labels"], panel["earlier_decisions"]) == (
        None,
        None,
        None,
    )
    assert "fear" in panel["expressions"] and {"au": 1, "name": "inner brow raiser"} in panel["aus"]
    for answer in (api.get(f"{TASKS}/{task.code}"), api.get(TASKS)):
        text = answer.content.decode()
        for machine_said in (
            annotation.flag_reasons[0],
            annotation.evidence["expression"],
            "confidence",
            "votes",
        ):
            assert machine_said not in text

    before = state()
    refused = api.post(decide_url(str(task.code)), {"action": "accept"})
    assert refused.status_code == 422 and "blind" in refused.json()["detail"]
    # The page's blind form starts empty: nothing is filled in from the machine.
    refused = api.post(decide_url(str(task.code)), {"action": "correct", "expression": "fear"})
    assert (
        refused.status_code == 422 and "set valence and arousal" in refused.json()["detail"].lower()
    )
    assert state() == before

    labels = {"action": "correct", "expression": "fear", "valence": -0.5, "arousal": 0.6}
    response = api.post(decide_url(str(task.code)), labels | {"aus": [1]})
    assert response.status_code == 201, response.json()
    assert response.json()["decision"]["blind"] is True
    assert response.json()["decision"]["before"] is None
    assert api.get(DECISIONS).json()["results"][0]["before"] is None
    by_admin = ApiClient(admin_user).get(DECISIONS).json()["results"][0]
    assert by_admin["before"]["expression"] == annotation.expression


def test_it_makes_a_gold_question_look_like_any_first_review(
    annotator: User, admin_user: User, settings: Any
) -> None:
    annotations = make_flagged_annotations(3)
    gold_question_set(
        image=annotations[2].image,
        expression="fear",
        valence=-0.2,
        arousal=0.7,
        aus={1: True},
        user=admin_user,
    )
    api = ApiClient(annotator)
    ordinary = claimed(api)
    assert api.post(skip_url(ordinary["code"])).status_code == 200
    settings.GOLD_RATE = 1.0
    gold = claimed(api)
    assert ReviewTask.objects.get(code=gold["code"]).kind == ReviewTask.Kind.GOLD
    assert gold["kind"] == "first"
    assert _shape(gold) == _shape(ordinary)
    assert api.get(f"{TASKS}/{gold['code']}").json()["kind"] == "first"
    assert gold["code"] in codes(api.get(TASKS, kind="first"))
    assert codes(api.get(TASKS, kind="gold")) == []

    response = api.post(decide_url(gold["code"]), {"action": "accept"})
    assert response.status_code == 201, response.json()
    assert response.json()["decision"]["kind"] == "first"
    assert api.get(DECISIONS).json()["results"][0]["kind"] == "first"
    admin = ApiClient(admin_user)
    assert admin.get(DECISIONS).json()["results"][0]["kind"] == "gold"
    assert codes(admin.get(TASKS, kind="gold")) == [gold["code"]]


def _shape(value: Any) -> Any:
    """The keys of a JSON value, all the way down (values left out)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__ if value is not None else None


# --- Refusals --------------------------------------------------------------------------

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "valence out of range": (
        {"action": "correct", "valence": 2, "arousal": 0},
        "valence 2.0 is outside [-1, 1]",
    ),
    "valence without arousal": (
        {"action": "correct", "valence": 0.3, "arousal": None},
        "valence and arousal must be given together",
    ),
    "AU outside the vocabulary": ({"action": "correct", "aus": [11]}, "unknown AUs: AU11"),
    "AU intensity outside A-E": (
        {"action": "correct", "aus": [12], "au_intensity": {"12": "Z"}},
        "AU intensity must be A-E",
    ),
    "expression outside the vocabulary": (
        {"action": "correct", "expression": "joy", "valence": 0.5, "arousal": 0.5},
        "expression 'joy' is not in the vocabulary",
    ),
    "a new expression with the machine's VA unconfirmed": (
        {"action": "correct", "expression": "anger"},
        "valence and arousal are still the machine's",
    ),
    "reject without a reason": ({"action": "reject_image"}, "say why the image is rejected"),
    "unknown action": ({"action": "delete"}, "unknown action 'delete'"),
    "negative time spent": ({"action": "accept", "time_spent_ms": -5}, "time spent"),
    "valence that is no number": (
        {"action": "correct", "valence": "high", "arousal": 0},
        "valence: ",
    ),
    "a field the form does not have": ({"action": "accept", "valance": 0.2}, "valance"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_it_refuses_what_the_page_refuses_and_writes_nothing(case: str, annotator: User) -> None:
    make_flagged_annotations(1)
    api = ApiClient(annotator)
    task = claimed(api)
    before = state()
    body, message = BAD_VALUES[case]
    response = api.post(decide_url(task["code"]), body)
    assert response.status_code == 422, response.json()
    assert message.lower() in response.json()["detail"].lower(), response.json()
    assert state() == before


def test_it_takes_the_machines_va_with_a_new_expression_once_confirmed(annotator: User) -> None:
    (annotation,) = make_flagged_annotations(1)
    api = ApiClient(annotator)
    task = claimed(api)
    body = {"action": "correct", "expression": "anger", "va_confirmed": True}
    response = api.post(decide_url(task["code"]), body)
    assert response.status_code == 201, response.json()
    decision = ReviewDecision.objects.get()
    assert (decision.expression, decision.valence, decision.arousal) == (
        "anger",
        annotation.valence,
        annotation.arousal,
    )


def test_it_records_a_correction_that_changes_nothing_as_an_accept(annotator: User) -> None:
    make_flagged_annotations(1)
    api = ApiClient(annotator)
    task = claimed(api)
    response = api.post(decide_url(task["code"]), {"action": "correct"})
    assert response.status_code == 201, response.json()
    assert response.json()["detail"].startswith("Nothing was changed")
    assert response.json()["decision"]["action"] == "accept"


Act = Callable[[ApiClient, ApiClient, str], Any]


def _nothing(ann: ApiClient, tom: ApiClient, code: str) -> None:
    return None


def _decide(ann: ApiClient, tom: ApiClient, code: str) -> Any:
    return ann.post(decide_url(code), {"action": "accept"})


def _expire(ann: ApiClient, tom: ApiClient, code: str) -> None:
    ReviewTask.objects.filter(code=code).update(lease_until=timezone.now() - timedelta(minutes=1))


# case: (what happened before, the request refused, its message)
CONFLICTS: dict[str, tuple[Act, Act, str]] = {
    "a teammate's task": (
        _nothing,
        lambda ann, tom, code: tom.post(decide_url(code), {"action": "accept"}),
        "This task is not yours",
    ),
    "a task decided already": (_decide, _decide, "already been decided"),
    "an expired hold": (_expire, _decide, "expired"),
    "a skip of a teammate's task": (
        _nothing,
        lambda ann, tom, code: tom.post(skip_url(code)),
        "This task is not yours",
    ),
    "undo with nothing to undo": (
        _nothing,
        lambda ann, tom, code: tom.post(UNDO),
        "Nothing to undo: no decision or skip of yours is recent enough.",
    ),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_it_answers_409_with_the_services_message_and_writes_nothing(
    case: str, annotator: User, teammate: User
) -> None:
    make_flagged_annotations(2)
    ann, tom = ApiClient(annotator), ApiClient(teammate)
    code = claimed(ann)["code"]
    prepare, act, message = CONFLICTS[case]
    prepare(ann, tom, code)
    before = state()
    response = act(ann, tom, code)
    assert response.status_code == 409, response.json()
    assert message in response.json()["detail"]
    assert state() == before


def test_it_answers_404_for_a_task_that_does_not_exist(annotator: User) -> None:
    response = ApiClient(annotator).post(
        decide_url("00000000-0000-4000-8000-000000000000"), {"action": "accept"}
    )
    assert response.status_code == 404 and response.json()["detail"]


# --- Lists -----------------------------------------------------------------------------


def test_it_lists_for_an_annotator_the_queue_and_their_own_tasks_and_everything_for_admins(
    annotator: User, teammate: User, admin_user: User
) -> None:
    make_flagged_annotations(4)
    ann, tom, admin = ApiClient(annotator), ApiClient(teammate), ApiClient(admin_user)
    mine, theirs = claimed(ann), claimed(tom)
    assert ann.post(decide_url(mine["code"]), {"action": "accept"}).status_code == 201
    adjudication = ReviewTask.objects.create(
        annotation=Annotation.objects.get(review_tasks__code=mine["code"]),
        kind=ReviewTask.Kind.ADJUDICATION,
        priority=0.5,
    )

    seen = codes(ann.get(TASKS))
    waiting = task_codes(status=ReviewTask.Status.OPEN, kind=ReviewTask.Kind.FIRST)
    assert set(seen) == {mine["code"], *waiting}
    assert theirs["code"] not in seen and str(adjudication.code) not in seen
    assert ann.get(f"{TASKS}/{theirs['code']}").status_code == 404
    assert ann.get(f"{TASKS}/{mine['code']}").json()["status"] == "done"
    assert codes(ann.get(TASKS, status="done")) == [mine["code"]]

    everything = codes(admin.get(TASKS))
    assert set(everything) == set(task_codes())
    assert admin.get(f"{TASKS}/{theirs['code']}").json()["holder"] == "tom"
    assert codes(admin.get(TASKS, kind="adjudication")) == [str(adjudication.code)]


def task_codes(**filters: Any) -> list[str]:
    return [
        str(code) for code in ReviewTask.objects.filter(**filters).values_list("code", flat=True)
    ]


def test_it_lists_an_annotators_own_decisions_and_everyones_for_admins(
    annotator: User, teammate: User, admin_user: User
) -> None:
    annotations = make_flagged_annotations(3)
    other_run = make_flagged_annotations(1, dataset_name="other")
    mine = record_decision(annotations[0], annotator)
    theirs = record_decision(annotations[1], teammate)
    later = record_decision(other_run[0], annotator)
    ann, admin = ApiClient(annotator), ApiClient(admin_user)

    assert codes(ann.get(DECISIONS)) == [str(later.code), str(mine.code)]
    refused = ann.get(DECISIONS, reviewer="tom")
    assert refused.status_code == 403 and "admins" in refused.json()["detail"]
    assert codes(admin.get(DECISIONS)) == [str(later.code), str(theirs.code), str(mine.code)]
    assert codes(admin.get(DECISIONS, reviewer="tom")) == [str(theirs.code)]
    assert admin.get(DECISIONS, reviewer="nobody").status_code == 404
    run = str(annotations[0].run.code)
    assert codes(admin.get(DECISIONS, run=run)) == [str(theirs.code), str(mine.code)]
    ReviewDecision.objects.filter(id=later.id).update(created_at=timezone.now() + timedelta(days=1))
    since = (timezone.now() + timedelta(hours=1)).isoformat()
    assert codes(ann.get(DECISIONS, since=since)) == [str(later.code)]


def test_it_pages_with_a_cursor(admin_user: User) -> None:
    make_flagged_annotations(5)
    api = ApiClient(admin_user)
    page = api.get(TASKS, page_size=2).json()
    seen = [row["code"] for row in page["results"]]
    while page["next"]:
        page = api.client.get(page["next"], headers=api.headers).json()
        seen += [row["code"] for row in page["results"]]
    assert seen == task_codes()


def queries(call: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = call()
    assert response.status_code == 200, response.content[:300]
    assert response.json()["results"]
    return len(captured.captured_queries)


def test_it_lists_in_queries_independent_of_the_data(
    annotator: User, teammate: User, admin_user: User
) -> None:
    def grow(n: int, name: str) -> None:
        for annotation in make_flagged_annotations(n, dataset_name=name)[: n // 2]:
            record_decision(annotation, annotator)
        claimed(ApiClient(teammate))

    grow(4, "small")
    ann, admin = ApiClient(annotator), ApiClient(admin_user)
    calls = {
        "annotator's tasks": lambda: ann.get(TASKS),
        "admin's tasks": lambda: admin.get(TASKS, status="open"),
        "annotator's decisions": lambda: ann.get(DECISIONS),
        "admin's decisions": lambda: admin.get(DECISIONS),
    }
    # A token's first use notes when it was used: one more query, once.
    for call in calls.values():
        call()
    small = {name: queries(call) for name, call in calls.items()}
    grow(40, "large")
    large = {name: queries(call) for name, call in calls.items()}
    assert large == small
    assert max(small.values()) <= 4, small
