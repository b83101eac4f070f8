"""Review workflows: tasks for unconfident and audited annotations, claiming,
decisions, undo, re-review, and what a threshold change opens and closes.

One image, one review: a run opens no task for an image that already has a
human decision (not undone) or a live task (open or claimed), whichever run
made them; its machine answer is still stored and shown on the image's page.
Reviewing such an image again is an admin's explicit action
(``task_open_rereview``). Decisions on one image that disagree, on any of its
annotations, open an adjudication (``image_disputes``, the rule the human
label reads). Each run also draws a random share of all its images for a
blind audit (``RunItem.audit``): their tasks are ``audit`` tasks, whose page
shows no machine answer; an audited image that is also unconfident gets that
one task. An audited image that already has a decision or a live task gets no
audit task either, yet stays in the audit, so that the audit stays a uniform
draw: its standing decision is the reference (``insights.certificates.audit_rows``),
and a task waiting for it that nobody has claimed is made blind (``audit``), so
that its decision is free of anchoring; a claimed one serves once decided.

Claiming is a conditional UPDATE (status open, or claimed with an expired lease)
whose row count says whether this annotator won; on PostgreSQL the candidate is
first picked with ``SELECT ... FOR UPDATE SKIP LOCKED`` so that concurrent
annotators do not all race for the same row. Both paths are correct on SQLite.
A decision is a new row; the machine annotation is never modified.

Three locks keep concurrent requests from breaking the queue's rules on
PostgreSQL (SQLite runs one write transaction at a time, so there they hold
anyway):

- the reviewer's user row, taken first by every claim, decision, skip and undo,
  so one reviewer's requests (several tabs, a double click) act one at a time: a
  reviewer holds at most one task (plus the next one, which the review page
  claims ahead: ``task_claim_ahead``), and the queue's rule that nobody gets both
  independent reviews of an annotation reads that reviewer's latest claims;
- the annotation row, taken by every decision and undo, so that the second of two
  simultaneous reviews sees the first and opens the adjudication they need;
- the image row, taken by every decision and undo that is not a gold answer, so
  that whether the image is rejected is settled against every decision
  committed before it.

They are always taken in that order (the reviewer, the task or decision acted
on, its annotation, its image), so that two requests never wait for each other
in a cycle. ``FOR NO KEY UPDATE`` leaves the rows free for
the key-share locks that inserting a row pointing at them takes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from review.models import GoldQuestion, ReviewDecision, ReviewTask
from review.tasks.events import queue_watch
from review.tasks.store import ReviewDecisionStore
from seke_app.engine.calibration import CalibrationMap
from seke_app.engine.vocab import Vocabulary
from seke_app.insights.certificates import calibrated_confidence, calibrated_confidences
from seke_app.insights.references import human_references, image_disputes
from seke_app.models import Annotation, CalibrationFit, FaceImage, GenerationRun, RunItem
from seke_app.models.runs import confident
from seke_app.roles import is_admin

ORDERINGS = {
    "overall": "priority",
    "expression": "expression_confidence",
    "va": "va_confidence",
    "aus": "au_confidence",
}
INTENSITIES = {"A", "B", "C", "D", "E"}
CLAIM_ATTEMPTS = 20


class ReviewRefused(Exception):
    """A review action that is not allowed now; the message says why. Nothing changed."""


@dataclass(frozen=True)
class QueueFilter:
    run_code: str = ""
    dataset_code: str = ""
    flag_reason: str = ""
    expression: str = ""
    order: str = "overall"
    exclude_ids: tuple[int, ...] = field(default=())

    def apply(self, tasks: QuerySet[ReviewTask]) -> QuerySet[ReviewTask]:
        if self.run_code:
            tasks = tasks.filter(annotation__run__code=self.run_code)
        if self.dataset_code:
            tasks = tasks.filter(annotation__image__dataset__code=self.dataset_code)
        # Filters on the machine's answer leave audit tasks out: listing an audit
        # under a machine expression would tell the reviewer the answer.
        if self.expression:
            tasks = tasks.filter(annotation__expression=self.expression, audit=False)
        if self.flag_reason:
            tasks = tasks.filter(annotation__flag_reasons__icontains=self.flag_reason, audit=False)
        if self.exclude_ids:
            tasks = tasks.exclude(id__in=self.exclude_ids)
        return tasks.order_by(ORDERINGS.get(self.order, "priority"), "id")


LIVE = (ReviewTask.Status.OPEN, ReviewTask.Status.CLAIMED)
REVIEW_ROUNDS = (ReviewTask.Kind.FIRST, ReviewTask.Kind.SECOND)


def _task_values(annotation: Annotation) -> dict[str, float]:
    """Queue positions for a task that shows the machine's answer.

    The overall order (``priority``) is the calibrated confidence where the
    annotation's model and prompt version have a recalibration map, the raw one
    otherwise: the queue mixes runs whose raw confidences are not on one scale
    (``insights.certificates``, "Recalibration"). The per-grain orders stay raw;
    no map exists per grain.
    """
    return {
        "priority": calibrated_confidence(annotation),
        "expression_confidence": annotation.expression_confidence,
        "va_confidence": annotation.va_confidence,
        "au_confidence": annotation.au_confidence,
    }


def _blind_values(annotation: Annotation) -> dict[str, float]:
    """Queue positions for an audit task: one stable random number for every order.

    Ordered by confidence, audits of confident images would wait behind every
    flagged one, and the position would hint at the machine's confidence.
    """
    digest = hashlib.sha256(b"audit:" + str(annotation.code).encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return dict.fromkeys(
        ("priority", "expression_confidence", "va_confidence", "au_confidence"), position
    )


def double_reviewed(annotation: Annotation, share: float) -> bool:
    """Whether this annotation is in the run's double-review share (stable per annotation)."""
    if share <= 0:
        return False
    digest = hashlib.sha256(str(annotation.code).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _lock_images(image_ids: list[int]) -> None:
    """Serialise the tasks opened on these images (call inside atomic)."""
    list(
        FaceImage.objects.select_for_update(no_key=True)
        .filter(id__in=image_ids)
        .order_by("id")
        .values_list("id", flat=True)
    )


def busy_images() -> QuerySet[FaceImage]:
    """Images that a new run must not send to review again: they have a human
    decision (not undone, not a gold answer) or a live task (open or claimed)."""
    decided = ReviewDecision.objects.filter(undone_at__isnull=True).exclude(
        kind=ReviewTask.Kind.GOLD
    )
    live = ReviewTask.objects.filter(status__in=LIVE).exclude(kind=ReviewTask.Kind.GOLD)
    return FaceImage.objects.filter(
        Q(id__in=decided.values("image_id")) | Q(id__in=live.values("annotation__image_id"))
    )


def _audited(annotation: Annotation) -> bool:
    return RunItem.objects.filter(
        run_id=annotation.run_id, image_id=annotation.image_id, audit=True
    ).exists()


def task_create_for(annotation: Annotation) -> bool:
    """The review task a newly written annotation needs, if any (called in its transaction).

    An audited annotation gets one blind audit task whatever its confidence; an
    unconfident one (``confident()``) a first-review task, and a second one in the
    double-review share. Neither when the image already has a decision or a live
    task: one image, one review. An audited image stays audited all the same: its
    standing decision is the audit's reference, and a task waiting unclaimed on it
    is made blind (``_make_waiting_tasks_blind``).
    """
    audit = _audited(annotation)
    if not audit and annotation.is_confident(annotation.run.review_threshold):
        return False
    with transaction.atomic():
        return _open_first_task(annotation, audit=audit)


def _open_first_task(annotation: Annotation, *, audit: bool) -> bool:
    _lock_images([annotation.image_id])
    if busy_images().filter(id=annotation.image_id).exists():
        if audit:
            _make_waiting_tasks_blind(annotation.image_id)
        return False
    if audit:
        ReviewTask.objects.create(
            annotation=annotation,
            kind=ReviewTask.Kind.FIRST,
            audit=True,
            **_blind_values(annotation),
        )
        return True
    kinds = [ReviewTask.Kind.FIRST]
    if double_reviewed(annotation, annotation.run.double_review_share):
        kinds.append(ReviewTask.Kind.SECOND)
    for kind in kinds:
        ReviewTask.objects.create(annotation=annotation, kind=kind, **_task_values(annotation))
    return True


def _make_waiting_tasks_blind(image_id: int) -> int:
    """Turn the image's open, unclaimed review tasks into blind audit tasks; how many.

    Called, under the image's lock, when a run draws for its audit an image that
    already has a task waiting (one image, one review): the waiting task's decision
    will be the audit's reference, and made blind it is free of anchoring like any
    audit's. The task also takes an audit's queue position, which says nothing
    about the machine's confidence. Only a task still open changes: a reviewer who
    has claimed it may have seen the machine's answer already.

    It writes tasks after taking the image's lock, the reverse of a decision's
    order; no cycle can form, because it only touches open tasks, which no decision
    or undo holds, and a claim holds one only for its own update, taking no image.
    """
    waiting = ReviewTask.objects.filter(
        annotation__image_id=image_id,
        status=ReviewTask.Status.OPEN,
        kind__in=REVIEW_ROUNDS,
        audit=False,
    ).select_related("annotation")
    return sum(
        ReviewTask.objects.filter(id=task.id, status=ReviewTask.Status.OPEN).update(
            audit=True, **_blind_values(task.annotation)
        )
        for task in waiting
    )


def task_open_rereview(*, image: FaceImage, user: User) -> ReviewTask:
    """An admin's explicit request to have an image reviewed again: a first-review
    task on its latest annotation, recorded as opened by them."""
    if not is_admin(user):
        raise ReviewRefused("Only an admin can send an image to review again.")
    with transaction.atomic():
        _lock_images([image.id])
        live = ReviewTask.objects.filter(annotation__image=image, status__in=LIVE).exclude(
            kind=ReviewTask.Kind.GOLD
        )
        if live.exists():
            raise ReviewRefused("A review of this image is already waiting in the queue.")
        annotation = image.annotations.select_related("run").order_by("-created_at", "-id").first()
        if annotation is None:
            raise ReviewRefused("The image has no machine answer to review yet: run it first.")
        return ReviewTask.objects.create(
            annotation=annotation,
            kind=ReviewTask.Kind.FIRST,
            opened_by=user,
            **_task_values(annotation),
        )


def tasks_follow_threshold(run: GenerationRun) -> tuple[int, int]:
    """Make the run's review tasks agree with its current threshold; (opened, closed).

    Called inside the transaction that changed the threshold, with the run's row
    locked. Open first-review tasks (and expired claims) of annotations that are
    now confident are closed with the reason; audit and adjudication tasks stay,
    since neither depends on the threshold. Annotations that are now unconfident
    and have no task get one by the rule of ``task_create_for``. Tasks are closed
    before images are locked, in the order a decision takes them (task, image).
    """
    now = timezone.now()
    annotations = Annotation.objects.filter(run=run)
    closed = (
        ReviewTask.objects.filter(
            _available(now),
            annotation__in=annotations.filter(confident()),
            kind__in=REVIEW_ROUNDS,
            audit=False,
        )
        .exclude(opened_by__isnull=False)
        .update(
            status=ReviewTask.Status.CLOSED,
            holder=None,
            lease_until=None,
            closed_at=now,
            closed_reason=(
                f"confident under the run's new review threshold {run.review_threshold:.3f}"
            ),
        )
    )
    unconfident = annotations.exclude(confident()).exclude(image__rejected=True)
    candidates = unconfident.exclude(image__in=busy_images())
    _lock_images(list(candidates.values_list("image_id", flat=True)))
    # A run annotates an image once, so each candidate is its image's only one here;
    # ``task_create_for`` checks again under the image's lock.
    opened = sum(
        task_create_for(annotation)
        for annotation in candidates.select_related("run").order_by("confidence", "id")
    )
    if closed:
        # The tasks closed may have been the run's last waiting ones (webhooks are told).
        queue_watch(run.id)
    return opened, closed


def tasks_follow_calibration(fit: CalibrationFit) -> int:
    """Re-rank the waiting tasks of the fit's model and prompt version by its map; how many.

    Called in the transaction that stored the map. Waiting (open or claimed) review
    and adjudication tasks of annotations of the pair's runs take their calibrated
    confidence as ``priority``, as a task opened from now on does; audit tasks keep
    their blind position, and gold answers are not in the queue. On PostgreSQL a
    task locked at that moment by a review in progress is skipped rather than
    waited for (it is being decided or given back): the certification that fits a
    map may hold image locks such a review waits for.
    """
    tasks = ReviewTask.objects.filter(
        status__in=LIVE,
        audit=False,
        annotation__run__model_name=fit.model_name,
        annotation__run__strong_model=fit.strong_model,
        annotation__run__prompt_version_id=fit.prompt_version_id,
    ).exclude(kind=ReviewTask.Kind.GOLD)
    if connection.features.has_select_for_update_skip_locked:
        tasks = tasks.select_for_update(skip_locked=True, of=("self",))
    rows = list(tasks.order_by("id").values_list("id", "annotation__confidence"))
    mapped = calibrated_confidences(
        CalibrationMap.from_json(fit.calibration), [raw for _, raw in rows]
    )
    ReviewTask.objects.bulk_update(
        [ReviewTask(id=pk, priority=p) for (pk, _), p in zip(rows, mapped, strict=True)],
        ["priority"],
        batch_size=1000,
    )
    return len(rows)


def audit_tasks_open_more(run: GenerationRun, n: int) -> int:
    """Add up to ``n`` more of the run's images to its blind audit; how many it added.

    Drawn uniformly at random (seeded by the run's audit seed and how many of its
    images are audited already, so a repeat draws afresh) among the run's
    annotations that are not audited yet and not held (flagged for a reason no
    threshold changes, so never auto-accepted), whatever their image's state, so
    that the audit stays a uniform sample of what a certificate covers. Each drawn
    image is recorded as audited (``RunItem.audit``) in the same transaction and
    gets a blind audit task, unless it already has a decision or a live task (one
    image, one review): then its standing decision is the reference, and a task
    waiting unclaimed is made blind (``_open_first_task``).
    """
    if n <= 0:
        return 0
    with transaction.atomic():
        items = RunItem.objects.filter(run=run)
        audited = items.filter(audit=True)
        candidates = list(
            Annotation.objects.filter(run=run, held=False)
            .exclude(image_id__in=audited.values("image_id"))
            .order_by("id")
            .values_list("id", flat=True)
        )
        rng = random.Random(f"{run.audit_seed}:{audited.count()}")
        drawn = rng.sample(candidates, min(n, len(candidates)))
        for annotation in Annotation.objects.filter(id__in=drawn).select_related("run"):
            _open_first_task(annotation, audit=True)
            items.filter(image_id=annotation.image_id).update(audit=True)
        return len(drawn)


def _available(now: Any) -> Q:
    # The first term repeats what the second implies so that the planner matches
    # the partial queue indexes (status in open, claimed) without having to prove it.
    return Q(status__in=[ReviewTask.Status.OPEN, ReviewTask.Status.CLAIMED]) & (
        Q(status=ReviewTask.Status.OPEN) | Q(status=ReviewTask.Status.CLAIMED, lease_until__lt=now)
    )


def queue_tasks(queue_filter: QueueFilter, user: User | None = None) -> QuerySet[ReviewTask]:
    """Tasks awaiting review (open, or held under an expired lease), in queue order.

    With a user: only what that user may take. Adjudication is for admins; a second
    review must be independent, so nobody gets both rounds of the same annotation.
    """
    tasks = ReviewTask.objects.filter(_available(timezone.now())).exclude(kind=ReviewTask.Kind.GOLD)
    if user is not None:
        if not is_admin(user):
            tasks = tasks.exclude(kind=ReviewTask.Kind.ADJUDICATION)
        seen = ReviewDecision.objects.filter(reviewer=user).values("annotation_id")
        held = (
            ReviewTask.objects.filter(holder=user)
            .exclude(kind=ReviewTask.Kind.GOLD)
            .values("annotation_id")
        )
        tasks = tasks.exclude(
            Q(kind__in=[ReviewTask.Kind.FIRST, ReviewTask.Kind.SECOND])
            & (Q(annotation_id__in=seen) | Q(annotation_id__in=held))
        )
    return queue_filter.apply(tasks)


def task_held_by(user: User) -> ReviewTask | None:
    return (
        ReviewTask.objects.filter(
            holder=user, status=ReviewTask.Status.CLAIMED, lease_until__gte=timezone.now()
        )
        .order_by("claimed_at")
        .first()
    )


def task_holds(task: ReviewTask, user: User) -> bool:
    """Whether ``user`` holds ``task`` under a lease that has not run out."""
    return (
        task.status == ReviewTask.Status.CLAIMED
        and task.holder_id == user.id
        and task.lease_until is not None
        and task.lease_until >= timezone.now()
    )


def lease() -> timedelta:
    return timedelta(minutes=settings.REVIEW_LEASE_MINUTES)


def _lock_reviewer(user: User) -> None:
    """Serialise this reviewer's queue actions (call first, inside atomic)."""
    User.objects.select_for_update(no_key=True).values_list("id").get(id=user.id)


def _lock_annotation(annotation_id: int) -> None:
    """Serialise the decisions on one annotation (call inside atomic, after the task)."""
    Annotation.objects.select_for_update(no_key=True).values_list("id").get(id=annotation_id)


@transaction.atomic
def task_claim_next(*, user: User, queue_filter: QueueFilter | None = None) -> ReviewTask | None:
    """The task this annotator holds, else the next one in the queue, claimed atomically.

    One reviewer's claims run one at a time, so simultaneous requests from one
    session find the task the first of them claimed instead of claiming more.
    """
    _lock_reviewer(user)
    held = task_held_by(user)
    if held is not None:
        return held
    return _claim_new(user, queue_filter or QueueFilter())


def task_claim_ahead(
    *, user: User, current: ReviewTask, queue_filter: QueueFilter | None = None
) -> ReviewTask | None:
    """The task this reviewer gets after ``current``, claimed now; None when none is left.

    The review page fetches it while the reviewer looks at ``current``, so that the
    next face is on screen the moment ``current`` is decided. A reviewer thus holds
    at most two tasks: the one on screen and the next. Asked again, it returns the
    same next task; ``current``'s lease starts again, since it is the one being
    looked at. Refused (nothing changes) when ``current`` is no longer this
    reviewer's.
    """
    with transaction.atomic():
        _lock_reviewer(user)
        held = _held_task(current.id, user)
        now = timezone.now()
        ReviewTask.objects.filter(id=held.id).update(lease_until=now + lease())
        ahead = (
            ReviewTask.objects.filter(
                holder=user, status=ReviewTask.Status.CLAIMED, lease_until__gte=now
            )
            .exclude(id=held.id)
            .order_by("claimed_at", "id")
            .first()
        )
        return ahead or _claim_new(user, queue_filter or QueueFilter())


def tasks_release(
    *, user: User, codes: Sequence[str] = (), keep: QueueFilter | None = None
) -> list[ReviewTask]:
    """Give back tasks this reviewer holds (all, or those named by ``codes``); the ones given back.

    With ``keep``, a task that this queue filter admits stays held, and so does a
    gold question (it is unannounced, and belongs to no filter): starting again with
    other filters gives back only what they leave out.
    """
    with transaction.atomic():
        _lock_reviewer(user)
        held = ReviewTask.objects.filter(holder=user, status=ReviewTask.Status.CLAIMED)
        if codes:
            held = held.filter(code__in=codes)
        if keep is not None:
            kept = keep.apply(held).values("id")
            held = held.exclude(id__in=kept).exclude(kind=ReviewTask.Kind.GOLD)
        released = list(held.select_related("annotation__image").order_by("claimed_at", "id"))
        ReviewTask.objects.filter(id__in=[t.id for t in released]).update(
            status=ReviewTask.Status.OPEN, holder=None, lease_until=None
        )
    return released


def _claim_new(user: User, queue_filter: QueueFilter) -> ReviewTask | None:
    """Claim a gold question now and then, else the next task of the queue (call locked)."""
    gold = _gold_task(user)
    if gold is not None:
        return gold
    if is_admin(user):
        # Disagreements wait for an admin: they come first in an admin's queue.
        adjudication = _claim_from(
            queue_tasks(queue_filter, user).filter(kind=ReviewTask.Kind.ADJUDICATION), user
        )
        if adjudication is not None:
            return adjudication
    return _claim_from(queue_tasks(queue_filter, user), user)


def _gold_task(user: User) -> ReviewTask | None:
    """Now and then (SEKE_GOLD_RATE), a gold question this reviewer has not answered yet."""
    if settings.GOLD_RATE <= 0 or random.random() >= settings.GOLD_RATE:
        return None
    answered = ReviewTask.objects.filter(kind=ReviewTask.Kind.GOLD, holder=user).values("gold_id")
    question = (
        GoldQuestion.objects.filter(active=True, image__annotations__isnull=False)
        .exclude(id__in=answered)
        .order_by("?")
        .first()
    )
    if question is None:
        return None
    annotation = question.image.annotations.order_by("-created_at").first()
    assert annotation is not None
    now = timezone.now()
    # Made already claimed by this reviewer, so it looks like any other task.
    return ReviewTask.objects.create(
        annotation=annotation,
        kind=ReviewTask.Kind.GOLD,
        gold=question,
        status=ReviewTask.Status.CLAIMED,
        holder=user,
        lease_until=now + lease(),
        claimed_at=now,
        **_task_values(annotation),
    )


def _claim_from(tasks: QuerySet[ReviewTask], user: User) -> ReviewTask | None:
    for _ in range(CLAIM_ATTEMPTS):
        # The row lock (PostgreSQL) is held until the conditional UPDATE commits, so
        # concurrent annotators skip this row instead of racing for it.
        with transaction.atomic():
            candidate = _candidate(tasks)
            if candidate is None:
                return None
            if _take(candidate, user):
                return ReviewTask.objects.get(id=candidate)
    return None


def _candidate(tasks: QuerySet[ReviewTask]) -> int | None:
    if connection.features.has_select_for_update_skip_locked:
        row = tasks.select_for_update(skip_locked=True, of=("self",)).values_list("id", flat=True)[
            :1
        ]
        return next(iter(row), None)
    return tasks.values_list("id", flat=True).first()


def _take(task_id: int, user: User) -> bool:
    now = timezone.now()
    return (
        ReviewTask.objects.filter(_available(now), id=task_id).update(
            status=ReviewTask.Status.CLAIMED, holder=user, lease_until=now + lease(), claimed_at=now
        )
        == 1
    )


def _held_task(task_id: int, user: User) -> ReviewTask:
    """Lock the task and check that ``user`` still holds it (call inside atomic)."""
    task = ReviewTask.objects.select_for_update().get(id=task_id)
    if task.status == ReviewTask.Status.DONE:
        raise ReviewRefused("This task has already been decided.")
    if task.holder_id != user.id or task.status != ReviewTask.Status.CLAIMED:
        raise ReviewRefused("This task is not yours: claim it from the queue first.")
    if task.lease_until is None or task.lease_until < timezone.now():
        raise ReviewRefused(
            "Your hold on this task expired and it went back to the queue; nothing was saved."
        )
    return task


def task_skip(*, task: ReviewTask, user: User) -> None:
    """Give the task back to the queue."""
    with transaction.atomic():
        _lock_reviewer(user)
        held = _held_task(task.id, user)
        held.status = ReviewTask.Status.OPEN
        held.holder = None
        held.lease_until = None
        held.save(update_fields=["status", "holder", "lease_until"])


def task_skip_undo(*, task: ReviewTask, user: User) -> ReviewTask:
    """Take back one's skip: the skipped task is this reviewer's again.

    Refused when it is no longer waiting (another reviewer took it, or it was closed).
    As with undoing a decision, the tasks held since (the next one) go back to the
    queue, so that the task brought back is the one on screen.
    """
    with transaction.atomic():
        _lock_reviewer(user)
        now = timezone.now()
        row = ReviewTask.objects.select_for_update().get(id=task.id)
        if not ReviewTask.objects.filter(_available(now), id=row.id).exists():
            raise ReviewRefused("The face you skipped is no longer waiting: someone took it.")
        ReviewTask.objects.filter(holder=user, status=ReviewTask.Status.CLAIMED).exclude(
            id=row.id
        ).exclude(kind=ReviewTask.Kind.GOLD).update(
            status=ReviewTask.Status.OPEN, holder=None, lease_until=None
        )
        ReviewTask.objects.filter(id=row.id).update(
            status=ReviewTask.Status.CLAIMED, holder=user, lease_until=now + lease(), claimed_at=now
        )
    return ReviewTask.objects.select_related("annotation__image").get(id=row.id)


@dataclass(frozen=True)
class Decision:
    """What an annotator decided; values are validated by ``decision_record``."""

    action: str
    expression: str | None = None
    valence: float | None = None
    arousal: float | None = None
    aus: dict[int, bool] | None = None
    au_intensity: dict[int, str] = field(default_factory=dict)
    note: str = ""
    reject_reason: str = ""
    time_spent_ms: int = 0


def _machine_values(annotation: Annotation) -> dict[str, Any]:
    return {
        "expression": annotation.expression,
        "valence": annotation.valence,
        "arousal": annotation.arousal,
        "aus": annotation.aus,
        "au_intensity": annotation.au_intensity,
        "confidence": annotation.confidence,
    }


# The review page shows valence and arousal to three decimals: values that round to
# the machine's there are the machine's.
VA_TOLERANCE = 0.0005
GRAINS = frozenset({"expression", "va", "aus"})


def _same_value(given: float | None, machine: float | None) -> bool:
    if given is None or machine is None:
        return given is None and machine is None
    return abs(given - machine) <= VA_TOLERANCE + 1e-9


def unchanged_grains(decision: Decision, annotation: Annotation) -> set[str]:
    """The grains (expression, va, aus) whose decided values are the machine's.

    AUs are unchanged when every AU is on or off as the machine said and the present
    ones have its intensities; a decision that states no AUs (``aus`` None) has not
    kept them.
    """
    same = set()
    if decision.expression == annotation.expression:
        same.add("expression")
    if _same_value(decision.valence, annotation.valence) and _same_value(
        decision.arousal, annotation.arousal
    ):
        same.add("va")
    machine = annotation.aus_dict()
    if decision.aus is not None and all(
        bool(decision.aus.get(au)) == machine.get(au, False) for au in {*decision.aus, *machine}
    ):
        intensity = {
            int(au): level
            for au, level in annotation.au_intensity.items()
            if machine.get(int(au)) and level
        }
        if {au: level for au, level in decision.au_intensity.items() if level} == intensity:
            same.add("aus")
    return same


def validate_decision(
    decision: Decision, vocabulary: Vocabulary, *, blind: bool = False
) -> list[str]:
    """Every problem with the values, in words; empty when they are valid.

    A blind audit has no machine answer to accept: the reviewer labels every grain
    (expression, valence and arousal; the AUs are the boxes ticked) or rejects the
    image.
    """
    problems = []
    if blind and decision.action == ReviewDecision.Action.ACCEPT:
        problems.append("an audit is blind: there is no machine answer to accept, label the face")
    if blind and decision.action == ReviewDecision.Action.CORRECT:
        if decision.expression is None:
            problems.append("choose the expression")
        if decision.valence is None or decision.arousal is None:
            problems.append("set valence and arousal")
    if decision.action not in ReviewDecision.Action.values:
        problems.append(f"unknown action {decision.action!r}")
    if decision.action == ReviewDecision.Action.REJECT_IMAGE and not decision.reject_reason:
        problems.append("say why the image is rejected")
    if decision.action == ReviewDecision.Action.CORRECT:
        if decision.expression is not None and decision.expression not in vocabulary.expressions:
            problems.append(f"expression {decision.expression!r} is not in the vocabulary")
        for name, value in (("valence", decision.valence), ("arousal", decision.arousal)):
            if value is not None and not -1.0 <= value <= 1.0:
                problems.append(f"{name} {value} is outside [-1, 1]")
        if (decision.valence is None) != (decision.arousal is None):
            problems.append("valence and arousal must be given together")
        unknown = sorted(set(decision.aus or {}) - set(vocabulary.aus))
        if unknown:
            problems.append("unknown AUs: " + ", ".join(f"AU{a}" for a in unknown))
        bad = {a: i for a, i in decision.au_intensity.items() if i not in INTENSITIES}
        if bad:
            problems.append("AU intensity must be A-E")
    if not 0 <= decision.time_spent_ms <= 24 * 3600 * 1000:
        problems.append("time spent is out of range")
    return problems


def decision_record(*, task: ReviewTask, user: User, decision: Decision) -> ReviewDecision:
    """Record a decision on a task the user holds; refuse (changing nothing) otherwise.

    A correction that changes nothing (``unchanged_grains``) is recorded as an accept.

    The annotation's row stays locked until the decision commits, so that when the
    two independent reviews of an annotation are decided at the same moment, the
    later one sees the earlier and opens the adjudication a disagreement needs.
    """
    annotation = Annotation.objects.select_related("image__dataset").get(id=task.annotation_id)
    problems = validate_decision(decision, annotation.image.dataset.vocabulary(), blind=task.audit)
    if problems:
        raise ReviewRefused("; ".join(problems).capitalize() + ".")
    # A correction that keeps every machine value is an accept: recorded as
    # "corrected" with before = after, it would count as a machine error. A blind
    # audit's labels are the reviewer's own, whatever they are.
    if (
        not task.audit
        and decision.action == ReviewDecision.Action.CORRECT
        and unchanged_grains(decision, annotation) == GRAINS
    ):
        decision = replace(decision, action=ReviewDecision.Action.ACCEPT)
    with transaction.atomic():
        _lock_reviewer(user)
        held = _held_task(task.id, user)
        _lock_annotation(held.annotation_id)
        row = ReviewDecision.objects.create(
            task=held,
            annotation=annotation,
            image=annotation.image,
            reviewer=user,
            kind=held.kind,
            audit=held.audit,
            before=_machine_values(annotation),
            **_after_values(decision, annotation),
        )
        held.status = ReviewTask.Status.DONE
        held.lease_until = None
        held.closed_at = timezone.now()
        held.save(update_fields=["status", "lease_until", "closed_at"])
        if held.kind != ReviewTask.Kind.GOLD:
            _settle_rejection(annotation.image_id)
        if held.kind in REVIEW_ROUNDS:
            _adjudicate_if_needed(annotation)
        if held.kind != ReviewTask.Kind.GOLD:
            # It may have been the run's last waiting task (webhooks are told).
            queue_watch(annotation.run_id)
    return row


def _image_disputed(image_id: int) -> bool:
    """Whether the image's standing decisions disagree, by the human label's own rule."""
    decisions = ReviewDecisionStore().decisions(
        image_ids=FaceImage.objects.filter(id=image_id).values("id")
    )
    return bool(image_disputes(decisions))


def _adjudicate_if_needed(annotation: Annotation) -> None:
    """Open an adjudication when the image's standing decisions disagree.

    The decisions may be on different annotations of the image (another run's,
    or a re-review); the image row, locked by ``_settle_rejection`` before this,
    makes the later of two simultaneous decisions see the earlier one.
    """
    if not _image_disputed(annotation.image_id):
        return
    waiting = ReviewTask.objects.filter(
        annotation__image_id=annotation.image_id,
        kind=ReviewTask.Kind.ADJUDICATION,
        status__in=LIVE,
    )
    if not waiting.exists():
        ReviewTask.objects.create(
            annotation=annotation, kind=ReviewTask.Kind.ADJUDICATION, **_task_values(annotation)
        )


def _after_values(decision: Decision, annotation: Annotation) -> dict[str, Any]:
    common = {
        "action": decision.action,
        "note": decision.note[:5000],
        "reject_reason": decision.reject_reason[:200],
        "time_spent_ms": decision.time_spent_ms,
    }
    if decision.action == ReviewDecision.Action.ACCEPT:
        return common | {
            "expression": annotation.expression,
            "valence": annotation.valence,
            "arousal": annotation.arousal,
            "aus": annotation.aus,
            "au_intensity": annotation.au_intensity,
        }
    if decision.action == ReviewDecision.Action.REJECT_IMAGE:
        return common | {"aus": None}
    return common | {
        "expression": decision.expression,
        "valence": decision.valence,
        "arousal": decision.arousal,
        "aus": {str(a): on for a, on in sorted(decision.aus.items())}
        if decision.aus is not None
        else None,
        "au_intensity": {str(a): i for a, i in sorted(decision.au_intensity.items())},
    }


def undo_window() -> timedelta:
    return timedelta(seconds=settings.REVIEW_UNDO_SECONDS)


def decision_undo(*, decision: ReviewDecision, user: User) -> ReviewTask:
    """Take back one's own recent decision; the task returns to its reviewer.

    Whether the image stays rejected is settled again from the decisions that
    still stand.
    """
    with transaction.atomic():
        _lock_reviewer(user)
        row = ReviewDecision.objects.select_for_update().get(id=decision.id)
        if row.reviewer_id != user.id:
            raise ReviewRefused("Only the reviewer who made a decision can undo it.")
        if row.undone_at is not None:
            raise ReviewRefused("This decision has already been undone.")
        if timezone.now() - row.created_at > undo_window():
            raise ReviewRefused("Too late to undo: the undo window has passed.")
        _lock_annotation(row.annotation_id)
        now = timezone.now()
        # A task claimed since then goes back to the queue, in the same transaction,
        # so that the undone task is the one the reviewer holds.
        ReviewTask.objects.filter(holder=user, status=ReviewTask.Status.CLAIMED).exclude(
            id=row.task_id
        ).exclude(kind=ReviewTask.Kind.GOLD).update(
            status=ReviewTask.Status.OPEN, holder=None, lease_until=None
        )
        row.undone_at = now
        row.save(update_fields=["undone_at"])
        ReviewTask.objects.filter(id=row.task_id).update(
            status=ReviewTask.Status.CLAIMED,
            holder=user,
            lease_until=now + lease(),
            claimed_at=now,
            closed_at=None,
        )
        if row.kind != ReviewTask.Kind.GOLD:
            _settle_rejection(row.image_id)
        # An adjudication nobody has started is withdrawn with the review it came
        # from, unless the decisions that still stand disagree too.
        if not _image_disputed(row.image_id):
            ReviewTask.objects.filter(
                annotation__image_id=row.image_id,
                kind=ReviewTask.Kind.ADJUDICATION,
                status=ReviewTask.Status.OPEN,
            ).delete()
    return ReviewTask.objects.get(id=row.task_id)


def _settle_rejection(image_id: int) -> None:
    """Mark the image rejected exactly when its human label says so.

    The rule is the one curation and scoring read (``human_references``): the
    deciding review rejects it, and an independent second review, if any, agrees.
    """
    FaceImage.objects.select_for_update(no_key=True).values_list("id").get(id=image_id)
    reference = human_references(FaceImage.objects.filter(id=image_id).values("id"), gold=False)
    settled = reference.get(image_id)
    FaceImage.objects.filter(id=image_id).update(rejected=settled is not None and settled.rejected)


def last_undoable_decision(user: User) -> ReviewDecision | None:
    return (
        ReviewDecision.objects.filter(
            reviewer=user, undone_at__isnull=True, created_at__gte=timezone.now() - undo_window()
        )
        .order_by("-created_at")
        .first()
    )
