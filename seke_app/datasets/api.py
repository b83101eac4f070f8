"""Datasets and their imports through the API (admins only, as their pages are).

Their images are ``seke_app/datasets/images_api.py``'s.

An import is the import page's upload: the same form (``UploadForm``), the same
streaming upload handler writing straight into ``SEKE_DATA_DIR/imports``, the
same service (``dataset_import_create``) and the same job. As on the page, an
upload over ``SEKE_MAX_UPLOAD_MB`` is refused from its declared length before its
body is read, and a browser session's CSRF check (which reads the body) waits
until the handler is in place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from django.db.models import QuerySet
from django.http import HttpRequest, QueryDict
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status
from ninja.utils import check_csrf

from seke_app.api.core import (
    ADMINS_ONLY,
    BrowserSession,
    ErrorOut,
    Role,
    TokenAuth,
    api_user,
    choices_schema,
    refused,
)
from seke_app.api.forms import form_invalid
from seke_app.datasets.forms import UploadForm
from seke_app.datasets.listing import datasets_counted, split_counts
from seke_app.datasets.services import (
    DatasetExists,
    ImportRefused,
    dataset_create,
    dataset_import_cancel,
    dataset_import_create,
    upload_too_large,
)
from seke_app.datasets.uploads import (
    ImportUploadHandler,
    content_length,
    discard_folder,
    incoming_folder,
)
from seke_app.engine.ingest import MANIFEST_NAME
from seke_app.engine.vocab import AU_VOCABULARIES
from seke_app.models import Dataset
from seke_app.models.datasets import DatasetImport
from seke_app.queue import QueueUnavailable

router = Router(tags=["datasets"], auth=ADMINS_ONLY)
imports_router = Router(tags=["datasets"], auth=ADMINS_ONLY)


# --- datasets --------------------------------------------------------------------------


ImportStatus = Annotated[
    DatasetImport.Status, choices_schema(DatasetImport.Status, "Import status")
]


class CountsOut(Schema):
    n_images: int = Field(description="Images.")
    n_expression: int = Field(description="Images with a known expression (the dataset's own).")
    n_va: int = Field(description="Images with a known valence.")
    n_aus: int = Field(description="Images with known AUs.")


class DatasetOut(CountsOut):
    code: UUID
    url: str = Field(description="The dataset in this API.")
    name: str
    description: str
    licence_note: str
    au_vocabulary: str
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_url(dataset: Dataset) -> str:
        return reverse("api:dataset", kwargs={"code": dataset.code})

    @staticmethod
    def resolve_created_by(dataset: Dataset) -> str | None:
        return dataset.created_by.get_username() if dataset.created_by else None


class SplitOut(CountsOut):
    split: str = Field(description='The split\'s name; "" for images without one.')


class DatasetDetailOut(DatasetOut):
    splits: list[SplitOut]
    images_url: str = Field(description="Its images, with their curated labels.")

    @staticmethod
    def resolve_splits(dataset: Dataset) -> list[dict[str, Any]]:
        return split_counts(dataset)

    @staticmethod
    def resolve_images_url(dataset: Dataset) -> str:
        return f"{reverse('api:images')}?dataset={dataset.code}"


class DatasetIn(Schema):
    name: str = Field(
        max_length=100,
        description="A slug: letters, digits, '-' and '_'. Refused when a dataset has it.",
    )
    au_vocabulary: str | None = Field(
        None,
        description=f"One of {', '.join(sorted(AU_VOCABULARIES))}; null: feid17. A dataset"
        " keeps the vocabulary it was created with.",
    )
    description: str = ""
    licence_note: str = ""


def _datasets() -> QuerySet[Dataset]:
    return datasets_counted().select_related("created_by")


def _get_dataset(code: UUID) -> Dataset:
    return get_object_or_404(_datasets(), code=code)


@router.get("", response=list[DatasetOut], summary="List datasets")
def dataset_list(request: HttpRequest) -> QuerySet[Dataset]:
    """Every dataset with its images and known labels counted, by name."""
    return _datasets()


@router.post(
    "",
    response={201: DatasetDetailOut, 400: ErrorOut, 409: ErrorOut},
    summary="Create an empty dataset",
)
def dataset_new(request: HttpRequest, payload: DatasetIn) -> Status[Dataset]:
    """An empty dataset with its AU vocabulary, to import into later.

    Checked as the import page checks a new dataset's name and vocabulary (400);
    409 when a dataset has the name. An import may also create its dataset
    (``POST /api/v1/imports``, as the import page does).
    """
    try:
        dataset = dataset_create(
            name=payload.name,
            au_vocabulary=payload.au_vocabulary,
            description=payload.description,
            licence_note=payload.licence_note,
            user=api_user(request),
        )
    except DatasetExists as exc:
        raise refused(409, exc) from None
    except ImportRefused as exc:
        raise refused(400, exc) from None
    return Status(201, _get_dataset(dataset.code))


@router.get("/{code}", response=DatasetDetailOut, url_name="dataset", summary="A dataset")
def dataset_detail(request: HttpRequest, code: UUID) -> Dataset:
    """The dataset with its counts, in all and per split."""
    return _get_dataset(code)


# --- imports ---------------------------------------------------------------------------


class RejectionOut(Schema):
    file: str
    reason: str
    detail: str


class ImportOut(Schema):
    code: UUID
    url: str = Field(description="Where to follow the import.")
    status: ImportStatus
    dataset: UUID | None = Field(
        description="The dataset's code, once it exists (an import creates a new one with"
        " its first accepted image)."
    )
    dataset_name: str
    au_vocabulary: str = Field(description='As asked; "": the dataset\'s own.')
    upload_name: str
    upload_size: int = Field(description="Bytes uploaded.")
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    percent: float = Field(description="Image files checked, in percent of those to check.")
    n_total: int = Field(description="Image files to check.")
    n_done: int = Field(description="Image files checked so far.")
    n_imported: int
    n_labelled: int = Field(description="Imported images with labels from the manifest.")
    n_duplicates: int = Field(description="Images the dataset already had, or twice in the upload.")
    n_rejected: int
    rejected_by_reason: dict[str, int] = Field(description="Every rejection, counted by reason.")
    rejected: list[RejectionOut] = Field(
        description=f"The first {DatasetImport.REJECTIONS_KEPT} rejections with their reasons."
    )
    warnings: list[str]
    error: str = Field(description="Why a failed import failed.")
    settled: bool = Field(
        description="Finished, and its job let go of the upload: nothing changes any more."
    )

    @staticmethod
    def resolve_url(job: DatasetImport) -> str:
        return reverse("api:import", kwargs={"code": job.code})

    @staticmethod
    def resolve_dataset(job: DatasetImport) -> UUID | None:
        # As the import page: the dataset the import wrote to, else the one of its name.
        dataset = job.dataset or Dataset.objects.filter(name=job.dataset_name).first()
        return dataset.code if dataset else None

    @staticmethod
    def resolve_created_by(job: DatasetImport) -> str | None:
        return job.created_by.get_username() if job.created_by else None

    @staticmethod
    def resolve_percent(job: DatasetImport) -> float:
        return round(job.progress * 100, 1)

    @staticmethod
    def resolve_rejected(job: DatasetImport) -> list[dict[str, str]]:
        return [{"file": f, "reason": r, "detail": d} for f, r, d in job.rejected]

    @staticmethod
    def resolve_settled(job: DatasetImport) -> bool:
        return job.is_settled()


class UploadSession(BrowserSession):
    """A signed-in browser's session for an upload, whose CSRF check waits.

    Django's CSRF check reads the form, and so the whole body; ``_upload`` runs it
    once the streaming upload handler is in place (the import page does the same).
    """

    def __init__(self, role: Role) -> None:
        super().__init__(role)
        self.csrf = False

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = super().authenticate(request, key)
        if user is not None:
            request.seke_csrf_pending = True  # type: ignore[attr-defined]
        return user


UPLOAD_AUTH = [TokenAuth("admin"), UploadSession("admin")]

_UPLOAD_FIELDS: dict[str, Any] = {
    "files": {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": f"One zip of a folder (with an optional {MANIFEST_NAME}), or image"
        f" files and optionally a {MANIFEST_NAME}; at most SEKE_MAX_UPLOAD_MB in all.",
    },
    "au_vocabulary": {
        "type": "string",
        "enum": sorted(AU_VOCABULARIES),
        "description": "Left out: the dataset's own (feid17 for a new one).",
    },
    "licence_note": {"type": "string"},
}


def _upload_body(*, named: bool) -> dict[str, Any]:
    properties = dict(_UPLOAD_FIELDS)
    required = ["files"]
    if named:
        properties["dataset"] = {
            "type": "string",
            "description": "An existing dataset's name, or a new one (letters, digits, - and"
            " _), created with the import's first accepted image.",
        }
        required.append("dataset")
    schema = {"type": "object", "properties": properties, "required": required}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


_UPLOAD_RESPONSES: dict[int, Any] = {
    202: ImportOut,
    400: ErrorOut,
    413: ErrorOut,
    503: ErrorOut,
}


def _upload(request: HttpRequest, *, dataset: Dataset | None) -> Status[DatasetImport]:
    """The import page's upload: refused unread when too large, streamed to the data
    directory, checked by its form and ``dataset_import_create``, queued."""
    too_large = upload_too_large(content_length(request))
    if too_large:
        raise HttpError(413, too_large)
    folder = incoming_folder()
    request.upload_handlers = [ImportUploadHandler(request, folder)]
    try:
        if getattr(request, "seke_csrf_pending", False) and check_csrf(request) is not None:
            raise HttpError(403, "CSRF check failed: send the page's CSRF token.")
        form = UploadForm(_upload_data(request.POST, dataset), request.FILES)
        if not form.is_valid():
            raise form_invalid(form)
        try:
            job = dataset_import_create(
                uploads=form.cleaned_data["files"],
                dataset_name=form.cleaned_data["dataset"],
                au_vocabulary=form.cleaned_data["au_vocabulary"] or None,
                licence_note=form.cleaned_data["licence_note"],
                user=api_user(request),
            )
        except ImportRefused as exc:
            raise refused(400, exc) from None
        except QueueUnavailable as exc:
            raise refused(503, exc) from None
    finally:
        discard_folder(folder)
    return Status(202, _get_import(job.code))


def _upload_data(data: QueryDict, dataset: Dataset | None) -> QueryDict:
    """The form's fields; an import into a dataset named by its code takes its name."""
    if dataset is None:
        return data
    given = data.get("dataset")
    if given not in (None, dataset.name):
        raise HttpError(
            400,
            f"The path names the dataset {dataset.name!r}, the form {given!r}: leave the"
            " dataset field out.",
        )
    data = data.copy()
    data["dataset"] = dataset.name
    return data


@router.post(
    "/{code}/imports",
    response={**_UPLOAD_RESPONSES, 404: ErrorOut},
    auth=UPLOAD_AUTH,
    openapi_extra=_upload_body(named=False),
    summary="Import images into a dataset",
)
def dataset_import_new(request: HttpRequest, code: UUID) -> Status[DatasetImport]:
    """Upload a zip, or image files with an optional manifest.csv, as the import page
    takes them (multipart, field ``files``); imported by a background job.

    413 for an upload over SEKE_MAX_UPLOAD_MB (refused before it is read); 422 for
    what the page's form refuses; 400 for a zip or manifest that cannot be read or
    a vocabulary other than the dataset's; 503 when the queue's Redis does not
    answer. Nothing is kept on any refusal. Follow the import at ``url``.
    """
    return _upload(request, dataset=get_object_or_404(Dataset, code=code))


@imports_router.post(
    "",
    response=_UPLOAD_RESPONSES,
    auth=UPLOAD_AUTH,
    openapi_extra=_upload_body(named=True),
    summary="Import images into a dataset named, new or existing",
)
def import_new(request: HttpRequest) -> Status[DatasetImport]:
    """The import page's form (multipart): a dataset's name, new or existing, and a
    zip or image files. A new dataset is created with the first image the import
    accepts, so an import that accepts none creates nothing. Answers as
    ``POST /api/v1/datasets/{code}/imports``."""
    return _upload(request, dataset=None)


def _get_import(code: UUID) -> DatasetImport:
    return get_object_or_404(DatasetImport.objects.select_related("created_by"), code=code)


@imports_router.get("/{code}", response=ImportOut, url_name="import", summary="An import")
def import_detail(request: HttpRequest, code: UUID) -> DatasetImport:
    """The import's progress and, once it has ended, its report: images imported,
    already present and rejected (each with its reason)."""
    return _get_import(code)


@imports_router.post(
    "/{code}/cancel", response={200: ImportOut, 409: ErrorOut}, summary="Cancel an import"
)
def import_cancel(request: HttpRequest, code: UUID) -> DatasetImport:
    """Stop a queued or running import between batches of images; those imported
    before stay. 409 for an import that has ended."""
    job = _get_import(code)
    try:
        dataset_import_cancel(job=job)
    except ImportRefused as exc:
        raise refused(409, exc) from None
    return _get_import(code)
