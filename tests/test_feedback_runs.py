"""The feedback loop through real runs: the new version reaches the model; re-annotation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from review.feedback.services import gold_check_create, prompt_version_create
from review.models import GoldCheck
from review.tasks.services import Decision, decision_record, task_claim_next
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, FaceImage
from seke_app.queue import get_queue
from seke_app.runs.prompts import prompt_version_active
from seke_app.runs.services import ImageFilter, run_create
from tests.factories import make_dataset
from tests.fake_openai import FakeOpenAI
from tests.workers import work_in_process

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _queues() -> Any:
    for name in ("generation", "default"):
        get_queue(name).empty()
    yield


def work(queue: str = "generation") -> None:
    work_in_process(queue)


def test_it_sends_the_new_versions_exemplars_and_notes_to_the_model(
    tmp_path: Path, settings: Any, admin_user: User
) -> None:
    dataset = make_dataset(tmp_path, n=2)
    parent = prompt_version_active()
    version = prompt_version_create(
        parent=parent,
        name="learned",
        knowledge_text=parent.knowledge_text,
        rule_notes="Lessons from expert review:\n- fear answered as surprise in 14 of 40"
        " corrections; check AU4 and AU20 before answering surprise.",
        exemplars=[
            {
                "expression": "fear",
                "machine_expression": "surprise",
                "aus": [1, 2, 4, 5, 20],
                "note": "brows drawn together",
            }
        ],
        calibration={},
        user=admin_user,
    )
    with FakeOpenAI() as server:
        settings.OPENAI_API_KEY = "sk-test"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_RPM = settings.OPENAI_TPM = 0
        run_create(
            dataset=dataset,
            backend="openai",
            model_name="gpt-4o",
            prompt_version=version,
            params=UAMCParams(strategy="single"),
        )
        work()
        bodies = [json.dumps(r.body) for r in server.requests]
    assert bodies and all("check AU4 and AU20 before answering surprise" in b for b in bodies)
    assert all("brows drawn together" in b for b in bodies)


def test_it_re_annotates_only_what_is_unreviewed_and_unsure(
    tmp_path: Path, annotator: User
) -> None:
    dataset = make_dataset(tmp_path, n=6)
    first = run_create(
        dataset=dataset,
        backend="offline",
        params=UAMCParams(review_threshold=1.0),
        audit_share=0.0,
    )
    work()
    # Every image was flagged; the annotator decides two of them.
    decided = []
    for _ in range(2):
        task = task_claim_next(user=annotator)
        assert task is not None
        decision_record(task=task, user=annotator, decision=Decision(action="accept"))
        decided.append(task.annotation.image_id)
    second = run_create(
        dataset=dataset,
        backend="offline",
        params=UAMCParams(),
        image_filter=ImageFilter(only_unconfident=True),
    )
    work()
    touched = set(Annotation.objects.filter(run=second).values_list("image_id", flat=True))
    assert second.n_total == 4 and len(touched) == 4
    assert not touched & set(decided)
    assert Annotation.objects.filter(run=first).count() == 6


def test_it_runs_the_gold_check_for_a_version_and_its_parent(
    tmp_path: Path, annotator: User, admin_user: User
) -> None:
    dataset = make_dataset(tmp_path, n=4)
    run_create(dataset=dataset, backend="offline", params=UAMCParams(review_threshold=1.0))
    work()
    while (task := task_claim_next(user=annotator)) is not None:
        decision_record(
            task=task,
            user=annotator,
            decision=Decision(action="correct", expression="happiness", valence=0.6, arousal=0.2),
        )
    parent = prompt_version_active()
    version = prompt_version_create(
        parent=parent,
        name="child",
        knowledge_text=parent.knowledge_text,
        rule_notes="",
        exemplars=[{"expression": "happiness", "image_ref": str(FaceImage.objects.first().code)}],
        calibration={"class_log_prior": {"happiness": 2.0}, "temperature": 1.0},
        user=admin_user,
    )
    check = gold_check_create(
        version=version, backend="offline", model_name="", include_imported=False, user=admin_user
    )
    # The exemplar's own image is not in the gold set.
    assert check.n_images == 3
    work("default")
    check.refresh_from_db()
    assert check.status == GoldCheck.Status.DONE, check.error
    for side in ("parent", "version"):
        assert check.report[side]["n"] == 3
        assert 0 <= check.report[side]["expression_accuracy"] <= 1
    assert isinstance(check.report["worse"], list)
    # The report says what was left out, and that nothing it learned from went unrecorded.
    assert check.report["left_out"] == 1 and check.report["unrecorded"] == []
