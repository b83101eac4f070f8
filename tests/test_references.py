"""The human label: one definition, read the same way by curation and by scoring.

Two independent reviews that disagree on a grain leave it unresolved until an
admin adjudicates: curation does not export it as human and scoring does not
score against it. Review opens the adjudication by the same rule.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from review.models import ReviewTask
from review.tasks.services import Decision as ReviewInput
from review.tasks.services import decision_record, task_claim_next
from seke_app.engine.formats.records import CuratedRecord
from seke_app.insights.references import Labels, human_references, reference_for
from seke_app.models import Annotation, FaceImage, GenerationRun
from tests.factories import make_flagged_annotations, record_decision
from tests.test_curation import annotate, by_name, make_images, make_run

pytestmark = pytest.mark.django_db


def exported_and_scored(annotation: Annotation) -> tuple[CuratedRecord | None, Any]:
    """The image's curated record and its scoring reference (dataset labels included)."""
    image = FaceImage.objects.get(id=annotation.image_id)
    record = by_name(image.dataset).get(image.original_name)
    references = human_references(FaceImage.objects.filter(id=image.id).values("id"))
    known = Labels.of(image.known_expression, image.known_valence, image.known_arousal, None)
    return record, reference_for(references, image.id, known)


def flagged_image(**known: Any) -> Annotation:
    dataset, images = make_images(1, **known)
    return annotate(images[0], make_run(dataset), flagged=True)


def test_it_leaves_a_disputed_grain_unresolved_in_export_and_scoring_alike(
    annotator: User, teammate: User
) -> None:
    annotation = flagged_image()
    record_decision(annotation, annotator, "correct", expression="anger", valence=0.1, arousal=0.1)
    record_decision(
        annotation, teammate, "correct", kind="second", expression="fear", valence=0.2, arousal=0.1
    )
    record, reference = exported_and_scored(annotation)
    assert record is not None and reference is not None
    # The expression is neither exported (its machine label was flagged) nor scored.
    assert record.expression is None and "expression" not in record.provenance
    assert reference.labels.expression is None and "expression" in reference.unresolved
    # VA agrees within the tolerance: the first review's values, human in both.
    assert (record.valence, record.arousal) == (0.1, 0.1) == reference.labels.va
    assert record.provenance["va"].source == "human" and reference.sources["va"] == "review"


def test_it_falls_back_to_the_dataset_label_on_a_disputed_grain_in_both(
    annotator: User, teammate: User
) -> None:
    annotation = flagged_image(known_expression="sadness")
    record_decision(annotation, annotator, "correct", expression="anger")
    record_decision(annotation, teammate, "correct", kind="second", expression="fear")
    record, reference = exported_and_scored(annotation)
    assert record is not None and reference is not None
    assert record.expression == "sadness" and record.provenance["expression"].source == "dataset"
    assert reference.labels.expression == "sadness" and reference.sources["expression"] == "dataset"


def test_it_takes_the_adjudicated_label_in_both(
    annotator: User, teammate: User, admin_user: User
) -> None:
    annotation = flagged_image(known_expression="sadness")
    record_decision(annotation, annotator, "correct", expression="anger")
    record_decision(annotation, teammate, "correct", kind="second", expression="fear")
    record_decision(annotation, admin_user, "correct", kind="adjudication", expression="fear")
    record, reference = exported_and_scored(annotation)
    assert record is not None and reference is not None
    assert record.expression == "fear" == reference.labels.expression
    assert record.provenance["expression"].reviewer == "ada"
    assert reference.decisions["expression"].reviewer == "ada"


def test_it_resolves_nothing_when_only_one_review_rejects_the_image(
    annotator: User, teammate: User
) -> None:
    annotation = flagged_image()
    record_decision(annotation, annotator, "reject_image", reject_reason="not a face")
    record_decision(annotation, teammate, "correct", kind="second", expression="fear")
    record, reference = exported_and_scored(annotation)
    assert record is not None and record.grains() == ()
    assert reference is None


def test_it_drops_an_image_both_reviews_reject_from_export_and_scoring(
    annotator: User, teammate: User
) -> None:
    annotation = flagged_image(known_expression="sadness")
    record_decision(annotation, annotator, "reject_image", reject_reason="not a face")
    record_decision(annotation, teammate, "reject_image", kind="second", reject_reason="blurred")
    record, reference = exported_and_scored(annotation)
    assert record is None and reference is None


def test_it_reads_the_human_label_the_same_way_in_curation_and_scoring(
    annotator: User, teammate: User
) -> None:
    """Over several review histories, curation exports as human exactly what scoring uses."""
    dataset, images = make_images(4)
    run = make_run(dataset)
    annotations = [annotate(image, run, flagged=True) for image in images]
    record_decision(annotations[0], annotator, "accept")
    record_decision(annotations[1], annotator, "correct", expression="anger")
    record_decision(annotations[1], teammate, "correct", kind="second", expression="anger")
    record_decision(annotations[2], annotator, "correct", expression="fear", aus={"4": True})
    record_decision(annotations[2], teammate, "accept", kind="second")
    references = human_references(FaceImage.objects.filter(dataset=dataset).values("id"))
    for image in images:
        record = by_name(dataset)[image.original_name]
        reference = references.get(image.id)
        human = {g for g, p in record.provenance.items() if p.source == "human"}
        reviewed = (
            {g for g, s in reference.sources.items() if s == "review"} if reference else set()
        )
        assert human == reviewed, image.original_name
        for grain in human:
            assert record.provenance[grain].reviewer == reference.decisions[grain].reviewer


@pytest.mark.parametrize(
    ("second_aus", "adjudicated"),
    [
        ({4: True, 12: True, 1: True}, False),
        ({4: True, 12: False, 1: True}, True),
    ],
    ids=["one AU apart", "two AUs apart"],
)
def test_it_adjudicates_exactly_the_grains_it_leaves_unresolved(
    annotator: User,
    teammate: User,
    settings: Any,
    second_aus: dict[int, bool],
    adjudicated: bool,
) -> None:
    settings.GOLD_RATE = 0.0
    annotation = make_flagged_annotations(1, dataset_name="dbl")[0]
    GenerationRun.objects.filter(id=annotation.run_id).update(double_review_share=1.0)
    ReviewTask.objects.all().delete()
    from review.tasks.services import task_create_for

    task_create_for(Annotation.objects.get(id=annotation.id))
    first_aus = {4: True, 12: True}
    for user, aus in ((annotator, first_aus), (teammate, second_aus)):
        task = task_claim_next(user=user)
        assert task is not None
        decision_record(
            task=task, user=user, decision=ReviewInput(action="correct", expression="fear", aus=aus)
        )
    opened = ReviewTask.objects.filter(annotation=annotation, kind="adjudication").exists()
    references = human_references(FaceImage.objects.filter(id=annotation.image_id).values("id"))
    unresolved = references[annotation.image_id].unresolved
    assert opened == adjudicated
    assert unresolved == ({"aus"} if adjudicated else set())
