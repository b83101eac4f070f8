"""Curated labels: for every image and grain, the label SEKE stands behind.

The order of precedence, per grain (expression; valence-arousal; AUs):

1. The human reference of the image (``insights.references.human_references``,
   without gold questions): what the deciding review stands behind, an
   adjudication settling a double review, a grain two independent reviews
   disagree on left unresolved; a rejected image is removed.
2. The human label imported with the image (``FaceImage.known_*``); valence and
   arousal count only as a pair.
3. A machine label confident under its run's *current* review threshold
   (``seke_app.models.runs.confident``: the overall confidence, the lowest of
   the three, is at least the threshold and nothing else flagged it): the
   latest such one.

Otherwise the grain has no label. Images marked rejected are left out.

Records stream in chunks of image ids (keyset pagination on the primary key), with
three queries per chunk whatever its size: the images, their decisions, their
accepted annotations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.db import models

from seke_app.engine.formats.records import CuratedRecord, Provenance
from seke_app.insights.references import Reference, human_references
from seke_app.models import Annotation, Dataset, FaceImage
from seke_app.models.runs import confident

CHUNK_SIZE = 1000

# The image columns ``curate`` reads.
IMAGE_FIELDS = (
    "id",
    "code",
    "original_name",
    "file",
    "image_format",
    "sha256",
    "subject",
    "split",
    "known_expression",
    "known_valence",
    "known_arousal",
    "known_aus",
)
_MACHINE_FIELDS = (
    "image_id",
    "expression",
    "valence",
    "arousal",
    "aus",
    "expression_confidence",
    "va_confidence",
    "au_confidence",
    "n_samples",
    "run__code",
    "run__model_name",
    "prompt_version__number",
)

Row = Mapping[str, Any]
# Per grain: the value (expression, (valence, arousal) or the AU map) and its provenance.
Grains = dict[str, tuple[Any, Provenance]]


def candidate_images(*, dataset: Dataset, split: str = "") -> models.QuerySet[FaceImage]:
    """The images an export of the dataset considers (before any decision)."""
    images = FaceImage.objects.filter(dataset=dataset, rejected=False)
    return images.filter(split=split) if split else images


def _aus(value: Any) -> dict[int, bool] | None:
    if not value:
        return None
    return {int(au): bool(on) for au, on in value.items()}


def _latest_per_image(rows: Any) -> dict[int, Row]:
    # Rows arrive newest first within each image; the first one seen wins.
    latest: dict[int, Row] = {}
    for row in rows:
        latest.setdefault(row["image_id"], row)
    return latest


def _latest_accepted(ids: models.QuerySet[FaceImage, Any]) -> dict[int, Row]:
    rows = (
        # Confident under the run's current threshold, which an admin may change.
        Annotation.objects.filter(confident(), image_id__in=ids)
        .order_by("image_id", "-created_at", "-id")
        .values(*_MACHINE_FIELDS)
    )
    return _latest_per_image(rows)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _human_grains(reference: Reference) -> Grains:
    grains: Grains = {}
    for grain, decision in reference.decisions.items():
        provenance = Provenance(
            source="human",
            reviewer=decision.reviewer,
            decided_at=_iso(decision.decided_at),
            decision=decision.action.value,
        )
        grains[grain] = (reference.labels.grain(grain), provenance)
    return grains


def _dataset_grains(image: Row, dataset_name: str) -> Grains:
    provenance = Provenance(source="dataset", dataset=dataset_name)
    grains: Grains = {}
    if image["known_expression"] is not None:
        grains["expression"] = (image["known_expression"], provenance)
    if image["known_valence"] is not None and image["known_arousal"] is not None:
        grains["va"] = ((image["known_valence"], image["known_arousal"]), provenance)
    if (aus := _aus(image["known_aus"])) is not None:
        grains["aus"] = (aus, provenance)
    return grains


def _machine_grains(annotation: Row) -> Grains:
    def provenance(confidence_field: str) -> Provenance:
        return Provenance(
            source="machine",
            run=str(annotation["run__code"]),
            model=annotation["run__model_name"],
            prompt_version=annotation["prompt_version__number"],
            confidence=annotation[confidence_field],
            n_samples=annotation["n_samples"],
        )

    grains: Grains = {}
    if annotation["expression"] is not None:
        grains["expression"] = (annotation["expression"], provenance("expression_confidence"))
    if annotation["valence"] is not None and annotation["arousal"] is not None:
        grains["va"] = ((annotation["valence"], annotation["arousal"]), provenance("va_confidence"))
    if (aus := _aus(annotation["aus"])) is not None:
        grains["aus"] = (aus, provenance("au_confidence"))
    return grains


def curate(
    image: Row, reference: Reference | None, annotation: Row | None, dataset_name: str
) -> CuratedRecord | None:
    """One image's curated record from its rows; None when a reviewer rejected it.

    A grain the reviews leave unresolved is not human: the lower-ranked sources
    apply to it as to a grain no human has decided.
    """
    if reference is not None and reference.rejected:
        return None
    grains: Grains = {}
    # Lower-ranked sources first, so that higher-ranked ones overwrite them.
    if annotation is not None:
        grains.update(_machine_grains(annotation))
    grains.update(_dataset_grains(image, dataset_name))
    if reference is not None:
        grains.update(_human_grains(reference))
    va = grains.get("va", ((None, None), None))[0]
    return CuratedRecord(
        image=str(image["code"]),
        name=image["original_name"],
        file=image["file"],
        image_format=image["image_format"],
        sha256=image["sha256"],
        subject=image["subject"],
        split=image["split"],
        expression=grains["expression"][0] if "expression" in grains else None,
        valence=va[0],
        arousal=va[1],
        aus=grains["aus"][0] if "aus" in grains else None,
        provenance={grain: provenance for grain, (_, provenance) in grains.items()},
    )


def curate_rows(rows: Sequence[Row]) -> list[CuratedRecord | None]:
    """The curated records of image rows, in their order: for a page of images of any
    datasets rather than one dataset's chunks.

    The rows are read with ``IMAGE_FIELDS`` and "dataset__name". Two queries whatever
    their number (their decisions, their accepted annotations). None stands for an
    image a reviewer rejected; ``FaceImage.rejected`` is the caller's to read.
    """
    if not rows:
        return []
    ids = FaceImage.objects.filter(id__in=[row["id"] for row in rows]).values("id")
    references = human_references(ids, gold=False)
    accepted = _latest_accepted(ids)
    return [
        curate(row, references.get(row["id"]), accepted.get(row["id"]), row["dataset__name"])
        for row in rows
    ]


def curated_records(
    *, dataset: Dataset, split: str = "", chunk_size: int = CHUNK_SIZE
) -> Iterator[list[CuratedRecord | None]]:
    """Chunks of curated records, in image order; None stands for a rejected image.

    Each chunk holds one entry per image considered, so that a caller can count
    progress by images.
    """
    images = candidate_images(dataset=dataset, split=split).order_by("id")
    last_id = 0
    while True:
        chunk = list(images.filter(id__gt=last_id).values(*IMAGE_FIELDS)[:chunk_size])
        if not chunk:
            return
        # The chunk's images again, as a subquery: no list of ids to send, whatever its size.
        ids = images.filter(id__gt=last_id, id__lte=chunk[-1]["id"]).values("id")
        last_id = chunk[-1]["id"]
        references = human_references(ids, gold=False)
        accepted = _latest_accepted(ids)
        yield [
            curate(row, references.get(row["id"]), accepted.get(row["id"]), dataset.name)
            for row in chunk
        ]


def curated_labels(*, dataset: Dataset, split: str = "") -> Iterator[CuratedRecord]:
    """Every curated record of the dataset (rejected images left out)."""
    for chunk in curated_records(dataset=dataset, split=split):
        yield from (record for record in chunk if record is not None)
