"""Rows for tests that need many annotations and tasks without running the engine."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from review.models import ReviewDecision, ReviewTask
from review.tasks.services import task_create_for
from seke_app.datasets.services import dataset_import
from seke_app.models import Annotation, Dataset, FaceImage, GenerationRun
from seke_app.runs.prompts import prompt_version_active
from tests.conftest import draw_face

EXPRESSIONS = ("fear", "surprise", "happiness", "sadness", "anger")


def make_flagged_annotations(
    n: int, *, dataset_name: str = "bulk", write_files: bool = False
) -> list[Annotation]:
    """``n`` flagged annotations (with their review tasks) of distinct confidence.

    The image files exist only with ``write_files`` (pages that show the face need them).
    """
    images = scripted_images(n, dataset_name)
    dataset = images[0].dataset
    if write_files:
        for i, image in enumerate(images):
            path = Path(settings.MEDIA_ROOT) / image.file.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(draw_face(seed=i))
    version = prompt_version_active()
    run = GenerationRun.objects.create(
        dataset=dataset,
        backend="offline",
        model_name="test",
        prompt_version=version,
        n_total=n,
        n_done=n,
        n_flagged=n,
        status=GenerationRun.Status.COMPLETED,
    )
    annotations = Annotation.objects.bulk_create(
        [
            Annotation(
                run=run,
                image=image,
                prompt_version=version,
                expression=EXPRESSIONS[i % len(EXPRESSIONS)],
                expression_votes={EXPRESSIONS[i % len(EXPRESSIONS)]: 3, "neutral": 2},
                expression_confidence=(i % 97) / 100,
                valence=-0.2,
                arousal=0.6,
                va_samples=[[-0.2, 0.6], [-0.1, 0.7]],
                va_confidence=0.5,
                aus={"1": True, "2": True, "4": False},
                au_rates={"1": 1.0, "2": 0.6, "4": 0.4},
                au_confidence=0.6,
                confidence=(i % 97) / 100,
                flagged=True,
                flag_reasons=[f"expression split 3/2 between {EXPRESSIONS[i % 5]} and neutral"],
                # That reason names no threshold, so no threshold makes it confident.
                held=True,
                evidence={"expression": "brows raised", "va": "tense", "aus": "AU1 and AU2"},
            )
            for i, image in enumerate(images)
        ]
    )
    for annotation in annotations:
        task_create_for(annotation)
    assert ReviewTask.objects.filter(annotation__run=run).count() == n
    return annotations


def make_dataset(tmp_path: Path, n: int = 6, name: str = "drawn") -> Dataset:
    """A dataset of ``n`` drawn faces, imported; the first two in split "test"."""
    src = tmp_path / f"src-{name}"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.png").write_bytes(draw_face(seed=i, smile=i % 2 == 0))
    (src / "manifest.csv").write_text(
        "file,split\n" + "".join(f"{i}.png,{'test' if i < 2 else 'train'}\n" for i in range(n))
    )
    dataset_import(path=src, dataset_name=name)
    return Dataset.objects.get(name=name)


def scripted_images(n: int, name: str = "scripted", **known: Any) -> list[FaceImage]:
    """``n`` image rows of a new dataset, without files (pages that show faces need them)."""
    dataset = Dataset.objects.create(name=name)
    return FaceImage.objects.bulk_create(
        [
            FaceImage(
                dataset=dataset,
                sha256=hashlib.sha256(f"{name}-{i}".encode()).hexdigest(),
                file=f"faces/none/{i}.png",
                image_format="PNG",
                width=48,
                height=48,
                original_name=f"{i}.png",
                **known,
            )
            for i in range(n)
        ]
    )


def record_decision(
    annotation: Annotation,
    reviewer: User,
    action: str = "accept",
    kind: str = "first",
    undone: bool = False,
    **values: Any,
) -> ReviewDecision:
    """A decision as the review app records it: accept copies the machine values.

    ``audit=True`` records a blind audit review (task and decision).
    """
    audit = bool(values.pop("audit", False))
    task, _ = ReviewTask.objects.get_or_create(
        annotation=annotation,
        kind=kind,
        defaults={
            "priority": annotation.confidence,
            "status": ReviewTask.Status.DONE,
            "audit": audit,
        },
    )
    if action == "accept":
        values = {
            "expression": annotation.expression,
            "valence": annotation.valence,
            "arousal": annotation.arousal,
            "aus": annotation.aus,
        }
    return ReviewDecision.objects.create(
        task=task,
        annotation=annotation,
        image=annotation.image,
        reviewer=reviewer,
        action=action,
        kind=kind,
        undone_at=timezone.now() if undone else None,
        audit=audit,
        **values,
    )
