"""What the dataset page shows for each face: its known label, the machine's, and
where its review stands, each marked as what it is.

The machine label is the image's latest annotation (any run); its review status
comes from the review app through the decision contract (``references``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seke_app.insights.references import human_references, waiting_images
from seke_app.models import Annotation, FaceImage

# Review statuses, in words, as the page shows them (a CSS class each).
AWAITING = "awaiting review"
REJECTED = "rejected by a reviewer"
REVIEWED = "reviewed"
DISPUTED = "reviews disagree"
ACCEPTED = "auto-accepted"
FLAGGED = "flagged, not in the queue"
NOT_ANNOTATED = "not annotated"


@dataclass(frozen=True)
class FaceRow:
    image: FaceImage
    machine_expression: str | None
    machine_confidence: float | None
    status: str
    # The expression the human reference stands behind, when a review settled one.
    human_expression: str | None = None

    @property
    def status_class(self) -> str:
        return self.status.split(",")[0].replace(" ", "-")


def _latest_annotations(ids: list[int]) -> dict[int, Annotation]:
    rows = (
        Annotation.objects.filter(image_id__in=ids)
        .select_related("run")
        .only("image_id", "expression", "confidence", "held", "run__review_threshold")
        .order_by("image_id", "-created_at", "-id")
    )
    latest: dict[int, Annotation] = {}
    for row in rows:
        latest.setdefault(row.image_id, row)
    return latest


def face_rows(images: Sequence[FaceImage]) -> list[FaceRow]:
    """One row per image, in the given order, from four queries whatever their number."""
    ids = [image.id for image in images]
    chosen = FaceImage.objects.filter(id__in=ids)
    latest = _latest_annotations(ids)
    waiting = set(chosen.filter(waiting_images()).values_list("id", flat=True))
    references = human_references(chosen.values("id"), gold=False)
    rows = []
    for image in images:
        annotation = latest.get(image.id)
        reference = references.get(image.id)
        human = reference.labels.expression if reference and not reference.rejected else None
        if image.id in waiting:
            status = AWAITING
        elif reference is not None and reference.rejected:
            status = REJECTED
        elif reference is not None and reference.unresolved:
            status = DISPUTED
        elif reference is not None:
            status = REVIEWED
        elif annotation is None:
            status = NOT_ANNOTATED
        elif annotation.is_confident(annotation.run.review_threshold):
            status = ACCEPTED
        else:
            status = FLAGGED
        rows.append(
            FaceRow(
                image=image,
                machine_expression=annotation.expression if annotation else None,
                machine_confidence=annotation.confidence if annotation else None,
                status=status,
                human_expression=human,
            )
        )
    return rows
