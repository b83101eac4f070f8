"""Curated labels: which label SEKE stands behind per image and grain, and why."""

from __future__ import annotations

import hashlib
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from review.models import ReviewTask
from seke_app.engine.formats.records import CuratedRecord
from seke_app.exports.curation import curated_labels, curated_records
from seke_app.models import Annotation, Dataset, FaceImage, GenerationRun
from seke_app.runs.prompts import prompt_version_active
from tests.conftest import draw_face
from tests.factories import record_decision

pytestmark = pytest.mark.django_db

FULL_AUS = {"1": False, "2": False, "4": True, "6": False, "12": True}


def make_images(
    n: int, *, name: str = "drawn", write_files: bool = False, **fields: Any
) -> tuple[Dataset, list[FaceImage]]:
    """A dataset of ``n`` image rows; files exist only with ``write_files``."""
    dataset = Dataset.objects.create(name=name, licence_note="test faces")
    rows = []
    for i in range(n):
        sha = hashlib.sha256(f"{name}-{i}".encode()).hexdigest()
        values = {k: (v(i) if callable(v) else v) for k, v in fields.items()}
        rows.append(
            FaceImage(
                dataset=dataset,
                sha256=sha,
                file=f"faces/{sha[:2]}/{sha}.png",
                image_format="PNG",
                width=64,
                height=64,
                original_name=f"{i}.png",
                **values,
            )
        )
    images = FaceImage.objects.bulk_create(rows)
    if write_files:
        for i, image in enumerate(images):
            path = Path(settings.MEDIA_ROOT) / image.file.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(draw_face(seed=i))
    return dataset, images


def make_run(dataset: Dataset, model_name: str = "gpt-4o") -> GenerationRun:
    return GenerationRun.objects.create(
        dataset=dataset,
        backend="openai",
        model_name=model_name,
        prompt_version=prompt_version_active(),
        status=GenerationRun.Status.COMPLETED,
        # Below every scripted overall confidence, so unflagged labels count as accepted.
        review_threshold=0.0,
    )


def annotate(
    image: FaceImage,
    run: GenerationRun,
    *,
    expression: str | None = "happiness",
    valence: float | None = 0.6,
    arousal: float | None = 0.2,
    aus: dict[str, bool] | None = None,
    confidence: float = 0.9,
    flagged: bool = False,
) -> Annotation:
    return Annotation.objects.create(
        run=run,
        image=image,
        prompt_version=run.prompt_version,
        expression=expression,
        expression_confidence=confidence,
        valence=valence,
        arousal=arousal,
        va_confidence=confidence - 0.1,
        aus=FULL_AUS if aus is None else aus,
        au_confidence=confidence - 0.2,
        confidence=confidence - 0.2,
        flagged=flagged,
        # A flagged annotation above the threshold was flagged for a reason no
        # threshold changes (``held``), as SV-UAMC would have written it.
        held=flagged,
        n_samples=7,
    )


def by_name(dataset: Dataset) -> dict[str, CuratedRecord]:
    return {record.name: record for record in curated_labels(dataset=dataset)}


def test_it_prefers_a_reviewer_then_the_dataset_then_an_accepted_machine_label(
    annotator: User,
) -> None:
    dataset, images = make_images(4, known_expression="sadness")
    run = make_run(dataset)
    for image in images:
        annotate(image, run)
    record_decision(
        images[0].annotations.get(), annotator, "correct", expression="anger", aus={"12": True}
    )
    flagged_run = make_run(dataset)
    annotate(images[2], flagged_run, expression="fear", flagged=True)
    record_decision(images[3].annotations.get(run=run), annotator, "accept")
    records = by_name(dataset)

    corrected = records["0.png"]
    assert corrected.expression == "anger" and corrected.provenance["expression"].source == "human"
    # The correction left VA alone: it stands behind the reviewed annotation's VA.
    assert (corrected.valence, corrected.arousal) == (0.6, 0.2)
    assert corrected.provenance["va"].source == "human"
    assert corrected.aus == {12: True} and corrected.provenance["aus"].source == "human"

    imported = records["1.png"]
    assert imported.expression == "sadness"
    assert imported.provenance["expression"].source == "dataset"
    assert imported.provenance["va"].source == "machine"

    # A flagged annotation never counts: the earlier accepted one stands.
    assert records["2.png"].provenance["va"].run == str(run.code)
    accepted = records["3.png"]
    assert (
        accepted.expression == "happiness" and accepted.provenance["expression"].source == "human"
    )


def test_it_takes_the_latest_accepted_machine_label() -> None:
    dataset, (image,) = make_images(1)
    old, new = make_run(dataset, "old-model"), make_run(dataset, "new-model")
    annotate(image, old, expression="fear")
    annotate(image, new, expression="surprise")
    Annotation.objects.filter(run=old).update(created_at=timezone.now() + timedelta(hours=1))
    assert by_name(dataset)["0.png"].expression == "fear"
    Annotation.objects.filter(run=new).update(created_at=timezone.now() + timedelta(hours=2))
    record = by_name(dataset)["0.png"]
    assert record.expression == "surprise" and record.provenance["expression"].model == "new-model"


def test_it_ignores_undone_decisions_and_drops_rejected_images(annotator: User) -> None:
    dataset, images = make_images(3)
    run = make_run(dataset)
    annotations = [annotate(image, run, flagged=True) for image in images]
    undone = record_decision(annotations[0], annotator, "correct", expression="anger")
    undone.undone_at = timezone.now()
    undone.save()
    record_decision(annotations[1], annotator, "reject_image", reject_reason="not a face")
    FaceImage.objects.filter(id=images[2].id).update(rejected=True)
    records = by_name(dataset)
    assert set(records) == {"0.png"}
    # Only a flagged machine label is left, which SEKE does not stand behind.
    assert records["0.png"].grains() == ()


def test_it_records_where_each_label_came_from(annotator: User) -> None:
    dataset, images = make_images(
        2, known_valence=-0.5, known_arousal=0.5, known_aus={"1": True, "4": False}
    )
    run = make_run(dataset)
    annotate(images[0], run, confidence=0.8)
    decision = record_decision(
        annotate(images[1], make_run(dataset), flagged=True), annotator, "accept"
    )
    records = by_name(dataset)
    machine = records["0.png"].provenance["expression"].to_json()
    assert machine == {
        "source": "machine",
        "run": str(run.code),
        "model": "gpt-4o",
        "prompt_version": run.prompt_version.number,
        "confidence": 0.8,
        "n_samples": 7,
    }
    assert records["0.png"].provenance["va"].to_json() == {"source": "dataset", "dataset": "drawn"}
    assert records["0.png"].aus == {1: True, 4: False}
    human = records["1.png"].provenance["expression"].to_json()
    assert human == {
        "source": "human",
        "reviewer": "ann",
        "decided_at": decision.created_at.isoformat(),
        "decision": "accept",
    }


def test_it_keeps_to_a_split() -> None:
    dataset, _ = make_images(5, split=lambda i: "test" if i < 2 else "train")
    assert sorted(r.name for r in curated_labels(dataset=dataset, split="test")) == [
        "0.png",
        "1.png",
    ]


@pytest.mark.parametrize("n", [7, 23])
def test_it_reads_in_chunks_with_three_queries_each(
    n: int, annotator: User, django_assert_num_queries: Any
) -> None:
    dataset, images = make_images(n, known_expression="neutral")
    run = make_run(dataset)
    for image in images:
        record_decision(annotate(image, run, flagged=True), annotator, "accept")
        annotate(image, make_run(dataset))
    chunks = math.ceil(n / 5)
    # Images, decisions and annotations per chunk, and one read that finds no more images.
    with django_assert_num_queries(3 * chunks + 1):
        read = list(curated_records(dataset=dataset, chunk_size=5))
    assert len(read) == chunks and sum(len(c) for c in read) == n
    assert all(
        r is not None and r.provenance["expression"].source == "human" for c in read for r in c
    )


def test_it_never_curates_from_gold_answers_and_prefers_adjudication(
    db: None, annotator: User, teammate: User, admin_user: User, settings: Any
) -> None:
    from review.quality.services import gold_question_set
    from review.tasks.services import Decision, decision_record, task_claim_next, task_create_for
    from seke_app.models import GenerationRun
    from seke_app.roles import user_create
    from tests.factories import make_flagged_annotations

    settings.GOLD_RATE = 0.0
    annotation = make_flagged_annotations(1, dataset_name="dbl")[0]
    GenerationRun.objects.filter(id=annotation.run_id).update(double_review_share=1.0)
    ReviewTask.objects.all().delete()
    annotation.refresh_from_db()
    task_create_for(annotation)
    for user, expression in ((annotator, "fear"), (teammate, "surprise")):
        task = task_claim_next(user=user)
        assert task is not None
        decision_record(
            task=task, user=user, decision=Decision(action="correct", expression=expression)
        )
    adjudication = task_claim_next(user=admin_user)
    assert adjudication is not None and adjudication.kind == "adjudication"
    decision_record(
        task=adjudication, user=admin_user, decision=Decision(action="correct", expression="fear")
    )
    # A later gold answer by another reviewer must not replace the adjudicated label.
    gold_question_set(
        image=annotation.image,
        expression="fear",
        valence=None,
        arousal=None,
        aus=None,
        user=admin_user,
    )
    settings.GOLD_RATE = 1.0
    gold = task_claim_next(
        user=user_create(username="g", password="pw-123456789", role="annotator")
    )
    assert gold is not None and gold.kind == "gold"
    assert gold.holder is not None
    decision_record(
        task=gold, user=gold.holder, decision=Decision(action="correct", expression="anger")
    )
    record = next(iter(curated_labels(dataset=annotation.image.dataset)))
    assert record.expression == "fear"
    assert record.provenance["expression"].reviewer == "ada"


def test_it_drops_machine_labels_under_a_raised_threshold() -> None:
    dataset, (image,) = make_images(1)
    run = make_run(dataset)
    annotate(image, run, confidence=0.8)
    assert by_name(dataset)["0.png"].expression is not None
    GenerationRun.objects.filter(id=run.id).update(review_threshold=0.65)
    assert by_name(dataset)["0.png"].grains() == ()
