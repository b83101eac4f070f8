"""What the lists of datasets and images show: counts, and images with their curated labels.

The dataset list counts each dataset's images and its known labels in one query
(``datasets_counted``), for the page and the API alike.

An image is listed with the labels SEKE stands behind for it, per grain: the
value, where it came from (a reviewer, the dataset, or a machine label its run
accepted) and, for a machine label, its confidence. They are
``exports.curation``'s records, computed by ``curate_rows`` for the rows of one
page: the one definition of the curated label, never a second one here.

Filtering on curated labels (``ImageFilter``) would need that definition for
every image, which grows with the data. So each filter has a *necessary*
condition in SQL, and the page's candidates are then checked against the curated
records themselves:

* An image no reviewer has decided has a curated grain from its dataset label,
  else from its latest accepted annotation. Those are columns and one correlated
  subquery (``_accepted``): for such an image the SQL condition is exact.
* An image with a standing decision may have a human label on any grain, or a
  grain left unresolved by disagreeing reviews, so that the dataset or machine
  label applies after all. The SQL condition keeps such an image wherever a
  human label could make it match, and only where it could (a machine or dataset
  label needs the same columns whatever the reviews say); ``curate`` decides.

A page reads its candidates in id order after the cursor, at most ``size`` + 1
without label filters and ``SCAN_FACTOR * size + 1`` with them, and keeps those
the curated records admit; a candidate no decision stands on matches for
certain, so curating stops once ``size`` + 1 of those are in hand. The queries
per page are fixed (the candidates, their decisions, their accepted annotations)
whatever the data. When the candidates run out before the page is full (many
decided images that the curated record turns down), the page is shorter and its
cursor continues after the last candidate read: a page may hold fewer images
than asked, even none, while a next one exists. Walking the pages yields every
matching image exactly once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import (
    BooleanField,
    Case,
    Count,
    F,
    FloatField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.expressions import Combinable

from seke_app.engine.formats.records import GRAINS, SOURCES, CuratedRecord
from seke_app.exports.curation import IMAGE_FIELDS, curate_rows
from seke_app.insights.references import decided_images
from seke_app.models import Annotation, Dataset, FaceImage
from seke_app.models.runs import confident

# Candidates read per page when labels are filtered, as a multiple of the page size.
SCAN_FACTOR = 2

# The columns a listed image is read with.
ROW_FIELDS = (
    *IMAGE_FIELDS,
    "dataset__code",
    "dataset__name",
    "width",
    "height",
    "rejected",
)

# The candidates' column that says whether a decision stands on the image.
DECIDED = "decided"

_CONFIDENCE_FIELDS = {
    "expression": "expression_confidence",
    "va": "va_confidence",
    "aus": "au_confidence",
}


def datasets_counted() -> QuerySet[Dataset]:
    """Every dataset with its images and known labels counted (``n_images``,
    ``n_expression``, ``n_va``, ``n_aus``), in one query, by name (a query that groups
    rows ignores the model's ordering)."""
    return Dataset.objects.annotate(**_label_counts("images__")).order_by("name")


def _label_counts(prefix: str) -> dict[str, Count]:
    """Counts of images and of their known labels; ``prefix`` leads from the counted rows
    to the images ("images__" from datasets, "" on images themselves)."""
    image = f"{prefix}id" if prefix else "id"
    return {
        "n_images": Count(image),
        "n_expression": Count(image, filter=Q(**{f"{prefix}known_expression__isnull": False})),
        "n_va": Count(image, filter=Q(**{f"{prefix}known_valence__isnull": False})),
        "n_aus": Count(image, filter=Q(**{f"{prefix}known_aus__isnull": False})),
    }


def split_counts(dataset: Dataset) -> list[dict[str, Any]]:
    """The dataset's counts per split ("" for images without one), in one query."""
    rows = dataset.images.order_by("split").values("split").annotate(**_label_counts(""))
    return [dict(row) for row in rows]


# --- filters on curated labels ---------------------------------------------------------


def _dataset_has(grain: str) -> Q:
    """On images: the dataset's own label has the grain (VA as a pair, AUs not empty)."""
    if grain == "expression":
        return Q(known_expression__isnull=False)
    if grain == "va":
        return Q(known_valence__isnull=False, known_arousal__isnull=False)
    return Q(known_aus__isnull=False) & ~Q(known_aus={})


def _dataset_lacks(grain: str) -> Q:
    if grain == "expression":
        return Q(known_expression__isnull=True)
    if grain == "va":
        return Q(known_valence__isnull=True) | Q(known_arousal__isnull=True)
    return Q(known_aus__isnull=True) | Q(known_aus={})


def _machine_has(grain: str) -> Q:
    """On annotations: the machine label has the grain, as ``curation`` reads it."""
    if grain == "expression":
        return Q(expression__isnull=False)
    if grain == "va":
        return Q(valence__isnull=False, arousal__isnull=False)
    return ~Q(aus={})


def _accepted(value: Combinable) -> Subquery:
    """For a query over images: ``value`` of the image's latest accepted annotation, the
    one ``curation`` takes a machine label from (NULL without one)."""
    latest = (
        Annotation.objects.filter(confident(), image=OuterRef("pk"))
        .order_by("-created_at", "-id")
        .annotate(value=value)
        .values("value")[:1]
    )
    return Subquery(latest)


@dataclass(frozen=True)
class ImageFilter:
    """Which images a list shows: where they are, and what their curated labels are.

    ``expression`` is the curated expression; ``provenance`` and the confidence
    bounds apply to the curated label of ``grain``. Only machine labels have a
    confidence, so a bound keeps only images whose label on ``grain`` is the
    machine's, with a confidence within the bounds. Label filters leave out images
    rejected by a reviewer or marked rejected: they have no curated label.
    """

    dataset: Dataset | None = None
    split: str | None = None
    expression: str | None = None
    grain: str = "expression"
    provenance: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None

    def __post_init__(self) -> None:
        if self.grain not in GRAINS:
            raise ValueError(f"unknown grain {self.grain!r}")
        if self.provenance is not None and self.provenance not in SOURCES:
            raise ValueError(f"unknown provenance {self.provenance!r}")
        low, high = self.min_confidence, self.max_confidence
        if low is not None and high is not None and low > high:
            raise ValueError(f"the minimum confidence {low:g} is above the maximum {high:g}")

    @property
    def bounded(self) -> bool:
        return self.min_confidence is not None or self.max_confidence is not None

    @property
    def on_labels(self) -> bool:
        return self.expression is not None or self.provenance is not None or self.bounded

    def scope(self) -> Q:
        """The images considered, before any label."""
        found = Q()
        if self.dataset is not None:
            found &= Q(dataset=self.dataset)
        if self.split:
            found &= Q(split=self.split)
        if self.on_labels:
            found &= Q(rejected=False)
        return found

    def necessary(self, images: QuerySet[FaceImage]) -> QuerySet[FaceImage]:
        """``images`` narrowed to those whose curated labels may match (see the module doc),
        each with ``DECIDED``: whether a decision stands on it (else the match is certain)."""
        images = images.annotate(**{DECIDED: decided_images()})
        if self.expression is not None:
            images = images.alias(_machine_expression=_accepted(F("expression"))).filter(
                Q(**{DECIDED: True})
                | Q(known_expression=self.expression)
                | Q(known_expression__isnull=True, _machine_expression=self.expression)
            )
        grain = self.grain
        if self.provenance == "human":
            images = images.filter(**{DECIDED: True})
        elif self.provenance == "dataset":
            images = images.filter(_dataset_has(grain))
        elif self.provenance == "machine" and not self.bounded:
            present = Case(
                When(_machine_has(grain), then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            )
            images = images.alias(_machine=_accepted(present)).filter(
                _dataset_lacks(grain), _machine=True
            )
        if self.bounded:
            # The grain's confidence where the machine label has the grain, else NULL.
            field = _CONFIDENCE_FIELDS[grain]
            score = Case(When(_machine_has(grain), then=F(field)), output_field=FloatField())
            images = images.alias(_confidence=_accepted(score)).filter(_dataset_lacks(grain))
            if self.min_confidence is not None:
                images = images.filter(_confidence__gte=self.min_confidence)
            if self.max_confidence is not None:
                images = images.filter(_confidence__lte=self.max_confidence)
        return images

    def admits(self, record: CuratedRecord | None) -> bool:
        """Whether an image with this curated record (None: rejected) matches."""
        if record is None:
            return not self.on_labels
        if self.expression is not None and record.expression != self.expression:
            return False
        source = record.provenance.get(self.grain)
        if self.provenance is not None and (source is None or source.source != self.provenance):
            return False
        if self.bounded:
            if source is None or source.source != "machine" or source.confidence is None:
                return False
            if self.min_confidence is not None and source.confidence < self.min_confidence:
                return False
            if self.max_confidence is not None and source.confidence > self.max_confidence:
                return False
        return True


# --- pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedImage:
    """One image of a page: its columns (``ROW_FIELDS``) and its curated record."""

    row: dict[str, Any]
    record: CuratedRecord | None

    @property
    def rejected(self) -> bool:
        """Marked rejected, or rejected by the reviews that stand on it."""
        return bool(self.row["rejected"]) or self.record is None


@dataclass(frozen=True)
class ImagePage:
    images: list[ListedImage]
    # The id after which the next page starts; None on the last page.
    after: int | None


def listed(rows: Sequence[dict[str, Any]]) -> list[ListedImage]:
    """Image rows (read with ``ROW_FIELDS``) with their curated records."""
    records = curate_rows(rows)
    return [
        ListedImage(row, None if row["rejected"] else record)
        for row, record in zip(rows, records, strict=True)
    ]


def image_page(filters: ImageFilter, *, after: int = 0, size: int = 100) -> ImagePage:
    """The images after id ``after`` that ``filters`` admits, at most ``size`` of them."""
    images = FaceImage.objects.filter(filters.scope(), id__gt=after)
    if not filters.on_labels:
        rows = list(images.order_by("id").values(*ROW_FIELDS)[: size + 1])
        # Every image matches: the one past the page only says that another follows.
        shown = listed(rows[:size])
        return ImagePage(shown, shown[-1].row["id"] if len(rows) > size else None)
    limit = SCAN_FACTOR * size + 1
    rows = list(filters.necessary(images).order_by("id").values(*ROW_FIELDS, DECIDED)[:limit])
    examined = rows[: _enough(rows, size)]
    matched = [image for image in listed(examined) if filters.admits(image.record)]
    if len(matched) > size:
        return ImagePage(matched[:size], matched[size - 1].row["id"])
    if len(examined) < len(rows) or len(rows) == limit:
        # The candidates read ran out before the page filled: continue after the last one.
        return ImagePage(matched, examined[-1]["id"])
    return ImagePage(matched, None)


def _enough(candidates: Sequence[dict[str, Any]], size: int) -> int:
    """How many of the candidates (in order) hold ``size`` + 1 certain matches, those no
    decision stands on; all of them when they hold fewer. No more need curating."""
    certain = 0
    for index, row in enumerate(candidates):
        certain += not row[DECIDED]
        if certain > size:
            return index + 1
    return len(candidates)


def encode_cursor(after: int) -> str:
    return base64.urlsafe_b64encode(f"after={after}".encode()).decode()


def decode_cursor(cursor: str) -> int:
    """The id a cursor continues after; ValueError for one this list never gave."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (ValueError, binascii.Error, UnicodeError):
        raise ValueError("the cursor is not one this list gave") from None
    key, _, value = text.partition("=")
    if key != "after" or not value.isdigit():
        raise ValueError("the cursor is not one this list gave")
    return int(value)
