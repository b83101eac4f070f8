"""Two runs, or two prompt versions, side by side.

A side is a set of annotations: a run's, or every annotation made with a prompt
version (the latest per image where several runs of the version annotated it).
For each side: accuracy and calibration against the human reference
(``references``: gold questions, reviews, dataset labels), and cost per
annotation. Between the sides: agreement on the images both annotated.

Reviews were made on one side's annotations, and ``accept`` stands behind that
side's values, so the reviewed side has an edge on reviewed images; gold
questions and dataset labels do not favour either side. The page says so. A
grain a side's model was given as a known label is never scored against the
dataset's label, and images a side's prompt version learned from are counted as
in-sample for that side (``dashboards``).

Queries: per side, two for the references, one streamed pass and one aggregate;
and one streamed pass over the shared images, the other side's values fetched
by a correlated subquery per row (on the ``(image, -created_at)`` index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models import Count, JSONField, OuterRef, Subquery, Sum

from seke_app.insights.agreement import AgreementTally, GrainAgreement
from seke_app.insights.cascade import CascadeFigures, cascade_figures
from seke_app.insights.dashboards import (
    CALIBRATED_GRAINS,
    GRAIN_LABELS,
    Calibration,
    Scorer,
    calibration_data,
    stream_rows,
)
from seke_app.insights.references import GRAINS, Labels, human_references
from seke_app.models import Annotation, GenerationRun, PromptVersion


@dataclass
class Side:
    """One side of a comparison: a name, its annotations and where to link."""

    label: str
    annotations: models.QuerySet[Annotation]
    # The review threshold the risk-coverage point is shown at.
    threshold: float
    run: GenerationRun | None = None
    version: PromptVersion | None = None

    @property
    def prompt_version(self) -> PromptVersion | None:
        """The prompt version behind the side's annotations."""
        return self.version or (self.run.prompt_version if self.run else None)

    @classmethod
    def of_run(cls, run: GenerationRun) -> Side:
        strategy = run.params.get("strategy", "")
        models = run.model_name + (f" → {run.strong_model}" if run.strong_model else "")
        label = f"{run.label} · {models} · {strategy} · v{run.prompt_version.number}"
        return cls(label, Annotation.objects.filter(run=run), run.review_threshold, run=run)

    @classmethod
    def of_version(cls, version: PromptVersion) -> Side:
        mine = Annotation.objects.filter(prompt_version=version)
        newest = mine.filter(image_id=OuterRef("image_id")).order_by("-created_at", "-id")
        latest = mine.filter(id=Subquery(newest.values("id")[:1]))
        threshold = (
            GenerationRun.objects.filter(prompt_version=version)
            .values_list("review_threshold", flat=True)
            .first()
        )
        label = f"prompt v{version.number} {version.name}"
        return cls(label, latest, threshold if threshold is not None else 0.7, version=version)


@dataclass
class SideSummary:
    side: Side
    n_annotations: int
    cost_usd: float
    accuracy: dict[str, tuple[int, float | None]]
    # The same, on gold questions alone: the one reference that favours neither side.
    gold_accuracy: dict[str, tuple[int, float | None]]
    calibration: Calibration
    # Per grain, how many scored labels are on images the side's prompt version learned from.
    in_sample: dict[str, int]
    # False when some of the side's annotations come from a run whose model has no
    # known price: their recorded cost of 0 means "unknown", so the total is unknown.
    cost_known: bool = True
    # A cascade run's figures per stage (``cascade``); None for any other side.
    cascade: CascadeFigures | None = None

    @property
    def cost_per_annotation(self) -> float | None:
        if not self.n_annotations or not self.cost_known:
            return None
        return self.cost_usd / self.n_annotations


@dataclass
class Agreement(GrainAgreement):
    """The two sides' agreement on the images both annotated."""

    n_shared: int = 0


@dataclass
class Comparison:
    a: SideSummary
    b: SideSummary
    agreement: Agreement

    @property
    def sides(self) -> tuple[SideSummary, SideSummary]:
        return (self.a, self.b)

    def ece_rows(self) -> list[dict[str, Any]]:
        """Each calibrated grain's expected calibration error on both sides (None: no data)."""
        rows = []
        for grain in CALIBRATED_GRAINS:
            a, b = self.a.calibration.grain(grain), self.b.calibration.grain(grain)
            if a is None and b is None:
                continue
            rows.append(
                {
                    "grain": grain,
                    "label": GRAIN_LABELS[grain],
                    "a": a.reliability.ece if a else None,
                    "b": b.reliability.ece if b else None,
                }
            )
        return rows

    def chart_data(self) -> dict[str, Any]:
        """The two sides' calibration, grain by grain, for the page's charts."""
        sides = [calibration_data(self.a.calibration), calibration_data(self.b.calibration)]
        grains = []
        for row in self.ece_rows():
            per_side = [
                next((g for g in side["grains"] if g["grain"] == row["grain"]), None)
                for side in sides
            ]
            grains.append({"grain": row["grain"], "label": row["label"], "sides": per_side})
        return {
            "names": ["A", "B"],
            "grains": grains,
            "risk": [side["risk"] for side in sides],
            "current": [side["current"] for side in sides],
        }


def _summary(side: Side) -> SideSummary:
    references = human_references(side.annotations.values("image_id"))
    scorer = Scorer()
    for row in stream_rows(side.annotations, version=side.prompt_version):
        scorer.score(row, references)
    totals = side.annotations.aggregate(n=Count("id"), cost=Sum("cost_usd"))
    return SideSummary(
        side=side,
        n_annotations=totals["n"],
        cost_usd=float(totals["cost"] or 0),
        accuracy={g: scorer.accuracy(g) for g in (*GRAINS, "overall")},
        gold_accuracy={g: scorer.accuracy(g, "gold") for g in GRAINS},
        calibration=scorer.calibration(side.threshold),
        in_sample={g: scorer.in_sample[g] for g in (*GRAINS, "overall")},
        cost_known=not side.annotations.filter(run__priced=False).exists(),
        cascade=cascade_figures(run=side.run) if side.run is not None else None,
    )


def _agreement(a: Side, b: Side) -> Agreement:
    """Agreement on the images both sides annotated, A in the tables' rows."""
    other = a.annotations.filter(image_id=OuterRef("image_id")).order_by("-created_at", "-id")

    def of_a(name: str, output: models.Field[Any, Any] | None = None) -> Subquery:
        return Subquery(other.values(name)[:1], output_field=output)

    pairs = (
        b.annotations.order_by()
        .annotate(
            a_id=of_a("id"),
            a_expression=of_a("expression"),
            a_valence=of_a("valence"),
            a_arousal=of_a("arousal"),
            a_aus=of_a("aus", JSONField()),
        )
        .filter(a_id__isnull=False)
        .values_list(
            "expression",
            "valence",
            "arousal",
            "aus",
            "a_expression",
            "a_valence",
            "a_arousal",
            "a_aus",
        )
    )
    tally, result = AgreementTally(), Agreement()
    for b_expr, b_val, b_aro, b_aus, a_expr, a_val, a_aro, a_aus in pairs.iterator(chunk_size=2000):
        result.n_shared += 1
        tally.add(Labels.of(a_expr, a_val, a_aro, a_aus), Labels.of(b_expr, b_val, b_aro, b_aus))
    tally.fill(result)
    return result


def compare(*, a: Side, b: Side) -> Comparison:
    """Both sides' accuracy, calibration and cost, and their agreement."""
    return Comparison(a=_summary(a), b=_summary(b), agreement=_agreement(a, b))
