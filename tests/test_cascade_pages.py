"""A cascade run's figures per stage on the run page, its dashboard and the comparison.

Scripted annotations on images whose dataset label is "happiness" (a reference the
model was not given): the cheap model's answer is right on three of the four
images it kept and wrong on both it escalated; the strong model is right on both.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from review.tasks.services import task_claim_next, task_create_for
from seke_app.engine.calibration import CalibrationMap
from seke_app.insights.cascade import cascade_figures
from seke_app.insights.certificates import calibrated_confidence, calibration_current
from seke_app.models import Annotation, CalibrationFit, FaceImage, GenerationRun, RunCertificate
from seke_app.runs.prompts import prompt_version_active
from seke_app.webhooks.events import run_finished
from seke_app.webhooks.services import webhook_create
from tests.api_client import ApiClient
from tests.conftest import client_for
from tests.factories import scripted_images

pytestmark = pytest.mark.django_db


def scripted_cascade(images: list[FaceImage], strong_model: str = "gpt-4o") -> GenerationRun:
    version = prompt_version_active()
    run = GenerationRun.objects.create(
        dataset=images[0].dataset,
        backend="openai",
        model_name="gpt-4o-mini",
        strong_model=strong_model,
        prompt_version=version,
        status=GenerationRun.Status.COMPLETED,
        n_total=6,
        n_done=6,
        n_accepted=6,
        n_escalated=2,
        requests=20,
        strong_requests=8,
        cost_usd=Decimal("0.0100"),
        strong_cost_usd=Decimal("0.0080"),
    )
    # The cheap model keeps all but the last two, and is wrong on the last it keeps.
    kept = ["happiness"] * (len(images) - 3) + ["sadness"]

    def annotation(image: FaceImage, expression: str, **more: Any) -> Annotation:
        return Annotation(
            run=run,
            image=image,
            prompt_version=version,
            expression=expression,
            confidence=0.9,
            expression_confidence=0.9,
            va_confidence=0.9,
            au_confidence=0.9,
            **more,
        )

    rows = [
        annotation(image, expression, stage="cheap", cheap_confidence=0.9)
        for image, expression in zip(images[:-2], kept, strict=True)
    ]
    rows += [
        annotation(
            image,
            "happiness",
            stage="strong",
            cheap_confidence=0.3,
            cheap_result={"expression": "anger", "confidence": 0.3, "held": False},
        )
        for image in images[-2:]
    ]
    Annotation.objects.bulk_create(rows)
    return run


@pytest.fixture
def images() -> list[FaceImage]:
    return scripted_images(6, known_expression="happiness")


def test_it_scores_each_stage_against_the_references(images: list[FaceImage]) -> None:
    figures = cascade_figures(run=scripted_cascade(images))
    assert figures is not None
    assert (figures.n_escalated, figures.n_images) == (2, 6)
    cheap, strong, combined = figures.stages
    # The cheap model on every image: its kept answers and the two it was replaced on.
    assert (cheap.n_images, cheap.expression) == (6, (6, 0.5))
    assert (strong.n_images, strong.expression) == (2, (2, 1.0))
    assert combined.expression == (6, pytest.approx(5 / 6))
    assert (cheap.requests, cheap.cost_usd) == (12, Decimal("0.0020"))
    assert (strong.requests, strong.cost_usd) == (8, Decimal("0.0080"))
    assert all(s.priced for s in figures.stages)


def test_the_figures_take_as_many_queries_whatever_the_size(images: list[FaceImage]) -> None:
    def queries(run: GenerationRun) -> int:
        with CaptureQueriesContext(connection) as captured:
            cascade_figures(run=run)
        return len(captured)

    small = scripted_cascade(images)
    large = scripted_cascade(scripted_images(30, name="large", known_expression="happiness"))
    assert queries(small) == queries(large)


def test_a_run_of_one_model_has_no_stages(images: list[FaceImage]) -> None:
    assert cascade_figures(run=scripted_cascade(images, strong_model="")) is None


def stages_table(page: str, suffix: str = "") -> str:
    found = re.search(rf'<table class="data" id="cascade-stages{suffix}">(.*?)</table>', page, re.S)
    assert found, page
    return re.sub(r"\s+", " ", found.group(1))


def test_the_run_page_shows_the_share_escalated_and_each_stages_cost_and_accuracy(
    images: list[FaceImage], admin_user: User
) -> None:
    run = scripted_cascade(images)
    page = client_for(admin_user).get(reverse("run_detail", args=[run.code])).content.decode()
    assert re.search(r'id="n-escalated">2 / 6<', page)
    assert 'id="cost-unpriced"' not in page
    assert "gpt-4o-mini $0.0020 · gpt-4o $0.0080" in page
    assert "Escalated: <strong>2 / 6</strong> images (33.3%)" in page
    table = stages_table(page)
    assert "<th>Cheap model, every image</th><td>gpt-4o-mini</td><td>6</td><td>12</td>" in table
    assert '50.0% <span class="muted">of 6 references</span>' in table
    assert '100.0% <span class="muted">of 2 references</span>' in table
    assert '83.3% <span class="muted">of 6 references</span>' in table


def test_the_dashboard_shows_the_stages(images: list[FaceImage], admin_user: User) -> None:
    run = scripted_cascade(images)
    page = client_for(admin_user).get(reverse("run_dashboard", args=[run.code])).content.decode()
    table = stages_table(page)
    assert "<th>Strong model, escalated images</th><td>gpt-4o</td><td>2</td><td>8</td>" in table
    assert "$0.0080" in table


def test_a_model_without_a_price_is_shown_as_unpriced_not_free(
    images: list[FaceImage], admin_user: User
) -> None:
    run = scripted_cascade(images, strong_model="local-llava")
    GenerationRun.objects.filter(id=run.id).update(
        strong_cost_usd=0, cost_usd=Decimal("0.0020"), priced=False
    )
    page = client_for(admin_user).get(reverse("run_detail", args=[run.code])).content.decode()
    table = stages_table(page)
    strong = re.search(r"<th>Strong model, escalated images</th>(.*?)</tr>", table)
    assert strong and "price unknown" in strong.group(1) and "$0.0000" not in strong.group(1)
    combined = re.search(r"<th>Combined: the annotations as stored</th>(.*?)</tr>", table)
    assert combined and "price unknown" in combined.group(1)
    assert "gpt-4o-mini $0.0020 · local-llava price unknown" in page
    cost = re.search(r'<dd id="run-cost">(.*?)</dd>', page)
    assert cost and ">unknown<" in cost.group(1)
    assert "local-llava: not in the price table" in cost.group(1)


def test_the_comparison_shows_the_stages_of_a_cascade_side(
    images: list[FaceImage], admin_user: User
) -> None:
    cascade = scripted_cascade(images)
    single = scripted_cascade(scripted_images(6, name="other"), strong_model="")
    response = client_for(admin_user).get(reverse("compare"), {"a": single.code, "b": cascade.code})
    page = response.content.decode()
    assert "B: cascade: gpt-4o-mini → gpt-4o" in page
    assert 'id="cascade-stages-a"' not in page
    assert "83.3%" in stages_table(page, "-b")


def test_a_cascade_has_a_recalibration_of_its_own(images: list[FaceImage]) -> None:
    # Its confidences are partly the strong model's: a map fitted on runs of its
    # cheap model alone is not its map, nor is its map theirs.
    cascade = scripted_cascade(images)
    single = scripted_cascade(scripted_images(6, name="other"), strong_model="")
    halve = CalibrationMap("platt", {"a": 1.0, "b": -3.0}, 50, "test", {}).to_json()
    for run in (single, cascade):
        assert calibration_current(run) is None
    fit = CalibrationFit.objects.create(
        model_name="gpt-4o-mini", prompt_version=single.prompt_version, calibration=halve
    )
    assert calibration_current(single) == fit and calibration_current(cascade) is None
    annotation = Annotation.objects.filter(run=cascade).select_related("run").first()
    assert annotation is not None
    assert calibrated_confidence(annotation) == annotation.confidence
    own = CalibrationFit.objects.create(
        model_name="gpt-4o-mini",
        strong_model="gpt-4o",
        prompt_version=cascade.prompt_version,
        calibration=halve,
    )
    assert calibration_current(cascade) == own and calibration_current(single) == fit
    assert calibrated_confidence(annotation) != annotation.confidence


def test_a_cascades_certificate_names_both_models(images: list[FaceImage]) -> None:
    run = scripted_cascade(images)
    certificate = RunCertificate.objects.create(
        run=run,
        model_name=run.model_name,
        strong_model=run.strong_model,
        prompt_version=run.prompt_version,
        grains=["expression"],
        alpha=0.1,
        delta=0.1,
        threshold=0.8,
        upper_bound=0.05,
        method="Learn-then-Test",
    )
    assert "for gpt-4o-mini escalating to gpt-4o, prompt v" in certificate.sentence()


def test_the_reviewer_sees_which_model_answered(images: list[FaceImage], annotator: User) -> None:
    run = scripted_cascade(images)
    escalated = Annotation.objects.filter(run=run, stage="strong").select_related("run").first()
    assert escalated is not None
    Annotation.objects.filter(id=escalated.id).update(confidence=0.2)
    escalated.refresh_from_db()
    assert task_create_for(escalated)
    task = task_claim_next(user=annotator)
    assert task is not None and task.annotation_id == escalated.id
    page = client_for(annotator).get(reverse("review:task", args=[task.code])).content.decode()
    assert '<span id="answered-by">gpt-4o (escalated from gpt-4o-mini)</span>' in page
    claimed = ApiClient(annotator).post("/api/v1/review/claim").json()
    assert claimed["panel"]["machine"]["model_name"] == "gpt-4o"


def test_the_run_finished_webhook_tells_the_stages(images: list[FaceImage]) -> None:
    webhook_create(url="http://127.0.0.1:9/hook", events=["run.finished"])
    run = scripted_cascade(images)
    run.refresh_from_db()
    event = run_finished(run)
    assert event is not None
    assert event.data["strong_model"] == "gpt-4o"
    assert event.data["cascade"] == {
        "escalated": 2,
        "strong_requests": 8,
        "strong_cost_usd": "0.008000",
    }
