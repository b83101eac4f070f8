"""The review queue and the review page.

The page works with full page loads (every form posts and redirects), and its
script (``static/js/review.js``) goes faster on the same views: it fetches the
next task's panel ahead (``ahead``), shows it the moment a decision is made, and
posts the decision in the background, asking for JSON (``Accept:
application/json``): what was saved, which task is next, and how far the queue is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from review.models import ReviewDecision, ReviewTask
from review.tasks.context import (
    bar_context,
    panel_context,
    panel_template,
    queue_progress,
)
from review.tasks.forms import DecisionFormError, decision_from_post, va_confirmation_problem
from review.tasks.memory import (
    skip_remember,
    skip_undone,
    skipped_ids,
    skips_forget,
    undo_target,
    undoable,
)
from review.tasks.services import (
    ORDERINGS,
    QueueFilter,
    ReviewRefused,
    decision_record,
    decision_undo,
    queue_tasks,
    task_claim_ahead,
    task_claim_next,
    task_held_by,
    task_holds,
    task_open_rereview,
    task_skip,
    task_skip_undo,
    tasks_release,
)
from seke_app.engine.vocab import EXPRESSIONS
from seke_app.models import Dataset, FaceImage, GenerationRun
from seke_app.roles import admin_required, annotator_required, request_user

# The queue filters chosen when reviewing started; the next task after a decision or
# a skip is claimed under them. They are not read from the decision form, whose
# ``expression`` field is the reviewer's answer, not a filter.
FILTERS = "review_filters"
FILTER_FIELDS = ("run", "dataset", "reason", "expression", "order")
QUEUE_PAGE_SIZE = 50
ACTION_WORDS = {
    ReviewDecision.Action.ACCEPT: "Accepted",
    ReviewDecision.Action.CORRECT: "Saved your answer for",
    ReviewDecision.Action.REJECT_IMAGE: "Rejected",
}


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
        exclude_ids=skipped_ids(request.session),
    )


def _session_filter(request: HttpRequest) -> QueueFilter:
    return _queue_filter(request, request.session.get(FILTERS, {}))


def _wants_json(request: HttpRequest) -> bool:
    """Whether the page's script asked (it then swaps panels instead of loading pages)."""
    return "application/json" in request.headers.get("Accept", "")


def _page_number(value: str, pages: int) -> int:
    try:
        return min(max(int(value), 1), max(pages, 1))
    except ValueError:
        return 1


@annotator_required
def queue(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    queue_filter = _queue_filter(request, request.GET)
    available = queue_tasks(queue_filter, user)
    n_waiting = available.count()
    pages = math.ceil(n_waiting / QUEUE_PAGE_SIZE)
    page = _page_number(request.GET.get("page", "1"), pages)
    first = (page - 1) * QUEUE_PAGE_SIZE
    tasks = available.select_related("annotation__image", "annotation__run__dataset")
    params = request.GET.copy()
    params.pop("page", None)
    context = {
        "tasks": tasks[first : first + QUEUE_PAGE_SIZE],
        "n_waiting": n_waiting,
        "page": page,
        "pages": pages,
        "first": first + 1,
        "last": min(first + QUEUE_PAGE_SIZE, n_waiting),
        "query": params.urlencode(),
        "progress": queue_progress(queue_filter),
        "filter": queue_filter,
        "filtered": bool(
            queue_filter.run_code
            or queue_filter.dataset_code
            or queue_filter.expression
            or queue_filter.flag_reason
        ),
        "orders": list(ORDERINGS),
        "expressions": EXPRESSIONS,
        "runs": GenerationRun.objects.select_related("dataset")[:50],
        "datasets": Dataset.objects.all(),
        "held": task_held_by(user),
        "undoable": _undoable(request, user),
    }
    return render(request, "review/tasks/queue.html", context)


def _next_or_queue(request: HttpRequest) -> HttpResponse:
    task = task_claim_next(user=request_user(request), queue_filter=_session_filter(request))
    if task is None:
        messages.info(request, "Nothing left to review with these filters.")
        return redirect("review:queue")
    return redirect("review:task", code=task.code)


@require_POST
@annotator_required
def start(request: HttpRequest) -> HttpResponse:
    """Review under the queue's filters, starting now: a task held that they leave out
    goes back to the queue, so that the filters apply to the very next face."""
    skips_forget(request.session)
    filters = {name: request.POST.get(name, "") for name in FILTER_FIELDS}
    # Written only when they change: a session write costs a query on every claim.
    if request.session.get(FILTERS) != filters:
        request.session[FILTERS] = filters
    tasks_release(user=request_user(request), keep=_session_filter(request))
    return _next_or_queue(request)


def _get_task(code: UUID) -> ReviewTask:
    return get_object_or_404(ReviewTask.objects.select_related("annotation__image"), code=code)


def _name(task: ReviewTask) -> str:
    return task.annotation.image.original_name


def _not_held(request: HttpRequest, task: ReviewTask, user: User) -> HttpResponse:
    """Where a page of a task this reviewer does not hold (any more) sends them, and why.

    The back button leads to the page of a face just decided: it says so, and goes
    on to the face the reviewer holds.
    """
    if task.holder_id == user.id and task.status == ReviewTask.Status.CLAIMED:
        messages.error(request, "Your hold on this task expired and it went back to the queue.")
    elif task.status == ReviewTask.Status.DONE and task.holder_id == user.id:
        messages.info(
            request,
            f"You have decided {_name(task)} already; Undo (Z) takes back your last decision.",
        )
        held = task_held_by(user)
        if held is not None:
            return redirect("review:task", code=held.code)
    else:
        messages.error(request, "This task is not yours: start reviewing from the queue.")
    return redirect("review:queue")


@annotator_required
def task_page(request: HttpRequest, code: UUID) -> HttpResponse:
    task = _get_task(code)
    user = request_user(request)
    if not task_holds(task, user):
        return _not_held(request, task, user)
    context = panel_context(task) | bar_context(
        _session_filter(request), undoable=_undoable(request, user)
    )
    return render(request, "review/tasks/task.html", context)


def _panel(request: HttpRequest, task: ReviewTask) -> HttpResponse:
    html = render_to_string(panel_template(task), panel_context(task), request=request)
    response = HttpResponse(html)
    response["X-Review-Task"] = str(task.code)
    return response


@require_GET
@annotator_required
def task_panel(request: HttpRequest, code: UUID) -> HttpResponse:
    """One held task's panel alone, for the page's script to show without a page load."""
    task = _get_task(code)
    if not task_holds(task, request_user(request)):
        return HttpResponse("This task is not yours.", status=409, content_type="text/plain")
    return _panel(request, task)


@require_POST
@annotator_required
def ahead(request: HttpRequest, code: UUID) -> HttpResponse:
    """Claim the task that follows ``code`` for this reviewer and send its panel (204: none)."""
    try:
        task = task_claim_ahead(
            user=request_user(request),
            current=_get_task(code),
            queue_filter=_session_filter(request),
        )
    except ReviewRefused:
        # No longer this reviewer's: nothing to fetch ahead of it (the decision on it
        # will say why).
        return HttpResponse(status=204)
    if task is None:
        return HttpResponse(status=204)
    return _panel(request, task)


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


def _outcome(request: HttpRequest, *, saved: str = "", refused: str = "") -> JsonResponse:
    """What the page's script needs after a decision or a skip: what happened, the
    task to show next (None: none is left, go to the queue), and the progress."""
    user = request_user(request)
    queue_filter = _session_filter(request)
    if refused:
        task = task_held_by(user)
        if task is None:
            messages.error(request, refused)
    else:
        task = task_claim_next(user=user, queue_filter=queue_filter)
        if task is None:
            messages.info(request, "Nothing left to review with these filters.")
    following = None
    if task is not None:
        following = {
            "code": str(task.code),
            "url": reverse("review:task", args=[task.code]),
            "panel": reverse("review:panel", args=[task.code]),
        }
    return JsonResponse(
        {
            "saved": saved,
            "error": refused,
            "next": following,
            "queue": reverse("review:queue"),
            "progress": queue_progress(queue_filter),
            "undoable": _undoable(request, user),
        },
    )


@require_POST
@annotator_required
def decide(request: HttpRequest, code: UUID) -> HttpResponse:
    # Whether the task is still this annotator's is checked by the service, under a
    # lock; a refusal is a message, never a change.
    task = _get_task(code)
    user = request_user(request)
    annotation = task.annotation
    vocabulary = annotation.image.dataset.vocabulary()
    try:
        decision = decision_from_post(request.POST, vocabulary.aus)
        problem = (
            None if task.audit else va_confirmation_problem(decision, annotation, request.POST)
        )
        if problem:
            raise DecisionFormError(problem)
        row = decision_record(task=task, user=user, decision=decision)
    except (ReviewRefused, DecisionFormError) as exc:
        message = f"{_name(task)} was not saved: {exc}"
        if _wants_json(request):
            return _outcome(request, refused=message)
        messages.error(request, str(exc))
        if task_holds(task, user):
            return redirect("review:task", code=task.code)
        return redirect("review:queue")
    said = f"{ACTION_WORDS[ReviewDecision.Action(row.action)]} {_name(task)}"
    if row.action != decision.action:
        said = f"Nothing was changed, so {_name(task)} was accepted as is"
        if not _wants_json(request):
            messages.info(request, said + ".")
    if _wants_json(request):
        return _outcome(request, saved=said + ".")
    return _next_or_queue(request)


@require_POST
@annotator_required
def skip(request: HttpRequest, code: UUID) -> HttpResponse:
    task = _get_task(code)
    try:
        task_skip(task=task, user=request_user(request))
    except ReviewRefused as exc:
        if _wants_json(request):
            return _outcome(request, refused=f"{_name(task)} was not skipped: {exc}")
        messages.error(request, str(exc))
        return redirect("review:queue")
    skip_remember(request.session, task.id)
    if _wants_json(request):
        return _outcome(request, saved=f"Skipped {_name(task)}: it is back in the queue.")
    return _next_or_queue(request)


def _undoable(request: HttpRequest, user: User) -> bool:
    return undoable(request.session, user)


@require_POST
@annotator_required
def undo(request: HttpRequest) -> HttpResponse:
    """Take back the reviewer's last decision or skip, whichever came later."""
    user = request_user(request)
    decision = undo_target(request.session, user)
    if isinstance(decision, int):
        return _undo_skip(request, user, decision)
    if decision is None:
        messages.error(request, "Nothing to undo: no decision of yours is recent enough.")
        return redirect("review:queue")
    try:
        task = decision_undo(decision=decision, user=user)
    except ReviewRefused as exc:
        messages.error(request, str(exc))
        return redirect("review:queue")
    messages.success(request, f"Decision undone: {decision.image.original_name} is yours again.")
    return redirect("review:task", code=task.code)


def _undo_skip(request: HttpRequest, user: User, task_id: int) -> HttpResponse:
    skip_undone(request.session, task_id)
    try:
        task = task_skip_undo(task=get_object_or_404(ReviewTask, id=task_id), user=user)
    except ReviewRefused as exc:
        messages.error(request, str(exc))
        return redirect("review:queue")
    messages.success(request, f"Skip undone: {_name(task)} is yours again.")
    return redirect("review:task", code=task.code)


@require_POST
@annotator_required
def release(request: HttpRequest) -> HttpResponse:
    """Give back the faces this reviewer holds and go to the queue.

    With ``task`` (a task code), only that one, answered 204: the page's script
    gives back the face it fetched ahead when the reviewer leaves the page.
    """
    user = request_user(request)
    code = _code(request.POST.get("task", ""))
    if code:
        tasks_release(user=user, codes=[code])
        return HttpResponse(status=204)
    released = tasks_release(user=user)
    if released:
        names = ", ".join(_name(t) for t in released)
        messages.success(request, f"Released {names}: back in the queue for anyone.")
    else:
        messages.info(request, "You held no face.")
    return redirect("review:queue")
