"""The curated record: one image's labels per grain, each with where it came from.

SEKE's own definitions, used by every export format:

* A record has up to three grains: ``expression``, ``va`` (valence and arousal as
  one pair) and ``aus`` (the occurrence of every coded action unit).
* Each grain that is present carries a ``Provenance``: ``human`` (a reviewer's
  decision in SEKE: who and when), ``dataset`` (a human label imported with the
  images) or ``machine`` (an SV-UAMC annotation that its run accepted: run,
  model, prompt version, the grain's confidence and the number of samples).
* Valence and arousal are stated with ``VA_DECIMALS`` decimals everywhere (the
  structured label and the sentences), so that an answer states the label exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

GRAINS: tuple[str, ...] = ("expression", "va", "aus")
SOURCES: tuple[str, ...] = ("human", "dataset", "machine")
VA_DECIMALS = 3

GRAIN_TITLES = {"expression": "expression", "va": "valence-arousal", "aus": "action units"}

# Why a filter admits nothing of a record, in words (``LabelFilter.refusal``).
NO_LABEL = "no label SEKE stands behind yet (not annotated, or flagged and not reviewed)"
NOT_EXPORTED = "labels only of grains this export leaves out"
SOURCE_NOT_ADMITTED = "labels only from sources this export does not admit"
UNDER_MIN_CONFIDENCE = "machine labels under the minimum confidence"


def round_va(value: float) -> float:
    # Adding 0.0 turns a rounded -0.0 into 0.0, which reads better in text.
    return round(value, VA_DECIMALS) + 0.0


def au_key(au: int) -> str:
    return f"AU{au}"


@dataclass(frozen=True)
class Provenance:
    """Where one grain's label came from; only the fields of its source are set."""

    source: str
    reviewer: str | None = None
    decided_at: str | None = None
    decision: str | None = None
    dataset: str | None = None
    run: str | None = None
    model: str | None = None
    prompt_version: int | None = None
    confidence: float | None = None
    n_samples: int | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown provenance source {self.source!r}")

    def to_json(self) -> dict[str, Any]:
        return dict(self._json)

    @cached_property
    def _json(self) -> dict[str, Any]:
        # Computed once: an export asks for it once per format and for the card.
        return {
            name: getattr(self, name)
            for name in _PROVENANCE_FIELDS
            if getattr(self, name) is not None
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Provenance:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


_PROVENANCE_FIELDS = tuple(f.name for f in fields(Provenance))


@dataclass(frozen=True)
class CuratedRecord:
    """One image and the labels SEKE stands behind for it."""

    image: str
    name: str
    file: str
    image_format: str = ""
    sha256: str = ""
    subject: str = ""
    split: str = ""
    expression: str | None = None
    valence: float | None = None
    arousal: float | None = None
    aus: dict[int, bool] | None = None
    provenance: dict[str, Provenance] = field(default_factory=dict)

    def has(self, grain: str) -> bool:
        if grain == "expression":
            return self.expression is not None
        if grain == "va":
            return self.valence is not None and self.arousal is not None
        if grain == "aus":
            return self.aus is not None
        raise ValueError(f"unknown grain {grain!r}")

    def grains(self) -> tuple[str, ...]:
        return self._present

    @cached_property
    def _present(self) -> tuple[str, ...]:
        return tuple(g for g in GRAINS if self.has(g))

    def active_aus(self) -> list[int]:
        return sorted(au for au, on in (self.aus or {}).items() if on)

    def grain_label(self, grain: str) -> dict[str, Any]:
        """The structured label of one grain, as every format writes it."""
        if grain == "expression":
            return {"expression": self.expression}
        if grain == "va":
            assert self.valence is not None and self.arousal is not None
            return {"valence": round_va(self.valence), "arousal": round_va(self.arousal)}
        return {"aus": {au_key(au): on for au, on in sorted((self.aus or {}).items())}}

    def labels_json(self) -> dict[str, Any]:
        labels: dict[str, Any] = {}
        for grain in self.grains():
            labels.update(self.grain_label(grain))
        return labels

    def provenance_json(self) -> dict[str, Any]:
        return {g: self.provenance[g].to_json() for g in self.grains() if g in self.provenance}

    def without(self, grains: Iterable[str]) -> CuratedRecord:
        """The same record with the given grains (and their provenance) removed."""
        dropped = set(grains)
        changes: dict[str, Any] = {
            "provenance": {g: p for g, p in self.provenance.items() if g not in dropped}
        }
        if "expression" in dropped:
            changes["expression"] = None
        if "va" in dropped:
            changes["valence"] = changes["arousal"] = None
        if "aus" in dropped:
            changes["aus"] = None
        return replace(self, **changes)


@dataclass(frozen=True)
class LabelFilter:
    """Which grains an export carries, from which sources, at which machine confidence.

    A grain whose curated label comes from a source not admitted is dropped; it
    does not fall back to a lower-ranked source, since SEKE does not stand behind
    a label that a higher-ranked one overrode. ``min_confidence`` applies to
    machine labels only (human and imported labels have no confidence).
    """

    grains: tuple[str, ...] = GRAINS
    sources: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: {g: frozenset(SOURCES) for g in GRAINS}
    )
    min_confidence: float = 0.0

    def admits(self, record: CuratedRecord, grain: str) -> bool:
        if grain not in self.grains or not record.has(grain):
            return False
        provenance = record.provenance.get(grain)
        if provenance is None or provenance.source not in self.sources.get(grain, frozenset()):
            return False
        if provenance.source == "machine":
            return (provenance.confidence or 0.0) >= self.min_confidence
        return True

    def apply(self, record: CuratedRecord) -> CuratedRecord | None:
        """The record reduced to its admitted grains, or None when none is left."""
        dropped = [g for g in GRAINS if not self.admits(record, g)]
        if len(dropped) == len(GRAINS):
            return None
        return record.without(dropped) if dropped else record

    def refusal(self, record: CuratedRecord) -> str:
        """Why ``apply`` leaves nothing of the record, in words.

        The first that holds of: no label at all; labels only of grains not
        exported; a machine label of an exported grain from an admitted source but
        under the minimum confidence; labels only from sources not admitted.
        """
        present = record.grains()
        if not present:
            return NO_LABEL
        wanted = [g for g in present if g in self.grains]
        if not wanted:
            return NOT_EXPORTED
        for grain in wanted:
            provenance = record.provenance.get(grain)
            if (
                provenance is not None
                and provenance.source == "machine"
                and "machine" in self.sources.get(grain, frozenset())
            ):
                return UNDER_MIN_CONFIDENCE
        return SOURCE_NOT_ADMITTED
