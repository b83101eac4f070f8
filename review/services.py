"""Review workflows: tasks for flagged annotations."""

from __future__ import annotations

from review.models import ReviewTask
from seke_app.models import Annotation


def task_create_for(annotation: Annotation) -> None:
    """One open task per flagged annotation, ordered by its confidence."""
    if not annotation.flagged:
        return
    ReviewTask.objects.get_or_create(
        annotation=annotation,
        defaults={
            "priority": annotation.confidence,
            "expression_confidence": annotation.expression_confidence,
            "va_confidence": annotation.va_confidence,
            "au_confidence": annotation.au_confidence,
        },
    )
