"""The review queue and the review page."""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.models import User
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from review.models import ReviewTask
from review.tasks.context import blind_task_page_context, task_page_context
from review.tasks.forms import DecisionFormError, decision_from_post
from review.tasks.services import (
    ORDERINGS,
    QueueFilter,
    ReviewRefused,
    decision_record,
    decision_undo,
    last_undoable_decision,
    queue_tasks,
    task_claim_next,
    task_held_by,
    task_open_rereview,
    task_skip,
)
from seke_app.engine.vocab import EXPRESSIONS
from seke_app.models import Dataset, FaceImage, GenerationRun
from seke_app.roles import admin_required, annotator_required, request_user

SKIPPED = "review_skipped"
# The queue filters chosen when reviewing started; the next task after a decision or
# a skip is claimed under them. They are not read from the decision form, whose
# ``expression`` field is the reviewer's answer, not a filter.
FILTERS = "review_filters"
FILTER_FIELDS = ("run", "dataset", "reason", "expression", "order")


def _code(value: str) -> str:
    """A UUID filter value, or "" for anything else (which would fail the query)."""
    try:
        return str(UUID(value)) if value else ""
    except ValueError:
        return ""


def _queue_filter(request: HttpRequest, params: Mapping[str, str]) -> QueueFilter:
    return QueueFilter(
        run_code=_code(params.get("run", "")),
        dataset_code=_code(params.get("dataset", "")),
        flag_reason=params.get("reason", "").strip(),
        expression=params.get("expression", ""),
        order=params.get("order", "overall") if params.get("order") in ORDERINGS else "overall",
        exclude_ids=tuple(request.session.get(SKIPPED, [])),
    )


@annotator_required
def queue(request: HttpRequest) -> HttpResponse:
    queue_filter = _queue_filter(request, request.GET)
    tasks = queue_tasks(queue_filter, request_user(request)).select_related(
        "annotation__image", "annotation__run__dataset"
    )
    counts = dict(ReviewTask.objects.values_list("status").annotate(n=Count("id")).order_by())
    context = {
        "tasks": tasks[:100],
        "n_waiting": queue_tasks(queue_filter, request_user(request)).count(),
        "counts": counts,
        "filter": queue_filter,
        "orders": list(ORDERINGS),
        "expressions": EXPRESSIONS,
        "runs": GenerationRun.objects.select_related("dataset")[:50],
        "datasets": Dataset.objects.all(),
        "held": task_held_by(request_user(request)),
        "undoable": last_undoable_decision(request_user(request)),
    }
    return render(request, "review/tasks/queue.html", context)


def _next_or_queue(request: HttpRequest) -> HttpResponse:
    filters = request.session.get(FILTERS, {})
    task = task_claim_next(user=request_user(request), queue_filter=_queue_filter(request, filters))
    if task is None:
        messages.info(request, "Nothing left to review with these filters.")
        return redirect("review:queue")
    return redirect("review:task", code=task.code)


@require_POST
@annotator_required
def start(request: HttpRequest) -> HttpResponse:
    # Written only when they change: a session write costs a query on every claim.
    if request.session.get(SKIPPED):
        request.session[SKIPPED] = []
    filters = {name: request.POST.get(name, "") for name in FILTER_FIELDS}
    if request.session.get(FILTERS) != filters:
        request.session[FILTERS] = filters
    return _next_or_queue(request)


def _get_task(code: UUID) -> ReviewTask:
    return get_object_or_404(ReviewTask, code=code)


def _holds(task: ReviewTask, user: User) -> bool:
    """Whether ``user`` holds ``task`` under a lease that has not run out."""
    return (
        task.status == ReviewTask.Status.CLAIMED
        and task.holder_id == user.id
        and task.lease_until is not None
        and task.lease_until >= timezone.now()
    )


@annotator_required
def task_page(request: HttpRequest, code: UUID) -> HttpResponse:
    task = _get_task(code)
    if not _holds(task, request_user(request)):
        if task.holder_id == request_user(request).id and task.status == ReviewTask.Status.CLAIMED:
            messages.error(request, "Your hold on this task expired and it went back to the queue.")
        else:
            messages.error(request, "This task is not yours: start reviewing from the queue.")
        return redirect("review:queue")
    if task.audit:
        context = blind_task_page_context(task, request_user(request))
        return render(request, "review/tasks/task_blind.html", context)
    context = task_page_context(task, request_user(request))
    return render(request, "review/tasks/task.html", context)


@require_POST
@admin_required
def rereview(request: HttpRequest, code: UUID) -> HttpResponse:
    """An admin sends an image to review again (one image, one review otherwise)."""
    image = get_object_or_404(FaceImage, code=code)
    try:
        task_open_rereview(image=image, user=request_user(request))
    except ReviewRefused as exc:
        messages.error(request, f"Not sent: {exc}")
    else:
        messages.success(request, "The image is in the review queue again.")
    return redirect("image_detail", code=image.code)


@require_POST
@annotator_required
def decide(request: HttpRequest, code: UUID) -> HttpResponse:
    # Whether the task is still this annotator's is checked by the service, under a
    # lock; a refusal is a message, never a change.
    task = _get_task(code)
    vocabulary = task.annotation.image.dataset.vocabulary()
    try:
        decision = decision_from_post(request.POST, vocabulary.aus)
        decision_record(task=task, user=request_user(request), decision=decision)
    except (ReviewRefused, DecisionFormError) as exc:
        messages.error(request, str(exc))
        if _holds(task, request_user(request)):
            return redirect("review:task", code=task.code)
        return redirect("review:queue")
    return _next_or_queue(request)


@require_POST
@annotator_required
def skip(request: HttpRequest, code: UUID) -> HttpResponse:
    task = _get_task(code)
    try:
        task_skip(task=task, user=request_user(request))
    except ReviewRefused as exc:
        messages.error(request, str(exc))
        return redirect("review:queue")
    skipped = request.session.get(SKIPPED, [])
    request.session[SKIPPED] = [*skipped, task.id][-200:]
    return _next_or_queue(request)


@require_POST
@annotator_required
def undo(request: HttpRequest) -> HttpResponse:
    decision = last_undoable_decision(request_user(request))
    if decision is None:
        messages.error(request, "Nothing to undo: no decision of yours is recent enough.")
        return redirect("review:queue")
    try:
        task = decision_undo(decision=decision, user=request_user(request))
    except ReviewRefused as exc:
        messages.error(request, str(exc))
        return redirect("review:queue")
    messages.success(request, "Decision undone: the task is yours again.")
    return redirect("review:task", code=task.code)
