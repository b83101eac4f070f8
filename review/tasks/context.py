"""Everything the review page shows, gathered in a fixed number of queries.

The page is two parts: the bar, which stays on screen from one face to the next
(progress in the queue, undo, release), and one task's panel, which the page's
script also fetches on its own for the next face (``panel_context``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.conf import settings
from django.db.models import Count, Q

from review.models import ReviewDecision, ReviewTask
from review.tasks.services import LIVE, QueueFilter
from seke_app.engine.knowledge import VA_PRIORS
from seke_app.engine.vocab import AU_NAMES
from seke_app.models import Annotation, Dataset, FaceImage, GenerationRun

# How SV-UAMC's reasons about one grain begin (``engine.uamc.reasons``).
_GRAIN_OPENINGS = (
    ("expression confidence", "expression"),
    ("valence/arousal confidence", "va"),
    ("au confidence", "aus"),
    ("verification revised the expression", "expression"),
    ("verification revised valence/arousal", "va"),
    ("verification revised the aus", "aus"),
)


def _grain_reasons(annotation: Annotation) -> dict[str, list[str]]:
    """Flag reasons sorted under the grain they speak of (in words, as SV-UAMC wrote them)."""
    grains: dict[str, list[str]] = {"expression": [], "va": [], "aus": [], "other": []}
    for reason in annotation.flag_reasons:
        text = reason.lower()
        opening = next((g for start, g in _GRAIN_OPENINGS if text.startswith(start)), None)
        if opening is not None:
            grains[opening].append(reason)
        elif "au" in text.split()[0:3] or " au" in text or text.startswith("au"):
            grains["aus"].append(reason)
        elif "valence" in text or "arousal" in text or " va " in f" {text} ":
            grains["va"].append(reason)
        elif "expression" in text or any(e in text for e in VA_PRIORS):
            grains["expression"].append(reason)
        else:
            grains["other"].append(reason)
    return grains


_GRAIN_WORDS = {"expression": "expression", "va": "valence-arousal", "aus": "AUs"}


def provenance_of(annotation: Annotation) -> dict[str, dict[str, str]]:
    """Where each grain of the machine answer comes from, as the page names it:
    given by the dataset (a known label the answer carries), inferred from another
    grain (one the backend does not observe), or predicted by the model."""
    inferred = annotation.inferred_from
    shown = {}
    for grain, source in annotation.grain_provenance().items():
        if source == "dataset":
            kind, words = "dataset", "given by the dataset"
        elif grain in inferred:
            kind, words = "inferred", f"inferred from the {_GRAIN_WORDS[inferred[grain]]}"
        else:
            kind, words = "model", "predicted by the model"
        shown[grain] = {"kind": kind, "words": words}
    return shown


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


def va_value(value: float | None) -> str:
    """A valence or arousal as its field shows it: at most three decimals, "" for none.

    Machine values are means of samples (``-0.34945000000000004``); three decimals
    are finer than anyone sets them, and the decision service takes a value that
    rounds to the machine's as the machine's (``services.VA_TOLERANCE``).
    """
    if value is None:
        return ""
    return format(round(value, 3) + 0.0, "g")


PANELS = {True: "review/tasks/_panel_blind.html", False: "review/tasks/_panel.html"}


def panel_template(task: ReviewTask) -> str:
    return PANELS[task.audit]


def panel_context(task: ReviewTask) -> dict[str, Any]:
    """The context of the task's panel: blind for an audit task, full otherwise."""
    return blind_panel_context(task) if task.audit else full_panel_context(task)


def blind_panel_context(task: ReviewTask) -> dict[str, Any]:
    """An audit task's panel: the face and empty fields, nothing the machine said.

    No machine answer, confidence, flag reason, verification, sample chart or
    earlier decision: anything shown first pulls the reviewer's answer towards it
    (anchoring), and the audit exists to measure how often the machine is wrong.
    The dataset's own labels are left out for the same reason. The panel is also
    what the page fetches ahead for the next face, so this holds for that too.
    """
    annotation = Annotation.objects.select_related("image__dataset").get(id=task.annotation_id)
    vocabulary = annotation.image.dataset.vocabulary()
    return {
        "task": task,
        "image": annotation.image,
        "dataset": annotation.image.dataset,
        "expressions": list(enumerate(vocabulary.expressions, start=1)),
        "au_rows": [{"au": au, "name": AU_NAMES[au]} for au in vocabulary.aus],
        "lease_minutes": settings.REVIEW_LEASE_MINUTES,
    }


def full_panel_context(task: ReviewTask) -> dict[str, Any]:
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
        "valence_value": va_value(annotation.valence),
        "arousal_value": va_value(annotation.arousal),
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
        "provenance": provenance_of(annotation),
        "verification": annotation.verification,
        "charts": chart_data(annotation, vocabulary.expressions, vocabulary.aus),
        "lease_minutes": settings.REVIEW_LEASE_MINUTES,
        "earlier": earlier_decisions(image),
    }


def queue_progress(queue_filter: QueueFilter) -> dict[str, int]:
    """How far the queue under these filters is: tasks decided, tasks left, in one query.

    Left counts every task still waiting, held or not, by anyone; skipped ones too
    (they are skipped for one session, not done). Gold questions are no part of a
    queue, and a task closed without a decision is neither done nor left.
    """
    tasks = replace(queue_filter, exclude_ids=()).apply(
        ReviewTask.objects.exclude(kind=ReviewTask.Kind.GOLD)
    )
    counts = tasks.order_by().aggregate(
        done=Count("id", filter=Q(status=ReviewTask.Status.DONE)),
        left=Count("id", filter=Q(status__in=LIVE)),
    )
    return {
        "done": counts["done"],
        "left": counts["left"],
        "total": counts["done"] + counts["left"],
    }


def filter_words(queue_filter: QueueFilter) -> str:
    """The queue the filters select, in words: "this queue (run demo #2, happiness)"."""
    parts = []
    if queue_filter.run_code:
        run = GenerationRun.objects.select_related("dataset").filter(code=queue_filter.run_code)
        parts += [f"run {r.label}" for r in run]
    if queue_filter.dataset_code:
        parts += [
            f"dataset {d.name}" for d in Dataset.objects.filter(code=queue_filter.dataset_code)
        ]
    if queue_filter.expression:
        parts.append(f"machine expression {queue_filter.expression}")
    if queue_filter.flag_reason:
        parts.append(f"flag reason contains “{queue_filter.flag_reason}”")
    return f"this queue ({', '.join(parts)})" if parts else "the whole queue"


def bar_context(queue_filter: QueueFilter, *, undoable: bool) -> dict[str, Any]:
    """What the bar above every face shows: progress in this queue, and whether undo can act."""
    return {
        "progress": queue_progress(queue_filter),
        "filter_words": filter_words(queue_filter),
        "undoable": undoable,
    }
