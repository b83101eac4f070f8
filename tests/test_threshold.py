"""A run's review threshold as an operation: tasks opened and closed, history, counters."""

from __future__ import annotations

from dataclasses import replace

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.models import ReviewTask
from review.tasks.services import task_create_for
from seke_app.engine.types import AnnotationRequest
from seke_app.engine.uamc import FlagReason, UAMCParams, run_uamc
from seke_app.models import Annotation, GenerationRun
from seke_app.models.runs import ThresholdChange, confident
from seke_app.runs.prompts import prompt_version_active
from seke_app.runs.services import ImageFilter, annotation_fields, select_images
from seke_app.runs.threshold import ThresholdRefused, run_threshold_set
from tests.conftest import client_for
from tests.factories import scripted_images
from tests.test_uamc import VOCAB, ScriptedBackend, answer

pytestmark = pytest.mark.django_db


def scored_run(confidences: list[float], held: tuple[int, ...] = ()) -> GenerationRun:
    """A completed run at threshold 0.7, one annotation per confidence, tasks opened."""
    images = scripted_images(len(confidences), "thresholds")
    run = GenerationRun.objects.create(
        dataset=images[0].dataset,
        backend="offline",
        model_name="test",
        prompt_version=prompt_version_active(),
        status=GenerationRun.Status.COMPLETED,
        review_threshold=0.7,
    )
    for i, (image, value) in enumerate(zip(images, confidences, strict=True)):
        annotation = Annotation.objects.create(
            run=run,
            image=image,
            prompt_version=run.prompt_version,
            expression="happiness",
            confidence=value,
            flagged=value < 0.7 or i in held,
            held=i in held,
        )
        task_create_for(annotation)
    return run


def live(run: GenerationRun) -> set[float]:
    tasks = ReviewTask.objects.filter(annotation__run=run, status__in=["open", "claimed"])
    return set(tasks.values_list("annotation__confidence", flat=True))


def test_it_opens_and_closes_the_right_tasks(admin_user: User) -> None:
    run = scored_run([0.3, 0.5, 0.8, 0.9], held=(3,))
    assert live(run) == {0.3, 0.5, 0.9}
    change = run_threshold_set(run=run, threshold=0.4, user=admin_user)
    # 0.5 became confident: its task is closed with the reason; the held 0.9 stays.
    assert live(run) == {0.3, 0.9}
    closed = ReviewTask.objects.get(annotation__confidence=0.5)
    assert closed.status == "closed" and "0.400" in closed.closed_reason
    assert (change.n_opened, change.n_closed, change.changed_by) == (0, 1, admin_user)
    run_threshold_set(run=run, threshold=0.85, user=admin_user)
    assert live(run) == {0.3, 0.5, 0.8, 0.9}
    run.refresh_from_db()
    assert (run.n_accepted, run.n_flagged, run.params["review_threshold"]) == (0, 4, 0.85)
    assert list(run.threshold_changes.values_list("new", flat=True)) == [0.85, 0.4]


def test_it_makes_curation_selection_and_counters_agree_with_the_threshold() -> None:
    run = scored_run([0.3, 0.5, 0.8])
    run_threshold_set(run=run, threshold=0.9)
    assert not Annotation.objects.filter(confident()).exists()
    unconfident = select_images(run.dataset, ImageFilter(only_unconfident=True))
    assert unconfident.count() == 3
    run_threshold_set(run=run, threshold=0.2)
    assert Annotation.objects.filter(confident()).count() == 3
    assert not select_images(run.dataset, ImageFilter(only_unconfident=True)).exists()
    run.refresh_from_db()
    assert (run.n_accepted, run.n_flagged) == (3, 0)


def test_it_refuses_while_the_run_is_at_work_and_changes_nothing() -> None:
    run = scored_run([0.3, 0.8])
    GenerationRun.objects.filter(id=run.id).update(status=GenerationRun.Status.RUNNING)
    with pytest.raises(ThresholdRefused, match="still at work"):
        run_threshold_set(run=run, threshold=0.2)
    with pytest.raises(ThresholdRefused, match="between 0 and 1"):
        run_threshold_set(run=run, threshold=1.5)
    run.refresh_from_db()
    assert run.review_threshold == 0.7 and not ThresholdChange.objects.exists()
    assert live(run) == {0.3}


def test_it_holds_an_annotation_by_the_kind_of_its_reasons_not_their_words() -> None:
    split = run_uamc(
        ScriptedBackend([answer("fear"), answer("surprise"), answer("fear")]),
        AnnotationRequest(b"face", VOCAB),
        UAMCParams(kmax=3),
    )
    assert split.flagged and annotation_fields(split)["held"] is False
    revised = run_uamc(
        ScriptedBackend(
            [answer("surprise")] * 3,
            verdict={"expression": "revise", "va": "confirm", "aus": "confirm"},
            revision=answer("fear"),
        ),
        AnnotationRequest(b"face", VOCAB),
        UAMCParams(),
    )
    fields = annotation_fields(revised)
    assert fields["held"] is True
    assert "verification revised the expression from surprise to fear" in fields["flag_reasons"]
    # Words that read like a held reason do not hold a threshold reason, nor the reverse.
    reworded = replace(
        split,
        reasons=[
            FlagReason("low_confidence", "verification revised the expression", "expression"),
            FlagReason("knowledge", "knowledge: contradicts everything"),
        ],
    )
    assert annotation_fields(reworded)["held"] is False
    firm = replace(split, reasons=[FlagReason("revised", "expression confidence 0.41 under 0.70")])
    assert annotation_fields(firm)["held"] is True


@pytest.mark.parametrize("who", ["annotator", "outsider", None])
def test_it_lets_only_admins_set_the_threshold_by_hand(
    who: str | None, request: pytest.FixtureRequest
) -> None:
    run = scored_run([0.3, 0.8])
    user = request.getfixturevalue(who) if who else None
    client_for(user).post(reverse("run_threshold", args=[run.code]), {"threshold": "0.9"})
    run.refresh_from_db()
    assert run.review_threshold == 0.7


def test_it_sets_the_threshold_by_hand_and_refuses_bad_input(admin_user: User) -> None:
    run = scored_run([0.3, 0.8])
    client = client_for(admin_user)
    url = reverse("run_threshold", args=[run.code])
    page = client.post(url, {"threshold": "nan"}, follow=True).content.decode()
    assert "Not changed" in page
    page = client.post(url, {"threshold": "0.9"}, follow=True).content.decode()
    assert "1 review task opened" in page
    run.refresh_from_db()
    assert run.review_threshold == 0.9 and live(run) == {0.3, 0.8}
