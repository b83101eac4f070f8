"""Prompt versions through the API: read only, with status, parent and what each learned from."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from review.feedback.services import prompt_version_create, prompt_version_promote
from review.models import GoldCheck
from seke_app.models import PromptVersion
from seke_app.runs.prompts import prompt_version_active
from tests.api_client import ApiClient
from tests.factories import make_flagged_annotations, record_decision

pytestmark = pytest.mark.django_db

VERSIONS = "/api/v1/prompt-versions"


def child(parent: PromptVersion, user: User, **fields: Any) -> PromptVersion:
    values: dict[str, Any] = {
        "name": "child",
        "knowledge_text": "k",
        "rule_notes": "",
        "exemplars": [],
        "calibration": {},
    } | fields
    return prompt_version_create(parent=parent, user=user, **values)


def test_the_list_starts_with_the_built_in_knowledge_as_the_page_does(admin_user: User) -> None:
    assert not PromptVersion.objects.exists()
    body = ApiClient(admin_user).get(VERSIONS).json()
    version = PromptVersion.objects.get()
    assert [v["code"] for v in body["results"]] == [str(version.code)]
    listed = body["results"][0]
    assert listed["status"] == "active" and listed["number"] == 1
    assert listed["parent"] is None and listed["created_by"] is None
    assert "knowledge_text" not in listed


def test_it_shows_a_candidate_with_its_knowledge_parent_and_what_it_learned_from(
    admin_user: User, annotator: User
) -> None:
    annotations = make_flagged_annotations(3, dataset_name="taught")
    decisions = [
        record_decision(a, annotator, "correct", expression="anger", valence=-0.5, arousal=0.7)
        for a in annotations[:2]
    ]
    parent = prompt_version_active()
    exemplar = {"image_ref": str(annotations[2].image.code), "expression": "fear"}
    version = child(
        parent,
        admin_user,
        name="learned",
        knowledge_text="Brows together mean anger.",
        rule_notes="- check AU4",
        exemplars=[exemplar],
        calibration={"temperature": 1.2},
        runs=[annotations[0].run],
    )
    body = ApiClient(admin_user).get(f"{VERSIONS}/{version.code}").json()
    assert body["status"] == "candidate" and body["name"] == "learned"
    assert (body["parent"], body["parent_number"]) == (str(parent.code), 1)
    assert body["knowledge_text"] == "Brows together mean anger."
    assert body["rule_notes"] == "- check AU4" and body["exemplars"] == [exemplar]
    assert body["calibration"] == {"temperature": 1.2} and body["n_exemplars"] == 1
    assert body["created_by"] == admin_user.username
    assert body["learned_from"] == {
        "recorded": True,
        "n_decisions": 2,
        "decisions": sorted(d.id for d in decisions),
        # The two decided images and the exemplar's.
        "n_images": 3,
        "unrecorded_lineage": [],
    }
    assert body["gold_checks"] == []


def test_a_promoted_version_is_active_and_the_one_before_it_retired(admin_user: User) -> None:
    parent = prompt_version_active()
    version = child(parent, admin_user)
    GoldCheck.objects.create(
        version=version,
        parent=parent,
        backend="offline",
        model_name="m",
        status="done",
        n_total=8,
        report={"worse": ["expression accuracy 0.600 < 0.700"]},
    )
    prompt_version_promote(version=version, user=admin_user, override_reason="gold set is small")
    api = ApiClient(admin_user)
    statuses = {v["number"]: v["status"] for v in api.get(VERSIONS).json()["results"]}
    assert statuses == {2: "active", 1: "retired"}
    body = api.get(f"{VERSIONS}/{version.code}").json()
    (check,) = body["gold_checks"]
    assert check["status"] == "done" and check["parent"] == str(parent.code)
    assert check["n_images"] == 4 and check["override_reason"] == "gold set is small"
    assert check["promoted_at"] is not None
    assert check["report"]["worse"] == ["expression accuracy 0.600 < 0.700"]


def test_it_says_when_what_a_version_learned_from_was_not_recorded(admin_user: User) -> None:
    old = child(prompt_version_active(), admin_user, name="old")
    PromptVersion.objects.filter(id=old.id).update(learned_from_decisions=None)
    newer = child(old, admin_user, name="newer")
    api = ApiClient(admin_user)
    learned = api.get(f"{VERSIONS}/{old.code}").json()["learned_from"]
    assert learned["recorded"] is False and learned["n_decisions"] is None
    assert learned["decisions"] is None and learned["unrecorded_lineage"] == [2]
    # Its child learned from no decision, but carries what its parent learned.
    learned = api.get(f"{VERSIONS}/{newer.code}").json()["learned_from"]
    assert learned["recorded"] is True and learned["unrecorded_lineage"] == [2]


def test_it_answers_404_for_a_version_that_does_not_exist(admin_user: User) -> None:
    response = ApiClient(admin_user).get(f"{VERSIONS}/7d3f3c55-0f55-4f5e-9d43-7e0f2b1f0a9c")
    assert response.status_code == 404 and response.json()["detail"]


def test_the_queries_per_list_page_do_not_grow_with_the_versions(admin_user: User) -> None:
    api = ApiClient(admin_user)
    api.get("/api/v1/me")
    version = prompt_version_active()

    def queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            body = api.get(VERSIONS).json()
        return len(captured), len(body["results"])

    few = queries()
    for i in range(6):
        version = child(version, admin_user, name=f"v{i}")
    many = queries()
    assert (few[1], many[1]) == (1, 7) and few[0] == many[0]
