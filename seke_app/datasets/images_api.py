"""Images through the API: each with its curated labels, filtered and paged, and its history.

The list is for admins, as the dataset page that lists images is; one image and
its history are for every annotator, as the image's page is. What a list holds and
how its filters stay correct and fast is ``seke_app/datasets/listing.py``'s.

The answers are plain pydantic models, built here and validated once. ninja's
``Schema`` reads every field of a nested answer through its Django-aware getter,
which for a page of 100 images took longer than the page's queries
(``bench/README.md``, ``api_listing.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError, ValidationError
from pydantic import BaseModel

from seke_app.api.core import ADMINS_ONLY, ErrorOut
from seke_app.datasets.faces import face_rows
from seke_app.datasets.listing import (
    ROW_FIELDS,
    ImageFilter,
    ListedImage,
    decode_cursor,
    encode_cursor,
    image_page,
    listed,
)
from seke_app.engine.formats.records import CuratedRecord, Provenance
from seke_app.engine.vocab import EXPRESSIONS
from seke_app.insights.references import Decision, Labels, decision_store, human_references
from seke_app.models import Annotation, Dataset, FaceImage

# Annotators and admins by default: one image, as its page.
router = Router(tags=["images"])

PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


class LabelOut(BaseModel):
    """One grain's curated label: where it came from, and the fields of that source."""

    provenance: Literal["human", "dataset", "machine"]
    confidence: float | None = Field(
        None, description="A machine label's confidence on this grain; null for the others."
    )
    reviewer: str | None = Field(None, description="human: who decided.")
    decided_at: datetime | None = Field(None, description="human: when.")
    decision: str | None = Field(None, description="human: accept or correct.")
    run: UUID | None = Field(None, description="machine: the run's code.")
    model: str | None = Field(None, description="machine: the model.")
    prompt_version: int | None = Field(None, description="machine: the prompt version's number.")
    n_samples: int | None = Field(None, description="machine: the samples SV-UAMC drew.")


class ExpressionOut(LabelOut):
    expression: str


class VAOut(LabelOut):
    valence: float
    arousal: float


class AUsOut(LabelOut):
    aus: dict[str, bool] = Field(description='Each coded AU: {"12": true, "4": false}.')


class CuratedOut(BaseModel):
    expression: ExpressionOut | None
    va: VAOut | None
    aus: AUsOut | None


class DatasetRefOut(BaseModel):
    code: UUID
    name: str


class ImageOut(BaseModel):
    code: UUID
    dataset: DatasetRefOut
    split: str
    subject: str
    file_name: str = Field(description="The file's name in the upload.")
    width: int
    height: int
    image_format: str
    sha256: str
    file_url: str = Field(description="The image file (annotators and admins).")
    url: str = Field(description="The image in this API.")
    rejected: bool = Field(
        description="Marked rejected, or rejected by the reviews that stand on it: no label."
    )
    labels: CuratedOut = Field(
        description="Per grain, the label SEKE stands behind (as exports write it): a"
        " reviewer's, else the dataset's own, else a machine label its run accepted."
    )


class ImagePageOut(BaseModel):
    results: list[ImageOut]
    next: str | None = Field(
        description="The next page; null on the last. A page filtered on labels may hold"
        " fewer images than asked, even none, while a next one exists."
    )


class LabelsOut(BaseModel):
    expression: str | None
    valence: float | None
    arousal: float | None
    aus: dict[str, bool] | None


class RunRefOut(BaseModel):
    code: UUID
    label: str


class AnnotationOut(LabelsOut):
    code: UUID
    run: RunRefOut
    model: str
    prompt_version: int
    created_at: datetime
    confidence: float = Field(description="Overall: the lowest of the grains' confidences.")
    expression_confidence: float
    va_confidence: float
    au_confidence: float
    flagged: bool
    flag_reasons: list[str]
    held: bool = Field(description="Flagged for a reason no threshold lifts.")
    accepted: bool = Field(description="Confident under its run's current review threshold.")
    known_grains: list[str] = Field(description="Grains the model was given as known labels.")


class DecisionOut(BaseModel):
    annotation: UUID = Field(description="The annotation decided on.")
    kind: str = Field(description="first, second or adjudication.")
    action: str = Field(description="accept, correct or reject_image.")
    audit: bool = Field(description="A blind audit review.")
    reviewer: str
    decided_at: datetime
    labels: LabelsOut = Field(description="What the decision stands behind, per grain.")
    entered: LabelsOut = Field(description="The values the reviewer entered.")


class HistoryOut(BaseModel):
    review_status: str = Field(description="As the dataset page shows it.")
    known: LabelsOut = Field(description="The labels imported with the image.")
    unresolved: list[str] = Field(
        description="Grains the standing reviews disagree on, until an admin adjudicates."
    )
    annotations: list[AnnotationOut] = Field(description="Every machine answer, newest first.")
    decisions: list[DecisionOut] = Field(
        description="Every review decision that counts (neither undone nor a gold"
        " question's answer), newest first."
    )


class ImageDetailOut(ImageOut):
    history: HistoryOut | None = Field(description="With ?history=true.")


class ImageFilters(Schema):
    dataset: UUID | None = Field(None, description="Only this dataset's images (its code).")
    split: str | None = Field(None, description="Only the images of this split.")
    expression: str | None = Field(
        None, description=f"The curated expression: one of {', '.join(EXPRESSIONS)}."
    )
    grain: Literal["expression", "va", "aus"] = Field(
        "expression", description="The grain that provenance and the confidence bounds read."
    )
    provenance: Literal["human", "dataset", "machine"] | None = Field(
        None, description="Where the curated label of the grain came from."
    )
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Only machine labels of the grain with at least this confidence.",
    )
    max_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Only machine labels of the grain with at most this confidence.",
    )
    cursor: str | None = Field(None, description="From the previous page's next link.")
    page_size: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


def _query_error(field: str, message: str) -> ValidationError:
    return ValidationError([{"loc": ["query", field], "msg": message, "type": "value_error"}])


def _image_filter(filters: ImageFilters) -> ImageFilter:
    dataset = None
    if filters.dataset is not None:
        dataset = Dataset.objects.filter(code=filters.dataset).first()
        if dataset is None:
            raise _query_error("dataset", "No dataset has this code.")
    if filters.expression is not None and filters.expression not in EXPRESSIONS:
        raise _query_error("expression", f"Give one of {', '.join(EXPRESSIONS)}.")
    try:
        return ImageFilter(
            dataset=dataset,
            split=filters.split,
            expression=filters.expression,
            grain=filters.grain,
            provenance=filters.provenance,
            min_confidence=filters.min_confidence,
            max_confidence=filters.max_confidence,
        )
    except ValueError as exc:
        raise _query_error("min_confidence", str(exc)) from None


def _label(provenance: Provenance, **value: Any) -> dict[str, Any]:
    shown = {k: v for k, v in provenance.to_json().items() if k not in {"source", "dataset"}}
    return {"provenance": provenance.source, **shown, **value}


def _aus_out(aus: dict[int, bool] | None) -> dict[str, bool] | None:
    return None if aus is None else {str(au): on for au, on in sorted(aus.items())}


def _curated(record: CuratedRecord | None) -> dict[str, Any]:
    labels: dict[str, Any] = {"expression": None, "va": None, "aus": None}
    if record is None:
        return labels
    sources = record.provenance
    if record.expression is not None:
        labels["expression"] = _label(sources["expression"], expression=record.expression)
    if record.valence is not None and record.arousal is not None:
        labels["va"] = _label(sources["va"], valence=record.valence, arousal=record.arousal)
    if record.aus is not None:
        labels["aus"] = _label(sources["aus"], aus=_aus_out(record.aus))
    return labels


# Stands for an image's code in its URLs, which are reversed once per page.
_ANY_CODE = "00000000-0000-0000-0000-000000000000"


class _Links:
    """The absolute URLs of a page's images: its file and its place in the API."""

    def __init__(self, request: HttpRequest) -> None:
        self.file = request.build_absolute_uri(
            reverse("api:image-file", kwargs={"code": _ANY_CODE})
        )
        self.api = request.build_absolute_uri(reverse("api:image", kwargs={"code": _ANY_CODE}))

    def of(self, code: UUID) -> tuple[str, str]:
        return self.file.replace(_ANY_CODE, str(code)), self.api.replace(_ANY_CODE, str(code))


def _image_out(links: _Links, image: ListedImage) -> dict[str, Any]:
    row = image.row
    file_url, url = links.of(row["code"])
    return {
        "code": row["code"],
        "dataset": {"code": row["dataset__code"], "name": row["dataset__name"]},
        "split": row["split"],
        "subject": row["subject"],
        "file_name": row["original_name"],
        "width": row["width"],
        "height": row["height"],
        "image_format": row["image_format"],
        "sha256": row["sha256"],
        "file_url": file_url,
        "url": url,
        "rejected": image.rejected,
        "labels": _curated(image.record),
    }


def _next_link(request: HttpRequest, after: int | None) -> str | None:
    if after is None:
        return None
    query = request.GET.copy()
    query["cursor"] = encode_cursor(after)
    return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")


@router.get(
    "",
    response=ImagePageOut,
    auth=ADMINS_ONLY,
    url_name="images",
    summary="List images with their curated labels",
)
def image_list(request: HttpRequest, filters: Query[ImageFilters]) -> ImagePageOut:
    """Images in the order they were imported, 100 a page (``page_size`` up to 500);
    follow ``next`` until it is null. Each carries, per grain, the label SEKE stands
    behind with its provenance and confidence.

    ``expression`` filters on the curated expression; ``provenance`` and the
    confidence bounds on the curated label of ``grain`` (expression unless given).
    Label filters leave out rejected images, which have no label.
    """
    image_filter = _image_filter(filters)
    after = 0
    if filters.cursor:
        try:
            after = decode_cursor(filters.cursor)
        except ValueError as exc:
            raise _query_error(
                "cursor", f"{str(exc).capitalize()}; start again without it."
            ) from None
    page = image_page(image_filter, after=after, size=filters.page_size)
    links = _Links(request)
    return ImagePageOut.model_validate(
        {
            "results": [_image_out(links, image) for image in page.images],
            "next": _next_link(request, page.after),
        }
    )


def _labels_out(labels: Labels) -> dict[str, Any]:
    va = labels.va or (None, None)
    return {
        "expression": labels.expression,
        "valence": va[0],
        "arousal": va[1],
        "aus": _aus_out(labels.aus),
    }


def _annotation_out(annotation: Annotation) -> dict[str, Any]:
    run = annotation.run
    return {
        "code": annotation.code,
        "run": {"code": run.code, "label": run.label},
        "model": run.model_name,
        "prompt_version": annotation.prompt_version.number,
        "created_at": annotation.created_at,
        "expression": annotation.expression,
        "valence": annotation.valence,
        "arousal": annotation.arousal,
        "aus": _aus_out(annotation.aus_dict()),
        "confidence": annotation.confidence,
        "expression_confidence": annotation.expression_confidence,
        "va_confidence": annotation.va_confidence,
        "au_confidence": annotation.au_confidence,
        "flagged": annotation.flagged,
        "flag_reasons": [str(reason) for reason in annotation.flag_reasons],
        "held": annotation.held,
        "accepted": annotation.is_confident(run.review_threshold),
        "known_grains": list(annotation.known_grains or ()),
    }


def _decision_out(decision: Decision, codes: dict[int, UUID]) -> dict[str, Any]:
    return {
        "annotation": codes[decision.annotation_id],
        "kind": decision.kind.value,
        "action": decision.action.value,
        "audit": decision.audit,
        "reviewer": decision.reviewer,
        "decided_at": decision.decided_at,
        "labels": _labels_out(decision.labels),
        "entered": _labels_out(decision.decided),
    }


def _history(image: FaceImage) -> dict[str, Any]:
    """The image's known labels, machine answers and decisions, as its page shows them;
    decisions are read through the decision contract."""
    annotations = list(
        image.annotations.select_related("run__dataset", "prompt_version").order_by(
            "-created_at", "-id"
        )
    )
    ids = FaceImage.objects.filter(id=image.id).values("id")
    decisions = list(decision_store().decisions(image_ids=ids))
    reference = human_references(ids, gold=False).get(image.id)
    codes = {annotation.id: annotation.code for annotation in annotations}
    return {
        "review_status": face_rows([image])[0].status,
        "known": {
            "expression": image.known_expression,
            "valence": image.known_valence,
            "arousal": image.known_arousal,
            "aus": _aus_out(image.known_aus_dict()),
        },
        "unresolved": sorted(reference.unresolved) if reference else [],
        "annotations": [_annotation_out(annotation) for annotation in annotations],
        "decisions": [_decision_out(decision, codes) for decision in decisions],
    }


@router.get(
    "/{code}", response=ImageDetailOut, url_name="image", summary="An image, and its history"
)
def image_detail(request: HttpRequest, code: UUID, history: bool = False) -> ImageDetailOut:
    """The image with its curated labels; with ``history=true`` also its known labels,
    every machine answer by run and every review decision, as the image's page."""
    image = get_object_or_404(FaceImage.objects.select_related("dataset"), code=code)
    rows = list(FaceImage.objects.filter(id=image.id).values(*ROW_FIELDS))
    found = _image_out(_Links(request), listed(rows)[0])
    found["history"] = _history(image) if history else None
    return ImageDetailOut.model_validate(found)


@router.get(
    "/{code}/file",
    url_name="image-file",
    summary="The image's file",
    response={200: None, 404: ErrorOut},
    openapi_extra={
        "responses": {200: {"description": "The image file, as imported (PNG, JPEG, ...)."}}
    },
)
def image_file(request: HttpRequest, code: UUID) -> FileResponse:
    """The face's file, for annotators and admins: the page's image view for a token
    (relayed from the media storage, a local folder or a bucket)."""
    image = get_object_or_404(FaceImage, code=code)
    try:
        handle = image.file.open("rb")
    except FileNotFoundError:
        raise HttpError(
            404, f"The file of image {code} is missing from the media storage ({image.file.name})."
        ) from None
    response = FileResponse(handle)
    response["Cache-Control"] = "private, max-age=86400"
    return response
