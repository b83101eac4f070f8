"""Generation runs through the API (admins only, as the run pages are).

A run is started with the run form's fields (``RunForm``: the same checks, the
same defaults, the same ``run_create``), followed through the figures the run
page shows (``seke_app.runs.progress``), cancelled, resumed and retried through
the services behind the page's buttons, and its annotations are read page by
page, each with its samples on request.
"""

# No ``from __future__ import annotations``: ninja reads the parameters of a paginated
# endpoint from its wrapper, in whose module the names of the annotations are unknown.

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from ninja.pagination import CursorPagination, paginate
from ninja.responses import Status
from pydantic import ConfigDict

from seke_app.api.core import ADMINS_ONLY, ErrorOut, api_user, choices_schema, refused
from seke_app.api.forms import validated
from seke_app.models import Annotation, AnnotationSample, GenerationRun, RunBatch
from seke_app.models.runs import confident
from seke_app.queue import QueueUnavailable
from seke_app.runs.forms import RunForm
from seke_app.runs.progress import RunProgress, run_progress_of
from seke_app.runs.services import RunRefused, run_cancel, run_resume, run_retry_failed

router = Router(tags=["runs"], auth=ADMINS_ONLY)

_FORM = RunForm.base_fields


RunStatus = Annotated[GenerationRun.Status, choices_schema(GenerationRun.Status, "Run status")]
SampleKind = Annotated[AnnotationSample.Kind, choices_schema(AnnotationSample.Kind, "Sample kind")]


def _initial(name: str) -> Any:
    return _FORM[name].initial


def _choices(name: str) -> str:
    field = _FORM[name]
    assert hasattr(field, "choices")
    return ", ".join(str(value) for value, _ in field.choices)


class RunIn(Schema):
    """The run form's fields; one left out takes the form's initial value.

    The bounds and choices are the form's (``seke_app/runs/forms.py``) and are
    checked by it: a value it refuses is answered with 422 and the form's message.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: UUID = Field(description="The dataset's code.")
    name: str = Field("", description=str(_FORM["name"].help_text))
    split: str = Field("", description=str(_FORM["split"].help_text))
    only_unconfident: bool = Field(False, description=str(_FORM["only_unconfident"].help_text))
    backend: str | None = Field(
        None,
        description=f"One of {_choices('backend')}. Left out: offline when the server has no"
        " OPENAI_API_KEY (as the form), and required when it has one.",
    )
    model_name: str = Field("", description=str(_FORM["model_name"].help_text))
    strong_model: str = Field("", description=str(_FORM["strong_model"].help_text))
    prompt_version: UUID | None = Field(
        None, description="A prompt version's code; left out or null: the active version."
    )
    strategy: str = Field(
        _initial("strategy"),
        description=f"One of {_choices('strategy')}. {_FORM['strategy'].help_text}",
    )
    k0: int = Field(_initial("k0"), description=str(_FORM["k0"].help_text))
    kmax: int = Field(_initial("kmax"), description=str(_FORM["kmax"].help_text))
    step: int = Field(_initial("step"), description=str(_FORM["step"].help_text))
    temperature: float = Field(
        _initial("temperature"), description=str(_FORM["temperature"].help_text)
    )
    verify: bool = Field(_initial("verify"), description=str(_FORM["verify"].help_text))
    futility: bool = Field(_initial("futility"), description=str(_FORM["futility"].help_text))
    review_threshold: float = Field(
        _initial("review_threshold"), description=str(_FORM["review_threshold"].help_text)
    )
    concurrency: int = Field(
        _initial("concurrency"), description=str(_FORM["concurrency"].help_text)
    )
    double_review_share: float | None = Field(
        _initial("double_review_share"),
        description=str(_FORM["double_review_share"].help_text) + " Null: 0.",
    )
    audit_share: float | None = Field(
        _initial("audit_share"), description=str(_FORM["audit_share"].help_text)
    )
    budget_usd: Decimal | None = Field(None, description=str(_FORM["budget_usd"].help_text))
    batch: bool = Field(False, description=str(_FORM["batch"].help_text))


# A run on a model without a known price has no cost to give: 0 would claim it was free.
UNKNOWN_COST = (
    "USD; null when the model's price is unknown (not in the price table or SEKE_PRICES)."
)


class RunOut(Schema):
    code: UUID
    url: str = Field(description="Where to follow the run.")
    annotations_url: str
    number: int
    name: str
    label: str = Field(description='How the pages name the run: "demo #3 · baseline · date".')
    dataset: UUID = Field(alias="dataset.code")
    dataset_name: str = Field(alias="dataset.name")
    status: RunStatus
    backend: str
    model_name: str
    strong_model: str = Field(description="A cascade's strong model; empty: one model.")
    prompt_version: UUID = Field(alias="prompt_version.code")
    prompt_version_number: int = Field(alias="prompt_version.number")
    params: dict[str, Any] = Field(description="The SV-UAMC parameters the run was given.")
    image_filter: dict[str, Any]
    review_threshold: float = Field(description="The run's current review threshold.")
    budget_usd: Decimal | None
    concurrency: int
    double_review_share: float
    audit_share: float
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    error: str
    n_total: int
    n_done: int
    n_accepted: int
    n_flagged: int
    n_failed: int
    n_remaining: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal | None = Field(description=UNKNOWN_COST)

    @staticmethod
    def resolve_cost_usd(run: GenerationRun) -> Decimal | None:
        return run.known_cost

    batch: bool = Field(description="Sent through the OpenAI Batch API, a round at a time.")
    n_escalated: int = Field(description="Images a cascade escalated to its strong model.")
    strong_requests: int = Field(description="Of the requests, the strong model's.")
    strong_prompt_tokens: int
    strong_completion_tokens: int
    strong_cost_usd: Decimal = Field(
        description="Of the cost, the strong model's; the run's model spent the rest."
    )

    @staticmethod
    def resolve_url(run: GenerationRun) -> str:
        return reverse("api:run", kwargs={"code": run.code})

    @staticmethod
    def resolve_annotations_url(run: GenerationRun) -> str:
        return reverse("api:run-annotations", kwargs={"code": run.code})

    @staticmethod
    def resolve_created_by(run: GenerationRun) -> str | None:
        return run.created_by.get_username() if run.created_by else None


class RunErrorOut(Schema):
    image: str = Field(description="The image's file name.")
    error: str


class RunProgressOut(Schema):
    """The figures of the run page's live section."""

    percent: float = Field(description="Images done or failed, in percent of all.")
    throughput: float | None = Field(
        description="Images finished per second lately; null until one has finished."
    )
    eta_seconds: float | None = Field(
        description="Seconds left at that pace, for a run at work; null otherwise."
    )
    in_flight: int = Field(description="Images a live worker is annotating now.")
    settled: bool = Field(description="Finished with nothing in flight: nothing changes more.")
    not_started: int = Field(description="Images a stopped run will not annotate unless resumed.")
    awaiting_review: int = Field(description="The run's annotations that wait for a review.")
    stalled: int = Field(description="Images held by a worker that stopped, not yet taken over.")
    recent_errors: list[RunErrorOut]
    workers_note: str | None = Field(description="Why the run may not move, if it may not.")
    can_cancel: bool
    resume: str | None = Field(
        description='"resume": POST .../resume queues the stopped run again; "requeue": it'
        " hands the waiting images of a run at work to new jobs; null: nothing to resume."
    )
    can_retry: bool = Field(description="POST .../retry queues the failed images again.")


class RunBatchOut(Schema):
    """One round of a batch run, as the run page's table shows it."""

    number: int
    asked: dict[str, int] = Field(
        description="Lines asking for first samples (first), extra samples (more) and"
        " verifications (verify)."
    )
    batch_id: str = Field(description="The endpoint's batch id; empty until it is created.")
    status: str = Field(description="The batch's state as the endpoint reports it.")
    n_lines: int
    n_completed: int
    n_failed: int
    n_expired: int
    error: str
    created_at: datetime
    finished_at: datetime | None
    collected_at: datetime | None = Field(
        description="When its replies were recorded; null while it is the run's open batch."
    )


class RunDetailOut(RunOut):
    progress: RunProgressOut
    rounds: list[RunBatchOut] = Field(description="A batch run's rounds; empty for other runs.")

    @staticmethod
    def resolve_progress(run: GenerationRun) -> dict[str, Any]:
        return _progress(run_progress_of(run))

    @staticmethod
    def resolve_rounds(run: GenerationRun) -> list[RunBatch]:
        return list(run.batches.all())


class RunActionOut(Schema):
    detail: str
    queued: int | None = Field(None, description="Images queued by this action.")
    run: RunOut


class RunFilters(Schema):
    dataset: UUID | None = Field(None, description="Only the runs of this dataset (its code).")
    status: RunStatus | None = None


class AnnotationSampleOut(Schema):
    """One Monte Carlo sample or the verification reply, as it came back."""

    index: int
    kind: SampleKind
    stage: str = Field(description='In a cascade, the model that drew it: "cheap" or "strong".')
    raw_text: str
    parsed: dict[str, Any] | None
    parse_error: str
    verdict: Any
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal | None = Field(description=UNKNOWN_COST)

    @staticmethod
    def resolve_cost_usd(sample: AnnotationSample) -> Decimal | None:
        return sample.cost_usd if sample.annotation.run.priced else None


class AnnotationOut(Schema):
    code: UUID
    image: UUID
    image_name: str
    expression: str | None
    valence: float | None
    arousal: float | None
    aus: dict[str, bool]
    au_intensity: dict[str, Any]
    confidences: dict[str, float] = Field(description="Each grain's confidence.")
    confidence: float = Field(description="The overall confidence.")
    confident: bool = Field(
        description="Auto-accepted under the run's current threshold (not held, confidence"
        " at least the threshold)."
    )
    provenance: dict[str, str] = Field(
        description='Each grain\'s source: "dataset" (a known label given) or "model".'
    )
    inferred_from: dict[str, str] = Field(
        description="Grains the backend does not observe, each with the grain it was inferred from."
    )
    known_grains: list[str]
    flagged: bool = Field(description="Flagged under the threshold the run had when annotated.")
    held: bool = Field(description="Flagged for a reason no threshold lifts.")
    flag_reasons: list[str]
    expression_votes: dict[str, Any]
    au_rates: dict[str, Any]
    va_samples: list[Any]
    evidence: dict[str, Any]
    consistency: float | None
    consistency_reasons: list[str]
    verification: dict[str, Any]
    n_samples: int
    n_valid: int
    stage: str = Field(
        description='In a cascade, the model whose result this is: "cheap" (accepted by the'
        ' run\'s model) or "strong" (escalated); empty in a run of one model.'
    )
    cheap_confidence: float | None = Field(
        description="In a cascade, the run's model's overall confidence."
    )
    cheap_result: dict[str, Any] = Field(
        description="Of an escalated annotation, the run's model's answer, verdict and usage."
    )
    requests: int = Field(description="Model requests for the image, both stages of a cascade.")
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal | None = Field(description=UNKNOWN_COST)
    created_at: datetime
    samples: list[AnnotationSampleOut] | None = Field(
        None, description="The samples and verification reply, with ?samples=true."
    )

    @staticmethod
    def resolve_cost_usd(annotation: Annotation) -> Decimal | None:
        return annotation.cost_usd if annotation.run.priced else None

    @staticmethod
    def resolve_image(annotation: Annotation) -> UUID:
        return annotation.image.code

    @staticmethod
    def resolve_image_name(annotation: Annotation) -> str:
        return annotation.image.original_name

    @staticmethod
    def resolve_confidences(annotation: Annotation) -> dict[str, float]:
        return annotation.grain_confidences()

    @staticmethod
    def resolve_confident(annotation: Annotation) -> bool:
        return annotation.is_confident(annotation.run.review_threshold)

    @staticmethod
    def resolve_provenance(annotation: Annotation) -> dict[str, str]:
        return annotation.grain_provenance()

    @staticmethod
    def resolve_samples(annotation: Annotation) -> list[AnnotationSample] | None:
        return getattr(annotation, "sample_list", None)


class AnnotationFilters(Schema):
    samples: bool = Field(False, description="Include each annotation's samples.")
    flagged: bool | None = Field(
        None, description="Only annotations flagged (or not) when they were made."
    )
    confident: bool | None = Field(
        None, description="Only annotations confident (or not) under the run's current threshold."
    )
    min_confidence: float | None = Field(None, description="Overall confidence at least this.")
    max_confidence: float | None = Field(None, description="Overall confidence at most this.")


def _runs() -> QuerySet[GenerationRun]:
    return GenerationRun.objects.select_related("dataset", "prompt_version", "created_by")


def _get_run(code: UUID) -> GenerationRun:
    return get_object_or_404(_runs(), code=code)


def _progress(progress: RunProgress) -> dict[str, Any]:
    return {
        "percent": progress.percent,
        "throughput": progress.rate,
        "eta_seconds": progress.eta_seconds,
        "in_flight": progress.in_flight,
        "settled": progress.settled,
        "not_started": progress.not_started,
        "awaiting_review": progress.awaiting_review,
        "stalled": progress.stalled,
        "recent_errors": [{"image": name, "error": error} for name, error in progress.errors],
        "workers_note": progress.workers_note,
        "can_cancel": progress.can_cancel,
        "resume": progress.resume,
        "can_retry": progress.can_retry,
    }


@router.post(
    "",
    response={201: RunOut, 400: ErrorOut, 503: ErrorOut},
    summary="Start a run",
)
def run_new(request: HttpRequest, payload: RunIn) -> Status[GenerationRun]:
    """Start a generation run with the run form's fields and defaults.

    The form checks the values (422 with its messages); a run the service refuses
    (no image matches, no OPENAI_API_KEY for that backend, ...) is 400, and 503 when
    the queue's Redis does not answer. Nothing is written on any refusal. The run's
    images are queued once it is saved; follow it at ``url``.
    """
    form = validated(RunForm, payload)
    try:
        run = form.create(user=api_user(request))
    except RunRefused as exc:
        raise refused(400, exc) from None
    except QueueUnavailable as exc:
        raise refused(503, exc) from None
    return Status(201, _get_run(run.code))


@router.get("", response=list[RunOut], summary="List runs, newest first")
@paginate(CursorPagination, ordering=("-id",), page_size=100, max_page_size=500)
def run_list(request: HttpRequest, filters: Query[RunFilters]) -> QuerySet[GenerationRun]:
    runs = _runs()
    if filters.dataset is not None:
        runs = runs.filter(dataset__code=filters.dataset)
    if filters.status is not None:
        runs = runs.filter(status=filters.status)
    return runs


@router.get("/{code}", response=RunDetailOut, url_name="run", summary="A run and its progress")
def run_detail(request: HttpRequest, code: UUID) -> GenerationRun:
    """The run with the figures its page shows: counts, cost, throughput, time left,
    images in flight, recent errors, and which actions it offers."""
    return _get_run(code)


def _action(code: UUID, act: str) -> tuple[str, int | None, GenerationRun]:
    run = _get_run(code)
    try:
        if act == "cancel":
            run_cancel(run=run)
            message, count = "Run cancelled: no new image is started.", None
        elif act == "resume":
            stopped = run.is_finished()
            count = run_resume(run=run)
            message = (
                f"Run resumed: {count} images queued."
                if stopped
                else f"{count} waiting images queued again; the jobs at work go on."
            )
        else:
            count = run_retry_failed(run=run)
            message = f"{count} failed images queued again."
    except RunRefused as exc:
        raise refused(409, exc) from None
    except QueueUnavailable as exc:
        raise refused(503, exc) from None
    return message, count, _get_run(code)


_ACTION_RESPONSES: dict[int, Any] = {409: ErrorOut, 503: ErrorOut}


@router.post(
    "/{code}/cancel", response={200: RunActionOut, **_ACTION_RESPONSES}, summary="Cancel a run"
)
def run_cancel_action(request: HttpRequest, code: UUID) -> Status[dict[str, Any]]:
    """No new image is started; images in flight finish and are kept. 409 for a run
    that has already stopped."""
    message, _, run = _action(code, "cancel")
    return Status(200, {"detail": message, "run": run})


@router.post(
    "/{code}/resume", response={202: RunActionOut, **_ACTION_RESPONSES}, summary="Resume a run"
)
def run_resume_action(request: HttpRequest, code: UUID) -> Status[dict[str, Any]]:
    """Queue again every image not done, as the page's Resume (a stopped run) or
    Re-queue (a run at work whose images no job holds) button. 409 for a completed
    run, or one whose every remaining image is being worked on."""
    message, count, run = _action(code, "resume")
    return Status(202, {"detail": message, "queued": count, "run": run})


@router.post(
    "/{code}/retry",
    response={202: RunActionOut, **_ACTION_RESPONSES},
    summary="Retry a run's failed images",
)
def run_retry_action(request: HttpRequest, code: UUID) -> Status[dict[str, Any]]:
    """Queue the failed images again, once the run has stopped. 409 while it runs, or
    when it has no failed image."""
    message, count, run = _action(code, "retry")
    return Status(202, {"detail": message, "queued": count, "run": run})


@router.get(
    "/{code}/annotations",
    response=list[AnnotationOut],
    url_name="run-annotations",
    summary="A run's annotations, page by page",
)
@paginate(CursorPagination, ordering=("id",), page_size=100, max_page_size=500)
def annotation_list(
    request: HttpRequest, code: UUID, filters: Query[AnnotationFilters]
) -> QuerySet[Annotation]:
    """The run's annotations in the order they were written, 100 a page (``page_size``
    up to 500); follow ``next`` for the next page. With ``samples=true`` each carries
    its samples and verification reply."""
    run = get_object_or_404(GenerationRun, code=code)
    annotations = Annotation.objects.filter(run=run).select_related("image", "run")
    if filters.flagged is not None:
        annotations = annotations.filter(flagged=filters.flagged)
    if filters.confident is not None:
        annotations = (
            annotations.filter(confident())
            if filters.confident
            else annotations.exclude(confident())
        )
    if filters.min_confidence is not None:
        annotations = annotations.filter(confidence__gte=filters.min_confidence)
    if filters.max_confidence is not None:
        annotations = annotations.filter(confidence__lte=filters.max_confidence)
    if filters.samples:
        samples = AnnotationSample.objects.order_by("index")
        annotations = annotations.prefetch_related(
            Prefetch("samples", queryset=samples, to_attr="sample_list")
        )
    return annotations
