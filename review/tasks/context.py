"""Everything the review page shows, gathered in a fixed number of queries."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from review.models import ReviewDecision, ReviewTask
from review.tasks.services import last_undoable_decision
from seke_app.engine.knowledge import VA_PRIORS
from seke_app.engine.vocab import AU_NAMES
from seke_app.models import Annotation, FaceImage


def _grain_reasons(annotation: Annotation) -> dict[str, list[str]]:
    """Flag reasons sorted under the grain they speak of (in words, as SV-UAMC wrote them)."""
    grains: dict[str, list[str]] = {"expression": [], "va": [], "aus": [], "other": []}
    for reason in annotation.flag_reasons:
        text = reason.lower()
        if "au" in text.split()[0:3] or " au" in text or text.startswith("au"):
            grains["aus"].append(reason)
        elif "valence" in text or "arousal" in text or " va " in f" {text} ":
            grains["va"].append(reason)
        elif "expression" in text or any(e in text for e in VA_PRIORS):
            grains["expression"].append(reason)
        else:
            grains["other"].append(reason)
    return grains


def chart_data(
    annotation: Annotation, expressions: tuple[str, ...], aus: tuple[int, ...]
) -> dict[str, Any]:
    """Plain data for the three plotly charts (passed to the page with json_script)."""
    return {
        "votes": {e: int(annotation.expression_votes.get(e, 0)) for e in expressions},
        "va_samples": annotation.va_samples,
        "va_aggregate": [annotation.valence, annotation.arousal]
        if annotation.valence is not None
        else None,
        "centroids": {
            e: [VA_PRIORS[e].valence, VA_PRIORS[e].arousal] for e in expressions if e in VA_PRIORS
        },
        "au_rates": [
            {"au": au, "name": AU_NAMES[au], "rate": float(annotation.au_rates.get(str(au), 0.0))}
            for au in aus
        ],
    }


def earlier_decisions(image: FaceImage) -> list[ReviewDecision]:
    """The image's decisions that stand (not undone, not gold answers), newest first."""
    return list(
        ReviewDecision.objects.filter(image=image, undone_at__isnull=True)
        .exclude(kind=ReviewTask.Kind.GOLD)
        .select_related("reviewer")
        .order_by("-created_at", "-id")
    )


def blind_task_page_context(task: ReviewTask, user: User) -> dict[str, Any]:
    """An audit task's page: the face and empty fields, nothing the machine said.

    No machine answer, confidence, flag reason, verification, sample chart or
    earlier decision: anything shown first pulls the reviewer's answer towards it
    (anchoring), and the audit exists to measure how often the machine is wrong.
    The dataset's own labels are left out for the same reason.
    """
    annotation = Annotation.objects.select_related("image__dataset", "run").get(
        id=task.annotation_id
    )
    vocabulary = annotation.image.dataset.vocabulary()
    return {
        "task": task,
        "image": annotation.image,
        "dataset": annotation.image.dataset,
        "expressions": list(enumerate(vocabulary.expressions, start=1)),
        "au_rows": [{"au": au, "name": AU_NAMES[au]} for au in vocabulary.aus],
        "undoable": last_undoable_decision(user),
        "lease_minutes": settings.REVIEW_LEASE_MINUTES,
    }


def task_page_context(task: ReviewTask, user: User) -> dict[str, Any]:
    annotation = Annotation.objects.select_related("image__dataset", "run", "prompt_version").get(
        id=task.annotation_id
    )
    image = annotation.image
    vocabulary = image.dataset.vocabulary()
    machine_aus = annotation.aus_dict()
    known_aus = image.known_aus_dict() or {}
    return {
        "task": task,
        "annotation": annotation,
        "image": image,
        "run": annotation.run,
        "expressions": list(enumerate(vocabulary.expressions, start=1)),
        "au_rows": [
            {
                "au": au,
                "name": AU_NAMES[au],
                "machine": machine_aus.get(au, False),
                "rate": float(annotation.au_rates.get(str(au), 0.0)),
                "intensity": annotation.au_intensity.get(str(au), ""),
                "known": known_aus.get(au),
            }
            for au in vocabulary.aus
        ],
        "reasons": _grain_reasons(annotation),
        "verification": annotation.verification,
        "charts": chart_data(annotation, vocabulary.expressions, vocabulary.aus),
        "undoable": last_undoable_decision(user),
        "lease_minutes": settings.REVIEW_LEASE_MINUTES,
        "earlier": earlier_decisions(image),
    }
