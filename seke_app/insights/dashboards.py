"""A run's dashboard: what the machine said, how sure it was, and whether humans agree.

Every figure comes from a fixed number of queries, whatever the size of the run:
the human references (two queries, ``references.human_references``), one streamed
pass over the run's annotations (a server-side cursor on PostgreSQL), one
aggregate for throughput and cost over time, one for review progress, and one
for the agreement between independent reviewers (``agreement``).

Calibration compares each grain's confidence with whether the machine label
agrees with the human reference (``references``); the reliability diagram, the
expected calibration error and the risk-coverage curve come from
``engine.quality``. Reviews exist mostly for flagged annotations, so without gold
questions or dataset labels the confident end of the curve is thinly covered;
the page says how many labels each figure rests on.

Two kinds of reference would flatter the run, and are handled here. A grain the
model was given as a known label is never scored against the dataset's label
(``references.reference_for``). An image the run's prompt version, or one of its
ancestors, learned from (``PromptVersion.learned_from_images``) is scored, but
counted as *in-sample*: the version's notes, exemplars and recalibration were
fitted on the very reviews it is scored against, and the page says how many
such images each figure includes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import models
from django.db.models import BooleanField, Count, Exists, Max, Min, OuterRef, Q, Sum, Value

from seke_app.engine import quality
from seke_app.engine.knowledge import AU_RATES
from seke_app.engine.vocab import AU_NAMES
from seke_app.insights.agreement import ReviewerAgreement, reviewer_agreement
from seke_app.insights.references import (
    GRAINS,
    Labels,
    Reference,
    decided_annotations,
    grain_agrees,
    human_references,
    reference_for,
)
from seke_app.insights.timeline import bucket_for, database_unit, merge
from seke_app.models import Annotation, GenerationRun, PromptVersion
from seke_app.models.runs import ThresholdChange, confident
from seke_app.runs.threshold import ThresholdRefused, run_threshold_set

HISTOGRAM_BINS = 20
CALIBRATION_BINS = 10
# The scatter shows at most this many points, sampled evenly (a browser draws
# 5,000 SVG markers without trouble; the distribution is already clear).
VA_SAMPLE_CAP = 5000

CONFIDENCE_GRAINS = ("expression", "va", "aus", "overall")
# "au_each" scores every AU on its own, at the share of samples that agreed on it.
CALIBRATED_GRAINS = ("expression", "va", "aus", "au_each", "overall")
GRAIN_LABELS = {
    "expression": "Expression",
    "va": "Valence-arousal",
    "aus": "Action units (all equal)",
    "au_each": "Each action unit",
    "overall": "Overall",
}

_STREAM_FIELDS = (
    "image_id",
    "expression_confidence",
    "va_confidence",
    "au_confidence",
    "confidence",
    "expression",
    "valence",
    "arousal",
    "aus",
    "au_rates",
    "image__known_expression",
    "image__known_valence",
    "image__known_arousal",
    "image__known_aus",
    "known_grains",
    "in_sample",
    "held",
)


@dataclass(frozen=True)
class AnnotationRow:
    """One streamed annotation: its labels, confidences and the image's dataset labels.

    ``given`` names the grains the model was given as known labels; ``in_sample``
    says whether the prompt version learned from the image.
    """

    image_id: int
    confidences: dict[str, float]
    labels: Labels
    au_rates: dict[str, float]
    known: Labels
    given: frozenset[str] = frozenset()
    in_sample: bool = False
    held: bool = False

    def confident(self, threshold: float) -> bool:
        """Auto-accepted under ``threshold`` (the rule of ``models.runs.confident``)."""
        return not self.held and self.confidences["overall"] >= threshold

    @classmethod
    def from_values(cls, values: tuple[Any, ...]) -> AnnotationRow:
        (image_id, c_expr, c_va, c_aus, c_all, expression, valence, arousal, aus, rates) = values[
            :10
        ]
        return cls(
            image_id=image_id,
            confidences={"expression": c_expr, "va": c_va, "aus": c_aus, "overall": c_all},
            labels=Labels.of(expression, valence, arousal, aus),
            au_rates=rates or {},
            known=Labels.of(*values[10:14]),
            given=frozenset(values[14] or ()),
            in_sample=bool(values[15]),
            held=bool(values[16]),
        )

    def reference(self, references: Mapping[int, Reference]) -> Reference | None:
        """The row's reference: never the dataset's label on a grain the model was given."""
        return reference_for(references, self.image_id, self.known, given=self.given)


def stream_rows(
    annotations: models.QuerySet[Annotation], *, version: PromptVersion | None = None
) -> Iterator[AnnotationRow]:
    """One pass over the annotations, as plain values (a server-side cursor on PostgreSQL).

    With ``version``, an image it or an ancestor learned from is marked in-sample.
    """
    if version is None:
        in_sample: Any = Value(False, output_field=BooleanField())
    else:
        in_sample = Exists(version.learned_images().filter(pk=OuterRef("image_id")))
    rows = (
        annotations.order_by()
        .annotate(in_sample=in_sample)
        .values_list(*_STREAM_FIELDS)
        .iterator(chunk_size=2000)
    )
    return (AnnotationRow.from_values(values) for values in rows)


CONFIDENT, FLAGGED = "confident", "flagged"


@dataclass(frozen=True)
class Stratum:
    """One side of the review threshold: its annotations, and how many have a reference.

    ``n_referenced`` counts the annotations scored on the grain plus those whose
    image a review rejected (see ``Scorer._strata``).
    """

    name: str
    n_annotations: int
    n_referenced: int

    @property
    def weight(self) -> float:
        """What one scored annotation stands for: the side's annotations per referenced one."""
        return self.n_annotations / self.n_referenced if self.n_referenced else 0.0


@dataclass
class GrainCalibration:
    grain: str
    label: str
    reliability: quality.Reliability
    sources: dict[str, int]
    # How many of the scored labels are on images the prompt version learned from.
    in_sample: int = 0
    # The two sides of the threshold, for the weights (see ``Scorer``).
    strata: list[Stratum] = field(default_factory=list)

    @property
    def weighted(self) -> bool:
        """Whether the two sides are scored at different rates, so weights matter."""
        rates = {s.n_referenced / s.n_annotations for s in self.strata if s.n_annotations}
        return len(rates) > 1

    @property
    def uncovered(self) -> list[str]:
        """The sides with annotations but no scored one: the figure says nothing of them."""
        return [s.name for s in self.strata if s.n_annotations and not s.n_referenced]


@dataclass
class Calibration:
    """Calibration figures; ``grains`` lists only the grains that have a reference."""

    grains: list[GrainCalibration]
    risk: list[quality.RiskPoint]
    current: quality.RiskPoint | None
    threshold: float
    # How many of the annotations on the risk-coverage curve are in-sample.
    n_in_sample: int = 0
    # Per grain, how many annotations were given it as a known label (never scored
    # against the dataset's label).
    given: dict[str, int] = field(default_factory=dict)

    @property
    def n_scored(self) -> int:
        return self.risk[0].n_accepted if self.risk else 0

    @property
    def overall(self) -> GrainCalibration | None:
        """The overall grain's figures: the risk-coverage curve rests on its references."""
        return self.grain("overall")

    @property
    def sources(self) -> dict[str, int]:
        return self.overall.sources if self.overall else {}

    @property
    def strata(self) -> list[Stratum]:
        return self.overall.strata if self.overall else []

    @property
    def weighted(self) -> bool:
        return self.overall is not None and self.overall.weighted

    @property
    def uncovered(self) -> list[str]:
        return self.overall.uncovered if self.overall else []

    def grain(self, name: str) -> GrainCalibration | None:
        return next((g for g in self.grains if g.grain == name), None)


class Scorer:
    """Collects, per grain, whether each machine label agrees with its reference.

    The references are not a uniform sample of the annotations: every flagged
    annotation is sent to review, while among the confident ones only blind
    audits (a uniform random share of all annotations), gold questions and
    dataset labels give a reference. Scoring them all alike would let the flagged
    side, chosen by the very confidence being judged, dominate the figures.
    ``calibration`` therefore post-stratifies by the two sides of the review
    threshold: each scored annotation is weighted by its side's number of
    annotations over its number of scored ones, the inverse of its chance of
    having a reference if references fall at random within a side. Within the
    confident side that holds for audits and for dataset labels; within the
    flagged side it holds when reviewers work through the flagged annotations in
    an order unrelated to their correctness. Where both sides are scored at the
    same rate (a dataset labelled throughout), every weight is 1.
    """

    def __init__(self) -> None:
        self.correct: dict[str, list[bool]] = {g: [] for g in CALIBRATED_GRAINS}
        self.confidence: dict[str, list[float]] = {g: [] for g in CALIBRATED_GRAINS}
        # Per scored label: the annotation's overall confidence (None when held),
        # which places it on one side of a threshold.
        self.side: dict[str, list[float | None]] = {g: [] for g in CALIBRATED_GRAINS}
        self.sources: dict[str, Counter[str]] = {g: Counter() for g in CALIBRATED_GRAINS}
        # Right answers per grain and reference source, for accuracy on gold questions alone.
        self.right_by_source: dict[str, Counter[str]] = {g: Counter() for g in CALIBRATED_GRAINS}
        # Scored labels on images the prompt version learned from, per grain.
        self.in_sample: Counter[str] = Counter()
        # Annotations given each grain as a known label.
        self.given: Counter[str] = Counter()
        # Every annotation's side key, scored or not (the strata's sizes), and those
        # of annotations whose image a review rejected: reviewed, yet never scored.
        self.population: list[float | None] = []
        self.rejected: list[float | None] = []

    def _record(
        self, grain: str, right: bool, confidence: float, source: str, row: AnnotationRow
    ) -> None:
        self.correct[grain].append(right)
        self.confidence[grain].append(min(max(confidence, 0.0), 1.0))
        self.side[grain].append(_side_key(row))
        self.sources[grain][source] += 1
        self.right_by_source[grain][source] += right
        self.in_sample[grain] += row.in_sample

    def add(self, row: AnnotationRow, reference: Reference) -> None:
        all_right = True
        for grain in GRAINS:
            wanted = reference.labels.grain(grain)
            if wanted is None:
                continue
            source = reference.sources[grain]
            right = grain_agrees(grain, row.labels.grain(grain), wanted)
            all_right = all_right and right
            self._record(grain, right, row.confidences[grain], source, row)
            if grain == "aus":
                self._add_each_au(row, wanted, source)
        overall_source = "+".join(sorted(set(reference.sources.values())))
        self._record("overall", all_right, row.confidences["overall"], overall_source, row)

    def _add_each_au(self, row: AnnotationRow, wanted: Mapping[int, bool], source: str) -> None:
        machine = row.labels.aus or {}
        for au, on in wanted.items():
            rate = row.au_rates.get(str(au))
            # The share of samples that agreed on the AU, whichever way they agreed.
            confidence = max(rate, 1.0 - rate) if rate is not None else row.confidences["aus"]
            self._record("au_each", bool(machine.get(au)) == on, confidence, source, row)

    def score(self, row: AnnotationRow, references: Mapping[int, Reference]) -> None:
        """Score the row against its reference, if it has one."""
        self.given.update(row.given)
        self.population.append(_side_key(row))
        found = references.get(row.image_id)
        if found is not None and found.rejected:
            self.rejected.append(_side_key(row))
        reference = row.reference(references)
        if reference is not None:
            self.add(row, reference)

    def accuracy(self, grain: str, source: str | None = None) -> tuple[int, float | None]:
        """How many labels were scored, and the share that agreed (of one source if given).

        Unweighted: the share among the scored labels themselves.
        """
        if source is None:
            n, right = len(self.correct[grain]), sum(self.correct[grain])
        else:
            n, right = self.sources[grain][source], self.right_by_source[grain][source]
        return n, (right / n if n else None)

    def _strata(self, grain: str, threshold: float) -> tuple[list[Stratum], list[float]]:
        """The two sides for one grain, and each scored label's weight.

        An annotation whose image a review rejected was drawn for review like the
        others but has nothing to score; it counts among the side's reviewed ones,
        so that the weights estimate the side's images that are not rejected.
        "Each action unit" scores several labels per annotation; its sides count
        annotations, as the action units' do.
        """
        keyed = "aus" if grain == "au_each" else grain
        population = [_is_confident(k, threshold) for k in self.population]
        scored = [_is_confident(k, threshold) for k in (*self.side[keyed], *self.rejected)]
        strata = [
            Stratum(name, sum(p == side for p in population), sum(s == side for s in scored))
            for name, side in ((CONFIDENT, True), (FLAGGED, False))
        ]
        weight = {True: strata[0].weight, False: strata[1].weight}
        return strata, [weight[_is_confident(k, threshold)] for k in self.side[grain]]

    def calibration(self, threshold: float) -> Calibration:
        grains = []
        weights: dict[str, list[float]] = {}
        for g in CALIBRATED_GRAINS:
            if not self.correct[g]:
                continue
            strata, weights[g] = self._strata(g, threshold)
            grains.append(
                GrainCalibration(
                    grain=g,
                    label=GRAIN_LABELS[g],
                    reliability=quality.reliability_diagram(
                        self.correct[g], self.confidence[g], CALIBRATION_BINS, weights[g]
                    ),
                    sources=dict(self.sources[g]),
                    in_sample=self.in_sample[g],
                    strata=strata,
                )
            )
        right, confidence = self.correct["overall"], self.confidence["overall"]
        given = {g: self.given[g] for g in GRAINS if self.given[g]}
        if not right:
            return Calibration(grains, [], None, threshold, given=given)
        return Calibration(
            grains=grains,
            risk=quality.risk_coverage(right, confidence, weights["overall"]),
            current=quality.risk_point(right, confidence, threshold, weights["overall"]),
            threshold=threshold,
            n_in_sample=self.in_sample["overall"],
            given=given,
        )


def _side_key(row: AnnotationRow) -> float | None:
    return None if row.held else row.confidences["overall"]


def _is_confident(key: float | None, threshold: float) -> bool:
    return key is not None and key >= threshold


@dataclass
class AUFrequency:
    au: int
    name: str
    count: int
    observed: float
    prior: float


@dataclass
class TimePoint:
    at: datetime
    annotations: int
    per_minute: float
    cost_usd: float
    cumulative_annotations: int
    cumulative_cost_usd: float


@dataclass
class ReviewProgress:
    total: int
    auto_accepted: int
    flagged: int
    reviewed: int

    @property
    def remaining(self) -> int:
        return self.flagged - self.reviewed


@dataclass
class _Tally:
    """What the streamed pass counts, besides the scores."""

    n: int = 0
    histograms: dict[str, list[int]] = field(
        default_factory=lambda: {g: [0] * HISTOGRAM_BINS for g in CONFIDENCE_GRAINS}
    )
    expressions: Counter[str] = field(default_factory=Counter)
    au_counts: Counter[int] = field(default_factory=Counter)
    n_with_aus: int = 0
    n_va: int = 0
    va_sample: list[tuple[float, float, str]] = field(default_factory=list)

    def add(self, row: AnnotationRow, rng: random.Random) -> None:
        self.n += 1
        for grain in CONFIDENCE_GRAINS:
            self.histograms[grain][quality.bin_of(row.confidences[grain], HISTOGRAM_BINS)] += 1
        self.expressions[row.labels.expression or ""] += 1
        if row.labels.aus:
            self.n_with_aus += 1
            self.au_counts.update(au for au, on in row.labels.aus.items() if on)
        if row.labels.va is not None:
            self._sample_va((*row.labels.va, row.labels.expression or ""), rng)

    def _sample_va(self, point: tuple[float, float, str], rng: random.Random) -> None:
        # Reservoir sampling (Vitter's algorithm R): every point is kept with equal chance.
        self.n_va += 1
        if len(self.va_sample) < VA_SAMPLE_CAP:
            self.va_sample.append(point)
        else:
            slot = rng.randrange(self.n_va)
            if slot < VA_SAMPLE_CAP:
                self.va_sample[slot] = point


@dataclass
class RunDashboard:
    run: GenerationRun
    n_annotations: int
    histograms: dict[str, list[int]]
    expressions: list[tuple[str, int]]
    va_points: list[tuple[float, float, str]]
    n_va: int
    aus: list[AUFrequency]
    timeline: list[TimePoint]
    bucket: str
    progress: ReviewProgress
    calibration: Calibration
    agreement: ReviewerAgreement
    # Numbers of the versions in the prompt's lineage that learned from reviews
    # without a record of which: their in-sample images are unknown.
    unrecorded: list[int] = field(default_factory=list)

    @property
    def cost_per_annotation(self) -> float | None:
        """None when nothing was annotated or the run's cost is unknown."""
        if not self.n_annotations or not self.run.priced:
            return None
        return float(self.run.cost_usd) / self.n_annotations

    def chart_data(self) -> dict[str, Any]:
        """Everything the page's charts draw, as JSON-ready values."""
        return {
            "threshold": self.run.review_threshold,
            "bins": HISTOGRAM_BINS,
            "bucket": self.bucket,
            "histograms": self.histograms,
            "expressions": self.expressions,
            "va": self.va_points,
            "aus": [
                {"au": r.au, "name": r.name, "observed": r.observed, "prior": r.prior}
                for r in self.aus
            ],
            "timeline": [
                {
                    "at": p.at.isoformat(),
                    "per_minute": p.per_minute,
                    "cumulative": p.cumulative_annotations,
                    "cost": p.cumulative_cost_usd,
                }
                for p in self.timeline
            ],
            "progress": {
                "auto_accepted": self.progress.auto_accepted,
                "reviewed": self.progress.reviewed,
                "remaining": self.progress.remaining,
            },
            "calibration": calibration_data(self.calibration),
        }


def calibration_data(calibration: Calibration) -> dict[str, Any]:
    return {
        "threshold": calibration.threshold,
        "grains": [
            {
                "grain": g.grain,
                "label": g.label,
                "ece": g.reliability.ece,
                "bins": [
                    {
                        "confidence": b.mean_confidence,
                        "accuracy": b.accuracy,
                        "count": b.count,
                        "lower": b.lower,
                        "upper": b.upper,
                    }
                    for b in g.reliability.bins
                ],
            }
            for g in calibration.grains
        ],
        "risk": [
            {
                "threshold": p.threshold,
                "review_share": p.review_share,
                "error_rate": p.error_rate,
                "n_accepted": p.n_accepted,
            }
            for p in calibration.risk
        ],
        "current": (
            {
                "threshold": calibration.current.threshold,
                "review_share": calibration.current.review_share,
                "error_rate": calibration.current.error_rate,
            }
            if calibration.current
            else None
        ),
    }


def _au_frequencies(run: GenerationRun, tally: _Tally) -> list[AUFrequency]:
    """Observed AU shares against the knowledge prior for the run's expression mix.

    The prior of an AU is ``sum_e P(e) * AU_RATES[e][au]``, where ``P(e)`` is the
    share of the run's annotations (with an expression) labelled ``e``.
    """
    labelled = {e: n for e, n in tally.expressions.items() if e}
    total = sum(labelled.values())
    rows = []
    for au in run.dataset.vocabulary().aus:
        prior = (
            sum(n * AU_RATES.get(e, {}).get(au, 0.0) for e, n in labelled.items()) / total
            if total
            else 0.0
        )
        count = tally.au_counts.get(au, 0)
        observed = count / tally.n_with_aus if tally.n_with_aus else 0.0
        rows.append(AUFrequency(au, AU_NAMES[au], count, observed, prior))
    return rows


def _timeline(run: GenerationRun) -> tuple[list[TimePoint], str]:
    """Annotations and cost per bucket of time, and the bucket's name (``timeline``)."""
    annotations = Annotation.objects.filter(run=run)
    bounds = annotations.aggregate(first=Min("created_at"), last=Max("created_at"))
    if bounds["first"] is None:
        return [], bucket_for(timedelta(0)).name
    span = bounds["last"] - bounds["first"]
    bucket = bucket_for(span)
    rows = (
        annotations.annotate(at=database_unit(span)("created_at"))
        .values("at")
        .annotate(n=Count("id"), cost=Sum("cost_usd"))
        .order_by("at")
    )
    points: list[TimePoint] = []
    done, spent = 0, 0.0
    for start, n, cost in merge(rows, bucket):
        done += n
        spent += cost
        points.append(TimePoint(start, n, n * 60 / bucket.seconds, cost, done, spent))
    return points, bucket.name


def _progress(run: GenerationRun) -> ReviewProgress:
    counts = (
        Annotation.objects.filter(run=run)
        .alias(decided=decided_annotations())
        .aggregate(
            n_total=Count("id"),
            # Flagged under the run's current threshold (``confident()``).
            n_flagged=Count("id", filter=~confident()),
            n_reviewed=Count("id", filter=~confident() & Q(decided=True)),
        )
    )
    return ReviewProgress(
        total=counts["n_total"],
        auto_accepted=counts["n_total"] - counts["n_flagged"],
        flagged=counts["n_flagged"],
        reviewed=counts["n_reviewed"],
    )


def run_dashboard(*, run: GenerationRun) -> RunDashboard:
    """Every figure of the run's dashboard, from a fixed number of queries."""
    annotations = Annotation.objects.filter(run=run)
    references = human_references(annotations.values("image_id"))
    tally, scorer = _Tally(), Scorer()
    # Seeded by the run, so that the sampled scatter is the same on every visit.
    rng = random.Random(run.pk)
    for row in stream_rows(annotations, version=run.prompt_version):
        tally.add(row, rng)
        scorer.score(row, references)
    timeline, bucket = _timeline(run)
    expressions = [(e or "no valid answer", n) for e, n in tally.expressions.most_common()]
    return RunDashboard(
        run=run,
        n_annotations=tally.n,
        histograms=tally.histograms,
        expressions=expressions,
        va_points=tally.va_sample,
        n_va=tally.n_va,
        aus=_au_frequencies(run, tally),
        timeline=timeline,
        bucket=bucket,
        progress=_progress(run),
        calibration=scorer.calibration(run.review_threshold),
        agreement=reviewer_agreement(annotations=annotations),
        unrecorded=[v.number for v in run.prompt_version.unrecorded_lineage()],
    )


def run_calibration(*, run: GenerationRun) -> Calibration:
    """The run's calibration alone (three queries)."""
    annotations = Annotation.objects.filter(run=run)
    references = human_references(annotations.values("image_id"))
    scorer = Scorer()
    for row in stream_rows(annotations, version=run.prompt_version):
        scorer.score(row, references)
    return scorer.calibration(run.review_threshold)


def run_set_threshold(
    *, run: GenerationRun, threshold: float, user: AbstractBaseUser | None = None
) -> ThresholdChange:
    """Set a new review threshold by hand (``seke_app.runs.threshold``)."""
    return run_threshold_set(run=run, threshold=threshold, user=user)


def run_set_threshold_from_curve(
    *,
    run: GenerationRun,
    target_error: float | None = None,
    review_budget: float | None = None,
    user: AbstractBaseUser | None = None,
) -> quality.RiskPoint:
    """Set the threshold that meets a target error rate or a review budget (fractions).

    The target picks the lowest threshold whose auto-accepted error rate is at most
    the target; the budget picks the highest threshold that sends at most that
    share to review (``engine.quality``). Exactly one of them is given.
    """
    if (target_error is None) == (review_budget is None):
        raise ThresholdRefused("Give either a target error rate or a review budget.")
    curve = run_calibration(run=run).risk
    if not curve:
        raise ThresholdRefused(
            "No annotation of this run has a human reference yet: review some first."
        )
    if target_error is not None:
        point = quality.threshold_for_error_rate(curve, target_error)
        if point is None:
            raise ThresholdRefused(
                f"No threshold brings the error rate of auto-accepted labels to "
                f"{target_error:.1%} or less on the {curve[0].n_accepted} scored annotations."
            )
    else:
        assert review_budget is not None
        point = quality.threshold_for_budget(curve, review_budget)
        assert point is not None
    run_threshold_set(
        run=run, threshold=point.threshold, source=ThresholdChange.Source.CURVE, user=user
    )
    return point
