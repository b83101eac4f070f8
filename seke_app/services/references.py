"""Human reference labels for scoring machine annotations: gold, reviews, dataset labels.

The dashboards and comparisons ask whether a machine label agrees with what a
human says. Per image and grain, the reference is, in this order:

1. the image's active gold question (labels an admin trusts);
2. the human review decisions on any annotation of the image, not undone and not
   answers to gold questions (those test the reviewer, not the machine): the latest
   adjudication if there is one; otherwise the latest first review, unless an
   independent second review disagrees with it on that grain, where the grain
   awaits adjudication and has no reference. ``accept`` stands behind the values of
   the reviewed annotation, and a grain a correction left empty counts as accepted
   as it was, as in curation. An image whose deciding review rejected it is left
   out of scoring altogether;
3. the label imported with the image (``FaceImage.known_*``), for the AUs it coded.

The review app's rows are reached through the reverse relations ``decisions`` and
``gold`` of ``FaceImage``, since ``seke_app`` never imports ``review``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from seke_app.engine import quality
from seke_app.models import FaceImage

GRAINS = ("expression", "va", "aus")
# Where a reference label came from, as shown on the pages.
SOURCES = ("gold", "review", "dataset")

VA = tuple[float, float]
AUs = dict[int, bool]

# A decision's labels and the machine labels it judged, as ``values()`` reads them.
DECISION_VALUE_FIELDS = (
    "kind",
    "action",
    "expression",
    "valence",
    "arousal",
    "aus",
    "annotation__expression",
    "annotation__valence",
    "annotation__arousal",
    "annotation__aus",
)
_DECISION_FIELDS = ("image_id", *DECISION_VALUE_FIELDS)
_GOLD_FIELDS = ("id", "gold__expression", "gold__valence", "gold__arousal", "gold__aus")


def related_model(name: str) -> type[models.Model]:
    """The review app's model behind ``FaceImage.<name>``."""
    model = FaceImage._meta.get_field(name).related_model
    assert isinstance(model, type) and issubclass(model, models.Model)
    return model


def parse_aus(value: Any) -> AUs | None:
    if value is None:
        return None
    return {int(au): bool(on) for au, on in value.items()}


def va_pair(valence: float | None, arousal: float | None) -> VA | None:
    if valence is None or arousal is None:
        return None
    return (float(valence), float(arousal))


@dataclass
class Labels:
    """One rater's labels of one image; None where a grain is missing."""

    expression: str | None = None
    va: VA | None = None
    aus: AUs | None = None

    def grain(self, name: str) -> Any:
        return getattr(self, name)


def grain_agrees(name: str, machine: Any, reference: Any) -> bool:
    """Whether a machine label agrees with the reference on one grain.

    Expression: equal. VA: within ``quality.VA_TOLERANCE`` on both axes. AUs: equal
    on every AU the reference codes (a dataset may code only some), a missing
    machine AU counting as absent. A missing machine label never agrees.
    """
    if machine is None:
        return False
    if name == "expression":
        return bool(machine == reference)
    if name == "va":
        return quality.va_agrees(machine, reference)
    return all(bool(machine.get(au)) == on for au, on in reference.items())


@dataclass
class Reference:
    labels: Labels = field(default_factory=Labels)
    sources: dict[str, str] = field(default_factory=dict)
    rejected: bool = False

    def fill(self, labels: Labels, source: str) -> None:
        """Take the grains this reference still lacks from ``labels``."""
        for name in GRAINS:
            value = labels.grain(name)
            if value is not None and self.labels.grain(name) is None:
                setattr(self.labels, name, value)
                self.sources[name] = source


def decision_labels(row: Mapping[str, Any]) -> Labels:
    """What a decision stands behind, per grain (the decided annotation where left empty)."""

    def pick(name: str) -> Any:
        value = row[name] if row["action"] == "correct" else None
        return value if value is not None else row[f"annotation__{name}"]

    return Labels(
        expression=pick("expression"),
        va=va_pair(pick("valence"), pick("arousal")),
        aus=parse_aus(pick("aus")),
    )


def _reviewed_labels(rows: list[Mapping[str, Any]]) -> Labels | None:
    """The deciding labels of one image's decisions (newest first); None when rejected."""
    by_kind: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], row)
    deciding = by_kind.get("adjudication") or by_kind.get("first") or by_kind.get("second")
    if deciding is None or deciding["action"] == "reject_image":
        return None
    labels = decision_labels(deciding)
    other = by_kind.get("second")
    if "adjudication" in by_kind or other is None or other is deciding:
        return labels
    if other["action"] == "reject_image":
        return Labels()
    second = decision_labels(other)
    for name in GRAINS:
        mine, theirs = labels.grain(name), second.grain(name)
        if mine is not None and theirs is not None and not grain_agrees(name, theirs, mine):
            setattr(labels, name, None)
    return labels


def human_references(image_ids: models.QuerySet[Any]) -> dict[int, Reference]:
    """References from gold questions and reviews for the images ``image_ids`` selects.

    Two queries whatever the number of images; dataset labels are added by the
    caller from the rows it streams (``dataset_labels``), to avoid a third pass.
    """
    references: dict[int, Reference] = {}
    gold = (
        FaceImage.objects.filter(id__in=image_ids, gold__isnull=False, gold__active=True)
        .values_list(*_GOLD_FIELDS)
        .iterator(chunk_size=2000)
    )
    for image_id, expression, valence, arousal, aus in gold:
        reference = references.setdefault(image_id, Reference())
        reference.fill(Labels(expression, va_pair(valence, arousal), parse_aus(aus)), "gold")
    decisions = (
        related_model("decisions")
        ._default_manager.filter(image_id__in=image_ids, undone_at__isnull=True)
        .exclude(kind="gold")
        .order_by("image_id", "-created_at", "-id")
        .values(*_DECISION_FIELDS)
    )
    for image_id, rows in _grouped(decisions.iterator(chunk_size=2000)):
        reference = references.setdefault(image_id, Reference())
        labels = _reviewed_labels(rows)
        if labels is None:
            reference.rejected = "gold" not in reference.sources.values()
        else:
            reference.fill(labels, "review")
    return references


def _grouped(rows: Iterable[Mapping[str, Any]]) -> Iterable[tuple[int, list[Mapping[str, Any]]]]:
    """Consecutive rows of one image, for rows ordered by image."""
    current: int | None = None
    group: list[Mapping[str, Any]] = []
    for row in rows:
        if row["image_id"] != current and group:
            assert current is not None
            yield current, group
            group = []
        current = row["image_id"]
        group.append(row)
    if group:
        assert current is not None
        yield current, group


def dataset_labels(
    expression: str | None, valence: float | None, arousal: float | None, aus: Any
) -> Labels:
    return Labels(expression, va_pair(valence, arousal), parse_aus(aus) or None)


def reference_for(
    references: Mapping[int, Reference], image_id: int, known: Labels
) -> Reference | None:
    """The image's full reference, dataset labels filling the gaps; None when unscored."""
    found = references.get(image_id)
    if found is not None and found.rejected:
        return None
    reference = Reference()
    if found is not None:
        labels = found.labels
        reference = Reference(Labels(labels.expression, labels.va, labels.aus), dict(found.sources))
    reference.fill(known, "dataset")
    if not reference.sources:
        return None
    return reference
