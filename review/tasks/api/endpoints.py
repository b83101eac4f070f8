"""The review API's endpoints and the memory of skips it keeps per user (see
``review.tasks.api``)."""

# No ``from __future__ import annotations``: ninja reads the parameters of a paginated
# endpoint from its wrapper, in whose module the names of the annotations are unknown.

from importlib import import_module
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.base import CreateError, SessionBase
from django.db.models import Case, CharField, F, Q, QuerySet, Value, When
from django.db.models.expressions import Combinable
from django.http import HttpRequest, QueryDict
from django.shortcuts import get_object_or_404
from django.utils.crypto import salted_hmac
from ninja import Query, Router
from ninja.errors import HttpError, ValidationError
from ninja.pagination import CursorPagination, paginate
from ninja.responses import Status

from review.models import ReviewDecision, ReviewTask
from review.tasks.api.schemas import (
    ClaimIn,
    DecidedOut,
    DecisionFilters,
    DecisionIn,
    DecisionOut,
    ReleasedOut,
    ReleaseIn,
    SkippedOut,
    TaskDetailOut,
    TaskFilters,
    TaskOut,
    UndoneOut,
)
from review.tasks.context import va_value
from review.tasks.forms import DecisionFormError, decision_from_post, va_confirmation_problem
from review.tasks.memory import skip_remember, skip_undone, skipped_ids, skips_forget, undo_target
from review.tasks.services import (
    INTENSITIES,
    ORDERINGS,
    Decision,
    QueueFilter,
    ReviewRefused,
    decision_record,
    decision_undo,
    queue_tasks,
    task_claim_next,
    task_skip,
    task_skip_undo,
    tasks_release,
    validate_decision,
)
from review.tasks.views import ACTION_WORDS
from seke_app.api.core import ErrorOut, api_user, refused, require_admin
from seke_app.api.forms import BODY
from seke_app.models import Dataset, GenerationRun
from seke_app.roles import is_admin

router = Router(tags=["review"])

QUEUE_EMPTY = "The queue is empty: nothing is left for you to review with these filters."
NOTHING_TO_UNDO = "Nothing to undo: no decision or skip of yours is recent enough."


# --- What the API remembers of a reviewer's skips --------------------------------------

# A browser's session key has 32 characters and a stored one at most 40: a memory's
# key (40) never names a browser's session.
_MEMORY_PREFIX = "review-api-"
_MEMORY_KEY_LENGTH = 40


def _memory_key(user: User) -> str:
    digest = salted_hmac("review.tasks.api.memory", str(user.pk)).hexdigest()
    return _MEMORY_PREFIX + digest[: _MEMORY_KEY_LENGTH - len(_MEMORY_PREFIX)]


def _memory(user: User) -> SessionBase:
    """The review memory of ``user``'s API calls: a session of the configured
    server-side engine, found by a key derived from the user (a script sends no
    cookie), read when first asked."""
    store: type[SessionBase] = import_module(settings.SESSION_ENGINE).SessionStore
    return store(session_key=_memory_key(user))


def _memory_save(memory: SessionBase, user: User) -> None:
    """Store the memory if it changed, under its user's key.

    A session engine forgets the key of a session it did not find (it would make a
    random one): the first save gives it back, and creates the row.
    """
    if not memory.modified:
        return
    if memory.session_key is None:
        memory._session_key = _memory_key(user)
        try:
            memory.save(must_create=True)
            return
        except CreateError:
            # Another request of this user stored it first: overwrite, as a
            # browser's second tab does.
            pass
    memory.save()


# --- Helpers ---------------------------------------------------------------------------


def _shown_kind(user: User) -> Combinable:
    """The kind each task or decision is shown as to ``user``: a gold question's is
    "first" to anyone but an admin, who puts gold questions in the queue."""
    if is_admin(user):
        return F("kind")
    return Case(
        When(kind=ReviewTask.Kind.GOLD, then=Value(ReviewTask.Kind.FIRST.value)),
        default=F("kind"),
        output_field=CharField(),
    )


def _tasks(user: User) -> QuerySet[ReviewTask]:
    """Every task, with what its row shows and the kind it is shown as to ``user``."""
    return ReviewTask.objects.select_related(
        "annotation__image__dataset", "annotation__run", "holder"
    ).annotate(shown_kind=_shown_kind(user))


def _visible_tasks(user: User, *, skipped: tuple[int, ...] = ()) -> QuerySet[ReviewTask]:
    """The tasks ``user`` may see: all for an admin; for an annotator, those the queue
    page lists for them (the tasks they may take, but ``skipped``) and those they hold
    or have decided."""
    tasks = _tasks(user)
    if is_admin(user):
        return tasks
    waiting = queue_tasks(QueueFilter(exclude_ids=skipped), user).order_by().values("id")
    return tasks.filter(Q(id__in=waiting) | Q(holder=user))


def _shown(user: User, task: ReviewTask) -> ReviewTask:
    """A task a service returned, read again as the API shows it to ``user``."""
    return _tasks(user).get(id=task.id)


def _task(code: UUID) -> ReviewTask:
    """Any task, by code: whether the user may act on it is the service's to say."""
    return get_object_or_404(
        ReviewTask.objects.select_related("annotation__image__dataset"), code=code
    )


def _decisions(user: User) -> QuerySet[ReviewDecision]:
    """The decisions ``user`` may see: everyone's for an admin, their own otherwise."""
    decisions = ReviewDecision.objects.select_related(
        "task", "annotation__run", "annotation__image__dataset", "reviewer"
    ).annotate(shown_kind=_shown_kind(user))
    return decisions if is_admin(user) else decisions.filter(reviewer=user)


def _run_code(code: UUID | None) -> str:
    """A run filter's code, checked: a code that names no run is a mistake to report,
    not a filter that matches nothing."""
    if code is None:
        return ""
    if not GenerationRun.objects.filter(code=code).exists():
        raise HttpError(404, f"There is no run with the code {code}.")
    return str(code)


def _dataset_code(code: UUID | None) -> str:
    if code is None:
        return ""
    if not Dataset.objects.filter(code=code).exists():
        raise HttpError(404, f"There is no dataset with the code {code}.")
    return str(code)


def _name(task: ReviewTask) -> str:
    return task.annotation.image.original_name


def _invalid(message: str) -> ValidationError:
    """A decision's values refused by the page's rules: 422, as any invalid body."""
    return ValidationError([{"loc": ["body", BODY], "msg": message, "type": "review"}])


def _page_form(task: ReviewTask, payload: DecisionIn) -> QueryDict:
    """The body as the review page's form would post it (see ``DecisionIn``).

    The fields left out take the values the page's form starts with: the machine's
    on a review (``_panel.html``), none on a blind audit (``_panel_blind.html``).
    """
    annotation = task.annotation
    vocabulary = annotation.image.dataset.vocabulary()
    start: dict[str, Any] = {"aus": [], "au_intensity": {}}
    if not task.audit:
        machine = annotation.aus_dict()
        start = {
            "expression": annotation.expression
            if annotation.expression in vocabulary.expressions
            else None,
            "valence": va_value(annotation.valence),
            "arousal": va_value(annotation.arousal),
            "aus": [au for au in vocabulary.aus if machine.get(au)],
            "au_intensity": {
                au: level
                for au in vocabulary.aus
                if (level := str(annotation.au_intensity.get(str(au), ""))) in INTENSITIES
            },
        }
    given = payload.model_dump(exclude_unset=True)
    values = start | given
    form = QueryDict(mutable=True)
    form["action"] = payload.action
    for name in ("expression", "valence", "arousal"):
        if values.get(name) not in (None, ""):
            form[name] = str(values[name])
    for au in values["aus"]:
        form[f"au_{au}"] = "on"
    for au, level in values["au_intensity"].items():
        form[f"au_{au}_intensity"] = level
    form["note"] = payload.note
    form["reject_reason"] = payload.reject_reason
    form["time_spent_ms"] = str(payload.time_spent_ms)
    if payload.va_confirmed:
        form["va_confirmed"] = "1"
    return form


def _decision(task: ReviewTask, payload: DecisionIn) -> Decision:
    """The decision the page would take from this body; 422 for what it refuses."""
    form = _page_form(task, payload)
    annotation = task.annotation
    try:
        decision = decision_from_post(form, annotation.image.dataset.vocabulary().aus)
        problem = None if task.audit else va_confirmation_problem(decision, annotation, form)
    except DecisionFormError as exc:
        raise _invalid(str(exc)) from None
    if problem:
        raise _invalid(problem)
    return decision


# --- Endpoints -------------------------------------------------------------------------


@router.post(
    "/claim",
    response={200: TaskDetailOut, 404: ErrorOut},
    summary="Claim the next task to review",
)
def claim(request: HttpRequest, payload: ClaimIn | None = None) -> ReviewTask:
    """The task you hold, else the next one of the queue under these filters, claimed
    for you, as the queue page's Start reviewing: a task you hold that the filters
    leave out goes back to the queue first. Asked again, it answers the same task
    until you decide or skip it. The tasks you skipped are not offered again
    (``forget_skips`` offers them). 404 when the queue is empty."""
    user = api_user(request)
    filters = payload or ClaimIn.model_validate({})
    memory = _memory(user)
    if filters.forget_skips:
        skips_forget(memory)
    queue_filter = QueueFilter(
        run_code=_run_code(filters.run),
        dataset_code=_dataset_code(filters.dataset),
        flag_reason=filters.flag_reason.strip(),
        expression=filters.machine_expression,
        order=filters.order if filters.order in ORDERINGS else "overall",
        exclude_ids=skipped_ids(memory),
    )
    tasks_release(user=user, keep=queue_filter)
    task = task_claim_next(user=user, queue_filter=queue_filter)
    _memory_save(memory, user)
    if task is None:
        raise HttpError(404, QUEUE_EMPTY)
    return _shown(user, task)


@router.get("/tasks", response=list[TaskOut], summary="List review tasks")
@paginate(CursorPagination, ordering=("id",), page_size=100, max_page_size=500)
def task_list(request: HttpRequest, filters: Query[TaskFilters]) -> QuerySet[ReviewTask]:
    """An admin sees every task. An annotator sees what the queue page lists for them
    (the tasks they may take, but those they skipped) and the tasks they hold or
    have decided."""
    user = api_user(request)
    skipped = () if is_admin(user) else skipped_ids(_memory(user))
    tasks = _visible_tasks(user, skipped=skipped)
    if filters.run is not None:
        tasks = tasks.filter(annotation__run__code=_run_code(filters.run))
    if filters.status is not None:
        tasks = tasks.filter(status=filters.status)
    if filters.kind is not None:
        tasks = tasks.filter(Q(shown_kind=filters.kind))
    return tasks


@router.get(
    "/tasks/{code}",
    response={200: TaskDetailOut, 404: ErrorOut},
    url_name="review-task",
    summary="A task, as the review page shows it",
)
def task_detail(request: HttpRequest, code: UUID) -> ReviewTask:
    """The task with what the review page shows of it (``panel``): the machine's
    answer, flag reasons, known labels and earlier decisions, none of them for a
    blind audit. 404 for a task you may not see (see the list)."""
    return get_object_or_404(_visible_tasks(api_user(request)), code=code)


@router.post(
    "/tasks/{code}/decide",
    response={201: DecidedOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut},
    summary="Decide a task you hold",
)
def decide(request: HttpRequest, code: UUID, payload: DecisionIn) -> Status[dict[str, Any]]:
    """Record your decision with the review page's fields and rules. Values the page
    refuses answer 422 (an unknown AU, valence out of range, a blind audit accepted,
    a new expression with the machine's valence and arousal not confirmed, ...); a
    task that is not yours, whose hold expired or that was decided answers 409.
    Nothing is written then. Claim the next task with ``POST .../claim``."""
    user = api_user(request)
    task = _task(code)
    decision = _decision(task, payload)
    try:
        row = decision_record(task=task, user=user, decision=decision)
    except ReviewRefused as exc:
        vocabulary = task.annotation.image.dataset.vocabulary()
        if validate_decision(decision, vocabulary, blind=task.audit):
            raise _invalid(str(exc)) from None
        raise refused(409, exc) from None
    said = f"{ACTION_WORDS[ReviewDecision.Action(row.action)]} {_name(task)}."
    if row.action != decision.action:
        said = f"Nothing was changed, so {_name(task)} was accepted as is."
    return Status(201, {"detail": said, "decision": _decisions(user).get(id=row.id)})


@router.post(
    "/tasks/{code}/skip",
    response={200: SkippedOut, 404: ErrorOut, 409: ErrorOut},
    summary="Give a task you hold back to the queue",
)
def skip(request: HttpRequest, code: UUID) -> dict[str, Any]:
    """The task goes back to the queue for anyone, and is not offered to you again
    (claim with ``forget_skips`` offers it); undo takes the skip back. 409 for a task
    you do not hold."""
    user = api_user(request)
    task = _task(code)
    try:
        task_skip(task=task, user=user)
    except ReviewRefused as exc:
        raise refused(409, exc) from None
    memory = _memory(user)
    skip_remember(memory, task.id)
    _memory_save(memory, user)
    return {"detail": f"Skipped {_name(task)}: it is back in the queue.", "task": task.code}


@router.post(
    "/undo",
    response={200: UndoneOut, 404: ErrorOut, 409: ErrorOut},
    summary="Undo your last decision or skip",
)
def undo(request: HttpRequest) -> dict[str, Any]:
    """Take back your last decision or skip, whichever came later, within the undo
    window: the task is yours again (a task you claimed since goes back to the
    queue). 409 when there is nothing recent enough to undo, or the face you
    skipped was taken by someone else."""
    user = api_user(request)
    memory = _memory(user)
    target = undo_target(memory, user)
    if target is None:
        raise HttpError(409, NOTHING_TO_UNDO)
    if isinstance(target, int):
        skip_undone(memory, target)
        _memory_save(memory, user)
        try:
            task = task_skip_undo(task=get_object_or_404(ReviewTask, id=target), user=user)
        except ReviewRefused as exc:
            raise refused(409, exc) from None
        shown = _shown(user, task)
        return {
            "detail": f"Skip undone: {_name(shown)} is yours again.",
            "undone": "skip",
            "task": shown,
        }
    try:
        task = decision_undo(decision=target, user=user)
    except ReviewRefused as exc:
        raise refused(409, exc) from None
    shown = _shown(user, task)
    return {
        "detail": f"Decision undone: {_name(shown)} is yours again.",
        "undone": "decision",
        "task": shown,
    }


@router.post("/release", response=ReleasedOut, summary="Give back the tasks you hold")
def release(request: HttpRequest, payload: ReleaseIn | None = None) -> dict[str, Any]:
    """Every task you hold goes back to the queue for anyone, or only ``task``."""
    codes = [str(payload.task)] if payload is not None and payload.task is not None else []
    released = tasks_release(user=api_user(request), codes=codes)
    if released:
        detail = f"Released {', '.join(_name(t) for t in released)}: back in the queue for anyone."
    else:
        detail = "You held no task to release." if not codes else "You do not hold that task."
    return {"detail": detail, "released": [t.code for t in released]}


@router.get("/decisions", response=list[DecisionOut], summary="List review decisions, newest first")
@paginate(CursorPagination, ordering=("-id",), page_size=100, max_page_size=500)
def decision_list(
    request: HttpRequest, filters: Query[DecisionFilters]
) -> QuerySet[ReviewDecision]:
    """An annotator sees their own decisions, an admin everyone's (``reviewer`` picks
    one). Undone decisions are listed with ``undone_at``."""
    user = api_user(request)
    decisions = _decisions(user)
    if filters.reviewer is not None:
        require_admin(request)
        if not User.objects.filter(username=filters.reviewer).exists():
            raise HttpError(404, f"There is no user named {filters.reviewer!r}.")
        decisions = decisions.filter(reviewer__username=filters.reviewer)
    if filters.run is not None:
        decisions = decisions.filter(annotation__run__code=_run_code(filters.run))
    if filters.since is not None:
        decisions = decisions.filter(created_at__gte=filters.since)
    return decisions
