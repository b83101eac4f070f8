"""How far an export is, as its page and the API show it."""

from __future__ import annotations

from dataclasses import dataclass

from seke_app.insights.references import waiting_images
from seke_app.models import FaceImage
from seke_app.models.exports import Export


@dataclass(frozen=True)
class ExportProgress:
    """An export's figures at one moment.

    ``n_images`` is the number of images the export considers: ``n_total`` counts
    images *read*, and a FEAB export reads its images twice (once to split them,
    once to write). ``awaiting_review`` counts the dataset's images that wait for a
    review, which a later export would include once decided; it is only counted
    for a finished export that left images out (None otherwise).
    """

    export: Export
    settled: bool
    percent: float
    n_images: int
    awaiting_review: int | None


def export_progress_of(export: Export) -> ExportProgress:
    passes = 2 if export.kind == Export.Kind.FEAB else 1
    awaiting = None
    if export.status == Export.Status.DONE and export.n_skipped:
        images = FaceImage.objects.filter(dataset=export.dataset).filter(waiting_images())
        awaiting = images.count()
    return ExportProgress(
        export=export,
        settled=export.is_settled(),
        percent=round(export.progress * 100, 1),
        n_images=export.n_total // passes,
        awaiting_review=awaiting,
    )
