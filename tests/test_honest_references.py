"""Honest references: no grain is scored against the label the model was told to copy,
and no prompt version is checked on the images it learned from.

A run whose prompt gave the model the image's known expression is scored on the
expression only against gold questions and reviews; a version records the
decisions it learned from, and its gold set, its dashboards and comparisons know
them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.urls import reverse

from review.feedback.services import (
    FeedbackRefused,
    gold_check_create,
    gold_set,
    prompt_version_create,
)
from seke_app.datasets.services import dataset_import
from seke_app.engine.prompts import anchors_text
from seke_app.engine.types import KnownLabels
from seke_app.engine.uamc import UAMCParams
from seke_app.engine.vocab import Vocabulary
from seke_app.insights.comparisons import Side, compare
from seke_app.insights.dashboards import run_calibration, run_dashboard
from seke_app.insights.references import Labels, Reference, reference_for
from seke_app.models import Annotation, Dataset, FaceImage, GenerationRun, PromptVersion
from seke_app.queue import get_queue
from seke_app.runs.prompts import prompt_version_active
from seke_app.runs.services import run_create
from tests.conftest import client_for, draw_face
from tests.factories import record_decision, scripted_images
from tests.fake_openai import FakeOpenAI
from tests.workers import work_in_process

MIGRATION = "seke_app.migrations.0008_known_grains_and_what_versions_learned_from"


def given_run(
    images: list[FaceImage],
    *,
    backend: str = "openai",
    version: PromptVersion | None = None,
    expression: str = "happiness",
    known_grains: list[str] | None = None,
) -> GenerationRun:
    """A finished run whose every annotation answered ``expression`` at confidence 0.9."""
    version = version or prompt_version_active()
    run = GenerationRun.objects.create(
        dataset=images[0].dataset,
        backend=backend,
        model_name="scripted",
        prompt_version=version,
        status=GenerationRun.Status.COMPLETED,
        n_total=len(images),
        n_done=len(images),
    )
    Annotation.objects.bulk_create(
        [
            Annotation(
                run=run,
                image=image,
                prompt_version=version,
                expression=expression,
                expression_confidence=0.9,
                confidence=0.9,
                known_grains=["expression"] if known_grains is None else known_grains,
            )
            for image in images
        ]
    )
    return run


# --- Known-label grains are never scored --------------------------------------------


@pytest.mark.django_db
def test_it_never_scores_a_known_label_grain_against_the_dataset_label(
    annotator: User,
) -> None:
    # The dataset says happiness, the prompt gave the model that label, and it copied it.
    images = scripted_images(4, known_expression="happiness", known_valence=0.5, known_arousal=0.1)
    run = given_run(images)
    calibration = run_calibration(run=run)
    # Copying the given label is no evidence: the expression has no reference at all.
    assert calibration.grain("expression") is None
    assert calibration.given == {"expression": 4}
    # The grain it was not given (VA) is still scored against the dataset's label.
    va = calibration.grain("va")
    assert va is not None and va.sources == {"dataset": 4}
    # A review is a reference the model was not told to copy: it is scored.
    annotation = Annotation.objects.filter(run=run).order_by("id").first()
    assert annotation is not None
    record_decision(annotation, annotator, action="correct", expression="sadness")
    expression = run_calibration(run=run).grain("expression")
    assert expression is not None
    assert expression.sources == {"review": 1} and expression.reliability.n == 1
    assert run_dashboard(run=run).calibration.grain("expression") == expression


@pytest.mark.django_db
def test_it_scores_the_same_grain_when_the_model_was_not_given_it() -> None:
    images = scripted_images(3, known_expression="happiness")
    run = given_run(images, backend="offline", known_grains=[])
    expression = run_calibration(run=run).grain("expression")
    assert expression is not None and expression.sources == {"dataset": 3}


@pytest.mark.django_db
def test_it_leaves_known_label_grains_out_of_a_comparison(annotator: User) -> None:
    images = scripted_images(3, known_expression="happiness")
    given, blind = given_run(images), given_run(images, backend="offline", known_grains=[])
    comparison = compare(a=Side.of_run(given), b=Side.of_run(blind))
    assert comparison.a.accuracy["expression"] == (0, None)
    assert comparison.b.accuracy["expression"] == (3, 1.0)
    assert comparison.a.calibration.given == {"expression": 3}


def test_it_fills_no_dataset_reference_for_a_given_grain() -> None:
    known = Labels("happiness", (0.5, 0.1), {6: True})
    reference = reference_for({}, 1, known, given=["expression", "aus"])
    assert reference is not None
    assert reference.labels == Labels(None, (0.5, 0.1), None)
    assert reference.sources == {"va": "dataset"}
    # A review of the given grain still stands.
    reviewed = Reference()
    reviewed.fill(Labels("sadness", None, None), "review")
    found = reference_for({1: reviewed}, 1, known, given=["expression"])
    assert found is not None and found.labels.expression == "sadness"
    assert found.sources["expression"] == "review"
    assert reference_for({}, 1, Labels("fear"), given=["expression"]) is None


@pytest.mark.parametrize(
    ("known", "grains"),
    [
        (KnownLabels(expression="fear", valence=0.1, arousal=0.2), ("expression", "va")),
        # A lone valence or arousal gives no grain and is not stated.
        (KnownLabels(expression="fear", valence=0.1), ("expression",)),
        (KnownLabels(arousal=0.3, aus={6: True}), ("aus",)),
        # An AU coding outside the dataset's vocabulary is neither stated nor given.
        (KnownLabels(aus={3: True}), ()),
        (KnownLabels(), ()),
    ],
)
def test_the_prompt_states_exactly_the_grains_taken_as_given(
    known: KnownLabels, grains: tuple[str, ...]
) -> None:
    vocabulary = Vocabulary.named("feid17")
    assert 3 not in vocabulary.aus
    assert known.grains(vocabulary) == grains
    text = anchors_text(known, vocabulary)
    lines = {"expression": "- expression:", "va": "- valence:", "aus": "- action units:"}
    assert tuple(g for g, line in lines.items() if line in text) == grains
    assert ("- arousal:" in text) == ("va" in grains)


@pytest.mark.django_db
def test_the_migration_fills_the_grains_existing_annotations_were_given() -> None:
    images = scripted_images(
        2, known_expression="fear", known_valence=0.2, known_arousal=0.3, known_aus={"3": True}
    )
    bare = scripted_images(1, name="bare")
    sent = given_run(images, known_grains=[])
    offline = given_run(images, backend="offline", known_grains=[])
    nothing = given_run(bare, known_grains=[])
    child = PromptVersion.objects.create(
        number=99, name="old child", knowledge_text="k", fingerprint="f", parent=sent.prompt_version
    )
    importlib.import_module(MIGRATION).fill_known_grains(apps, None)
    importlib.import_module(MIGRATION).mark_unrecorded(apps, None)

    def grains(run: GenerationRun) -> set[tuple[str, ...]]:
        return {tuple(a.known_grains) for a in Annotation.objects.filter(run=run)}

    # AU3 is not in the feid17 vocabulary, so the prompt never stated it.
    assert grains(sent) == {("expression", "va")}
    assert grains(offline) == {()} and grains(nothing) == {()}
    child.refresh_from_db()
    assert child.learned_from_decisions is None
    assert child.unrecorded_lineage() == [child]
    assert PromptVersion.objects.get(id=sent.prompt_version_id).learned_from_decisions == []


# --- What a version learned from ------------------------------------------------------


def corrected_run(images: list[FaceImage], reviewer: User) -> GenerationRun:
    run = given_run(images, expression="surprise", known_grains=[])
    for annotation in Annotation.objects.filter(run=run):
        record_decision(annotation, reviewer, action="correct", expression="fear")
    return run


def child_of(parent: PromptVersion, user: User, **values: Any) -> PromptVersion:
    fields: dict[str, Any] = {
        "name": "child",
        "knowledge_text": parent.knowledge_text,
        "rule_notes": "- fear answered as surprise",
        "exemplars": [],
        "calibration": {},
    }
    fields.update(values)
    return prompt_version_create(parent=parent, user=user, **fields)


@pytest.mark.django_db
def test_the_gold_set_leaves_out_every_image_a_version_learned_from(
    annotator: User, admin_user: User
) -> None:
    learned = scripted_images(4, name="learned")
    held_out = scripted_images(2, name="held")
    taught = corrected_run(learned, annotator)
    corrected_run(held_out, annotator)
    parent = prompt_version_active()
    version = child_of(parent, admin_user, runs=[taught])
    # No exemplar names an image: before, all six decided images were its gold set.
    assert {i.image.id for i in gold_set(version, include_imported=False)} == {
        i.id for i in held_out
    }
    decisions = taught.annotations.values_list("decisions__id", flat=True)
    assert version.learned_from_decisions == sorted(decisions)
    assert set(version.learned_from_images.all()) == set(learned)
    # A child of the version inherits its text: the same images stay out of its gold set.
    grandchild = child_of(version, admin_user)
    assert grandchild.learned_from_decisions == []
    assert {i.image.id for i in gold_set(grandchild, include_imported=False)} == {
        i.id for i in held_out
    }


@pytest.mark.django_db
def test_it_leaves_learned_images_out_of_imported_labels_too(
    annotator: User, admin_user: User
) -> None:
    learned = scripted_images(2, name="learned", known_expression="fear")
    version = child_of(
        prompt_version_active(), admin_user, runs=[corrected_run(learned, annotator)]
    )
    assert gold_set(version, include_imported=True) == []


@pytest.mark.django_db
def test_it_refuses_a_gold_check_when_every_decided_image_was_learned_from(
    annotator: User, admin_user: User
) -> None:
    taught = corrected_run(scripted_images(3), annotator)
    version = child_of(prompt_version_active(), admin_user, runs=[taught])
    with pytest.raises(FeedbackRefused, match="learned from"):
        gold_check_create(
            version=version,
            backend="offline",
            model_name="",
            include_imported=False,
            user=admin_user,
        )


@pytest.mark.django_db
def test_it_counts_exemplar_images_as_learned_from(admin_user: User) -> None:
    image = scripted_images(1)[0]
    version = child_of(
        prompt_version_active(),
        admin_user,
        exemplars=[{"expression": "fear", "image_ref": str(image.code)}, {"image_ref": "x"}],
    )
    assert list(version.learned_from_images.all()) == [image]
    assert list(version.learned_images()) == [image]


@pytest.mark.django_db
def test_the_dashboard_marks_figures_on_learned_images_as_in_sample(
    annotator: User, admin_user: User
) -> None:
    learned = scripted_images(3, name="learned")
    other = scripted_images(2, name="other")
    version = child_of(
        prompt_version_active(), admin_user, runs=[corrected_run(learned, annotator)]
    )
    # The new version re-annotates the images it learned from and two more.
    rerun = given_run(learned + other, version=version, expression="fear", known_grains=[])
    for annotation in Annotation.objects.filter(run=rerun, image__in=other):
        record_decision(annotation, annotator)
    calibration = run_calibration(run=rerun)
    expression = calibration.grain("expression")
    assert expression is not None and expression.reliability.n == 5
    assert expression.in_sample == 3 and calibration.n_in_sample == 3
    page = client_for(admin_user).get(reverse("run_dashboard", args=[rerun.code])).content.decode()
    assert 'id="in-sample-expression"' in page and "<strong>In-sample:</strong> 3 of these" in page
    assert 'id="risk-in-sample"' in page
    # The parent, scored on the same images, learned nothing from them.
    parent_run = given_run(learned, expression="fear", known_grains=[])
    assert run_calibration(run=parent_run).n_in_sample == 0
    comparison = compare(a=Side.of_version(version), b=Side.of_run(parent_run))
    assert comparison.a.in_sample["expression"] == 3 and comparison.b.in_sample["expression"] == 0
    compare_page = client_for(admin_user).get(
        reverse("compare"), {"va": str(version.code), "vb": str(parent_run.prompt_version.code)}
    )
    assert 'id="in-sample-a"><strong>3</strong>' in compare_page.content.decode()


@pytest.mark.django_db
def test_it_says_when_what_a_version_learned_from_was_not_recorded(admin_user: User) -> None:
    images = scripted_images(2)
    parent = prompt_version_active()
    old = PromptVersion.objects.create(
        number=parent.number + 1,
        name="made before",
        knowledge_text="k",
        fingerprint="f",
        parent=parent,
        learned_from_decisions=None,
    )
    run = given_run(images, version=old, known_grains=[])
    assert run_dashboard(run=run).unrecorded == [old.number]
    page = client_for(admin_user).get(reverse("run_dashboard", args=[run.code])).content.decode()
    assert 'id="unrecorded-lineage"' in page
    detail = client_for(admin_user).get(reverse("review:version_detail", args=[old.code]))
    assert "What this version learned from was not recorded" in detail.content.decode()


# --- Through a real run ----------------------------------------------------------------


def known_dataset(tmp_path: Path) -> Dataset:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        (src / f"{i}.png").write_bytes(draw_face(seed=i))
    (src / "manifest.csv").write_text("file,expression,au_6\n0.png,happiness,1\n1.png,,\n")
    dataset_import(path=src, dataset_name="known")
    return Dataset.objects.get(name="known")


def work() -> None:
    work_in_process("generation")


@pytest.mark.django_db(transaction=True)
def test_a_run_records_what_its_model_was_given(tmp_path: Path, settings: Any) -> None:
    get_queue("generation").empty()
    dataset = known_dataset(tmp_path)
    with FakeOpenAI() as server:
        settings.OPENAI_API_KEY = "sk-test"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_RPM = settings.OPENAI_TPM = 0
        run = run_create(
            dataset=dataset,
            backend="openai",
            model_name="gpt-4o",
            params=UAMCParams(strategy="single"),
        )
        work()
    offline = run_create(dataset=dataset, backend="offline", params=UAMCParams())
    work()
    given = Annotation.objects.values_list("image__original_name", "known_grains")
    assert dict(given.filter(run=run)) == {"0.png": ["expression", "aus"], "1.png": []}
    # The offline annotator takes the known grains as inputs too.
    assert dict(given.filter(run=offline)) == {"0.png": ["expression", "aus"], "1.png": []}
    stored = Annotation.objects.get(run=offline, image__original_name="0.png")
    assert stored.provenance == {"expression": "dataset", "va": "model", "aus": "dataset"}
    assert stored.inferred_from == {}
    assert stored.expression == stored.image.known_expression
