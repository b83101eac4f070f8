"""Exports through the API (admins only, as the export pages are).

An export is started with the export form's fields (``ExportForm``: the same
checks, defaults and ``export_create``) and runs as a job on the "exports" queue;
the answer is 202 with its code, and ``GET /api/v1/exports/{code}`` follows it.
Its file is downloaded from the same place the page's link reads it.
"""

# No ``from __future__ import annotations``: ninja reads the parameters of a paginated
# endpoint from its wrapper, in whose module the names of the annotations are unknown.

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from django.db.models import QuerySet
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from ninja.errors import ValidationError
from ninja.pagination import CursorPagination, paginate
from ninja.responses import Status
from pydantic import ConfigDict

from seke_app.api.core import ADMINS_ONLY, ErrorOut, api_user, choices_schema, refused
from seke_app.api.forms import BODY, validated
from seke_app.exports.forms import ExportForm
from seke_app.exports.options import describe_options
from seke_app.exports.progress import export_progress_of
from seke_app.exports.services import ExportRefused, export_cancel, export_create
from seke_app.exports.views import export_file_response
from seke_app.models import Dataset
from seke_app.models.exports import Export
from seke_app.queue import QueueUnavailable

router = Router(tags=["exports"], auth=ADMINS_ONLY)

_FORM = ExportForm.base_fields


ExportStatus = Annotated[Export.Status, choices_schema(Export.Status, "Export status")]
ExportKind = Annotated[Export.Kind, choices_schema(Export.Kind, "Export kind")]


def _initial(name: str) -> Any:
    initial = _FORM[name].initial
    return list(initial) if isinstance(initial, tuple | list) else initial


def _choices(name: str) -> str:
    field = _FORM[name]
    assert hasattr(field, "choices")
    return ", ".join(str(value) for value, _ in field.choices)


def _about(name: str, extra: str = "") -> str:
    field = _FORM[name]
    words = [str(field.label or name.replace("_", " ").capitalize())]
    if field.help_text:
        words.append(str(field.help_text))
    return " ".join([*(w.rstrip(".") + "." for w in words), extra]).strip()


class ExportIn(Schema):
    """The export form's fields; one left out takes the form's initial value.

    The choices and bounds are the form's (``seke_app/exports/forms.py``) and are
    checked by it, with the options' rules for the kind (``ExportOptions.problems``).
    """

    model_config = ConfigDict(extra="forbid")

    dataset: UUID = Field(description="The dataset's code.")
    kind: str = Field(_initial("kind"), description=f"One of {_choices('kind')}.")
    formats: list[str] = Field(
        _initial("formats"),
        description=f"FEID only: some of {_choices('formats')}; empty: llava.",
    )
    grains: list[str] = Field(_initial("grains"), description=f"Some of {_choices('grains')}.")
    expression_sources: list[str] = Field(
        _initial("expression_sources"),
        description="Where expression labels may come from: some of"
        f" {_choices('expression_sources')}.",
    )
    va_sources: list[str] = Field(
        _initial("va_sources"), description="Where valence-arousal labels may come from."
    )
    aus_sources: list[str] = Field(
        _initial("aus_sources"), description="Where AU labels may come from."
    )
    min_confidence: float = Field(_initial("min_confidence"), description=_about("min_confidence"))
    split: str | None = Field(
        None, description="Only the images of this split of the dataset; null: all images."
    )
    images: str = Field(
        _initial("images"), description=_about("images", f"One of {_choices('images')}.")
    )
    image_root: str = Field("", description=_about("image_root"))
    openai_images: str = Field(
        _initial("openai_images"),
        description=f"FEID only: the images of OpenAI records, one of {_choices('openai_images')}.",
    )
    seed: int = Field(_initial("seed"), description=_about("seed"))
    test_fraction: float = Field(
        _initial("test_fraction"), description="FEAB only: the share of images in the benchmark."
    )
    holdout: UUID | None = Field(
        None,
        description="FEID only: the code of a finished FEAB export of this dataset whose"
        " benchmark images are left out.",
    )
    archive: bool = Field(_initial("archive"), description=_about("archive"))


class ExportOut(Schema):
    code: UUID
    url: str = Field(description="Where to follow the export.")
    dataset: UUID = Field(alias="dataset.code")
    dataset_name: str = Field(alias="dataset.name")
    kind: ExportKind
    status: ExportStatus
    options: dict[str, Any] = Field(description="The options as stored (ExportOptions).")
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    error: str
    percent: float = Field(description="Images read, in percent of those to read.")
    n_total: int = Field(description="Images to read (a FEAB export reads each twice).")
    n_done: int = Field(description="Images read so far.")
    n_written: int = Field(description="Records written: images in the export.")
    n_skipped: int = Field(description="Images left out.")
    skipped_by_reason: dict[str, int] = Field(
        description="Why images were left out: {reason in words: count}."
    )
    file_name: str | None
    file_size: int | None
    download_url: str | None = Field(description="The file, once the export is done.")

    @staticmethod
    def resolve_url(export: Export) -> str:
        return reverse("api:export", kwargs={"code": export.code})

    @staticmethod
    def resolve_created_by(export: Export) -> str | None:
        return export.created_by.get_username() if export.created_by else None

    @staticmethod
    def resolve_percent(export: Export) -> float:
        return round(export.progress * 100, 1)

    @staticmethod
    def resolve_file_name(export: Export) -> str | None:
        return export.file_name() if export.status == Export.Status.DONE else None

    @staticmethod
    def resolve_file_size(export: Export) -> int | None:
        return export.file_size if export.status == Export.Status.DONE else None

    @staticmethod
    def resolve_download_url(export: Export) -> str | None:
        if export.status != Export.Status.DONE:
            return None
        return reverse("api:export-download", kwargs={"code": export.code})


class OptionOut(Schema):
    option: str
    value: str


class ExportProgressOut(Schema):
    """The figures of the export page's live section."""

    n_images: int = Field(description="Images the export considers.")
    settled: bool = Field(
        description="Finished, and its job let go of its work: nothing changes any more."
    )
    awaiting_review: int | None = Field(
        description="For a finished export that left images out: the dataset's images that"
        " wait for a review, which a later export includes once they are decided."
    )


class ExportDetailOut(ExportOut):
    progress: ExportProgressOut
    options_described: list[OptionOut] = Field(description="The options in words, as the page.")

    @staticmethod
    def resolve_progress(export: Export) -> dict[str, Any]:
        progress = export_progress_of(export)
        return {
            "n_images": progress.n_images,
            "settled": progress.settled,
            "awaiting_review": progress.awaiting_review,
        }

    @staticmethod
    def resolve_options_described(export: Export) -> list[dict[str, str]]:
        return [{"option": o, "value": v} for o, v in describe_options(export)]


class ExportFilters(Schema):
    dataset: UUID | None = Field(None, description="Only the exports of this dataset (its code).")
    kind: ExportKind | None = None
    status: ExportStatus | None = None


def _exports() -> QuerySet[Export]:
    return Export.objects.select_related("dataset", "created_by")


def _get_export(code: UUID) -> Export:
    return get_object_or_404(_exports(), code=code)


@router.post(
    "",
    response={202: ExportOut, 400: ErrorOut, 503: ErrorOut},
    summary="Start an export",
)
def export_new(request: HttpRequest, payload: ExportIn) -> Status[Export]:
    """Queue an export of a dataset with the export form's fields and defaults.

    The form checks the values (422 with its messages); options that cannot work
    together for the kind, or a holdout that is not a finished benchmark of the
    dataset, are refused by ``export_create`` (400), and 503 answers when the queue's
    Redis does not. Nothing is written on any refusal. Follow the export at ``url``.
    """
    dataset = Dataset.objects.filter(code=payload.dataset).first()
    if dataset is None:
        raise ValidationError(
            [{"loc": ["body", BODY, "dataset"], "msg": "No dataset has this code.", "type": "form"}]
        )
    form = validated(lambda data: ExportForm(data, dataset=dataset), payload)
    try:
        export = export_create(
            dataset=dataset,
            kind=form.cleaned_data["kind"],
            options=form.options(),
            user=api_user(request),
        )
    except ExportRefused as exc:
        raise refused(400, exc) from None
    except QueueUnavailable as exc:
        raise refused(503, exc) from None
    return Status(202, _get_export(export.code))


@router.get("", response=list[ExportOut], summary="List exports, newest first")
@paginate(CursorPagination, ordering=("-id",), page_size=100, max_page_size=500)
def export_list(request: HttpRequest, filters: Query[ExportFilters]) -> QuerySet[Export]:
    exports = _exports()
    if filters.dataset is not None:
        exports = exports.filter(dataset__code=filters.dataset)
    if filters.kind is not None:
        exports = exports.filter(kind=filters.kind)
    if filters.status is not None:
        exports = exports.filter(status=filters.status)
    return exports


@router.get(
    "/{code}", response=ExportDetailOut, url_name="export", summary="An export and its progress"
)
def export_detail(request: HttpRequest, code: UUID) -> Export:
    """The export's progress, counts, the images it left out by reason, its options,
    and, once done, its file."""
    return _get_export(code)


@router.get(
    "/{code}/download",
    response={409: ErrorOut},
    url_name="export-download",
    summary="Download an export's file",
    openapi_extra={
        "responses": {
            "200": {
                "description": "The file: a zip archive, or the one data file of an export"
                " without an archive.",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            },
            "302": {
                "description": "Where exports are kept in object storage: a redirect to a"
                " short-lived link to the file."
            },
        }
    },
)
def export_download(request: HttpRequest, code: UUID) -> HttpResponseBase:
    """The finished export's file, as the page's download link gives it (streamed from
    a local folder, a redirect to a short-lived link from a bucket); 409 while the
    export has none (not finished, failed or cancelled)."""
    export = _get_export(code)
    try:
        return export_file_response(export)
    except ExportRefused as exc:
        if export.is_finished():
            raise refused(409, exc) from None
        follow = reverse("api:export", kwargs={"code": export.code})
        waiting = ExportRefused(
            f"the export is {export.get_status_display().lower()} and has no file yet;"
            f" follow it at {follow}"
        )
        raise refused(409, waiting) from None


@router.post("/{code}/cancel", response={200: ExportOut, 409: ErrorOut}, summary="Cancel an export")
def export_cancel_action(request: HttpRequest, code: UUID) -> Export:
    """Stop a queued or running export (a running job stops at its next progress
    write, and leaves no file); 409 for one that has ended."""
    export = _get_export(code)
    try:
        export_cancel(export=export)
    except ExportRefused as exc:
        raise refused(409, exc) from None
    return _get_export(code)
