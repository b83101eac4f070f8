"""Quality figures in plain numpy: agreement between raters, calibration, risk-coverage.

Agreement compares two raters of the same items (two reviewers, two runs, a run
and the human decisions). Calibration asks whether a confidence of 0.8 is right
eight times in ten. The risk-coverage curve says, for each review threshold, how
much goes to humans and how often what is auto-accepted is wrong, and picks the
threshold that meets a target error rate or a review budget.

Cohen's kappa follows ``sklearn.metrics.cohen_kappa_score`` (``tests/test_quality.py``
checks the agreement to 1e-9); the calibration bins are those of
``metrics.expected_calibration_error``. The rest are this project's definitions,
documented where they are made.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence, Sized
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from seke_app.engine import metrics

# Two valence-arousal answers agree when both coordinates are this close: a tenth
# of the [-1, 1] scale, about one AffectNet per-class standard deviation.
VA_TOLERANCE = 0.2
DEFAULT_BINS = 10


def _same_length(a: Sized, b: Sized) -> None:
    if len(a) != len(b):
        raise ValueError(f"the two raters differ in length ({len(a)} and {len(b)})")


def _floats(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains values that are not finite numbers")
    return array


def cohen_kappa(
    first: Sequence[Hashable],
    second: Sequence[Hashable],
    labels: Sequence[Hashable] | None = None,
) -> float:
    """Cohen's kappa of two raters, ``(p_o - p_e) / (1 - p_e)``.

    As ``cohen_kappa_score``: items whose label is not among ``labels`` are left
    out, and the result is NaN when chance agreement is already perfect (both
    raters always gave the same single label), where kappa is undefined.
    """
    _same_length(first, second)
    if not first:
        raise ValueError("kappa of an empty set is undefined")
    # Without explicit labels, the sorted union of the labels seen (as scikit-learn does).
    classes = (
        list(labels)
        if labels is not None
        else sorted(set(first) | set(second), key=lambda label: (str(type(label)), label))
    )
    return kappa_from_table(metrics.confusion_matrix(first, second, classes))


def kappa_from_table(table: npt.ArrayLike) -> float:
    """Cohen's kappa from a square table of counts (first rater in rows, second in columns).

    NaN for an empty table and where chance agreement is already perfect.
    """
    counts = np.asarray(table, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError("kappa needs a square table of counts")
    total = counts.sum()
    if total == 0:
        return float("nan")
    observed_disagreement = 1.0 - np.trace(counts) / total
    expected = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / total
    expected_disagreement = 1.0 - np.trace(expected) / total
    if expected_disagreement <= 0:
        return float("nan")
    return float(1.0 - observed_disagreement / expected_disagreement)


@dataclass(frozen=True)
class AUAgreement:
    """Two raters on one action unit.

    ``prevalence`` is the share of "present" among both raters' answers. It is
    shown next to kappa because kappa drops for rare AUs even when the raters
    almost always agree (the kappa paradox of Feinstein and Cicchetti, 1990).
    """

    au: int
    n: int
    prevalence: float
    observed_agreement: float
    kappa: float

    @classmethod
    def from_table(cls, au: int, table: npt.ArrayLike) -> AUAgreement:
        """From a 2x2 table of counts: index 0 absent, 1 present; first rater in rows."""
        counts = np.asarray(table, dtype=np.float64)
        if counts.shape != (2, 2):
            raise ValueError("an AU's agreement table is 2x2")
        n = counts.sum()
        if n == 0:
            raise ValueError(f"no paired answers for AU{au}")
        return cls(
            au=au,
            n=int(n),
            prevalence=float((counts[1, :].sum() + counts[:, 1].sum()) / (2 * n)),
            observed_agreement=float(np.trace(counts) / n),
            kappa=kappa_from_table(counts),
        )


def au_table(first: Sequence[bool], second: Sequence[bool]) -> npt.NDArray[np.int64]:
    """The 2x2 table of two raters' answers on one AU (0 absent, 1 present)."""
    a = np.asarray(first, dtype=bool).ravel()
    b = np.asarray(second, dtype=bool).ravel()
    _same_length(a, b)
    table = np.zeros((2, 2), dtype=np.int64)
    np.add.at(table, (a.astype(np.int64), b.astype(np.int64)), 1)
    return table


def au_agreement(
    first: Mapping[int, Sequence[bool]], second: Mapping[int, Sequence[bool]]
) -> list[AUAgreement]:
    """Per-AU agreement for every AU present in both mappings with answers, in AU order."""
    tables = {au: au_table(first[au], second[au]) for au in sorted(set(first) & set(second))}
    return [AUAgreement.from_table(au, t) for au, t in tables.items() if t.sum()]


def va_distance(first: tuple[float, float], second: tuple[float, float]) -> float:
    """Euclidean distance between two (valence, arousal) points."""
    return math.hypot(first[0] - second[0], first[1] - second[1])


def mean_va_distance(
    first: Sequence[tuple[float, float]], second: Sequence[tuple[float, float]]
) -> float:
    """Mean Euclidean distance between paired (valence, arousal) points."""
    _same_length(first, second)
    if not first:
        raise ValueError("the VA distance of an empty set is undefined")
    a = _floats(first, "first").reshape(-1, 2)
    b = _floats(second, "second").reshape(-1, 2)
    return float(np.mean(np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1])))


def va_agrees(
    first: tuple[float, float], second: tuple[float, float], tolerance: float = VA_TOLERANCE
) -> bool:
    """Whether valence and arousal each differ by at most ``tolerance``."""
    return abs(first[0] - second[0]) <= tolerance and abs(first[1] - second[1]) <= tolerance


def aus_agree(first: Mapping[int, bool], second: Mapping[int, bool]) -> bool:
    """Whether every AU is present in both or absent in both; a missing AU is absent."""
    return all(bool(first.get(au)) == bool(second.get(au)) for au in set(first) | set(second))


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: ``[lower, upper]`` and what fell into it."""

    lower: float
    upper: float
    mean_confidence: float
    accuracy: float
    count: int


@dataclass(frozen=True)
class Reliability:
    """The non-empty bins of a reliability diagram and the expected calibration error."""

    bins: list[ReliabilityBin]
    ece: float
    n: int


def reliability_diagram(
    correct: npt.ArrayLike,
    confidence: npt.ArrayLike,
    n_bins: int = DEFAULT_BINS,
    weights: npt.ArrayLike | None = None,
) -> Reliability:
    """Accuracy against mean confidence in ``n_bins`` equal-width bins of [0, 1].

    The bins are those of ``metrics.expected_calibration_error`` (a confidence on
    an inner edge falls into the lower bin), whose value is returned with them.
    With ``weights`` (inverse chances of having been drawn, see
    ``metrics.expected_calibration_error``) each bin's accuracy and mean confidence
    are weighted means; its ``count`` stays the number of items in it.
    """
    right = np.asarray(correct, dtype=np.float64).ravel()
    conf = _floats(confidence, "confidence").ravel()
    weight = metrics.item_weights(weights, conf.size)
    ece = metrics.expected_calibration_error(right, conf, n_bins, weight)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], conf)
    bins = []
    for b in np.unique(index):
        members = index == b
        if weight[members].sum() <= 0:
            continue
        bins.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                mean_confidence=float(np.average(conf[members], weights=weight[members])),
                accuracy=float(np.average(right[members], weights=weight[members])),
                count=int(members.sum()),
            )
        )
    return Reliability(bins=bins, ece=ece, n=int(conf.size))


@dataclass(frozen=True)
class RiskPoint:
    """The outcome of one review threshold.

    Items whose confidence is under ``threshold`` go to review (as SV-UAMC flags
    them); the rest are auto-accepted. ``n_review``, ``n_accepted`` and
    ``n_errors`` count items; ``review_share`` and ``error_rate`` (the share of
    wrong answers among the auto-accepted, None when nothing is accepted) are
    weighted by the items' weights when the curve was given some, so that they
    estimate the population the items were drawn from.
    """

    threshold: float
    review_share: float
    n_review: int
    n_accepted: int
    n_errors: int
    error_rate: float | None

    @property
    def coverage(self) -> float:
        return 1.0 - self.review_share


def _checked(
    correct: npt.ArrayLike, confidence: npt.ArrayLike, weights: npt.ArrayLike | None, what: str
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    right = np.asarray(correct, dtype=bool).ravel()
    conf = _floats(confidence, "confidence").ravel()
    _same_length(right, conf)
    if conf.size == 0:
        raise ValueError(f"{what} of an empty set is undefined")
    weight = metrics.item_weights(weights, conf.size)
    if weight.sum() <= 0:
        raise ValueError("the weights sum to zero")
    return right, conf, weight


def risk_coverage(
    correct: npt.ArrayLike, confidence: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> list[RiskPoint]:
    """One point per distinct split of the items, from threshold 0 (review nothing) upwards.

    The candidate thresholds are 0, every distinct confidence and 1; any other
    threshold splits the items as the next candidate above it does. Of candidates
    that split the items alike (0 and a smallest confidence above 0), the lower is kept.
    ``weights`` as in ``RiskPoint``.
    """
    right, conf, weight = _checked(correct, confidence, weights, "the risk-coverage curve")
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidences must lie in [0, 1]")
    order = np.argsort(conf, kind="stable")
    sorted_conf = conf[order]
    wrong = ~right[order]
    # Errors (and their weight) among the items from position i on: the accepted
    # ones when the first i go to review.
    errors_from = np.r_[np.cumsum(wrong[::-1])[::-1], 0]
    weight_from = np.r_[np.cumsum(weight[order][::-1])[::-1], 0.0]
    wrong_weight_from = np.r_[np.cumsum((weight[order] * wrong)[::-1])[::-1], 0.0]
    total = float(weight_from[0])
    thresholds = np.unique(np.r_[0.0, conf, 1.0])
    n = conf.size
    points: list[RiskPoint] = []
    for threshold in thresholds:
        n_review = int(np.searchsorted(sorted_conf, threshold, side="left"))
        if points and points[-1].n_review == n_review:
            continue
        accepted = float(weight_from[n_review])
        points.append(
            RiskPoint(
                threshold=float(threshold),
                review_share=(total - accepted) / total,
                n_review=n_review,
                n_accepted=n - n_review,
                n_errors=int(errors_from[n_review]),
                error_rate=float(wrong_weight_from[n_review]) / accepted if accepted > 0 else None,
            )
        )
    return points


def risk_point(
    correct: npt.ArrayLike,
    confidence: npt.ArrayLike,
    threshold: float,
    weights: npt.ArrayLike | None = None,
) -> RiskPoint:
    """The outcome of one review threshold: items under it are reviewed, the rest accepted."""
    right, conf, weight = _checked(correct, confidence, weights, "the risk")
    accepted = conf >= threshold
    n_accepted = int(accepted.sum())
    mass = float(weight[accepted].sum())
    total = float(weight.sum())
    return RiskPoint(
        threshold=float(threshold),
        review_share=(total - mass) / total,
        n_review=conf.size - n_accepted,
        n_accepted=n_accepted,
        n_errors=int((~right[accepted]).sum()),
        error_rate=float(weight[accepted][~right[accepted]].sum()) / mass if mass > 0 else None,
    )


def threshold_for_error_rate(points: Sequence[RiskPoint], target: float) -> RiskPoint | None:
    """The lowest threshold (least review) whose auto-accepted error rate is at most ``target``.

    None when no threshold that still accepts something reaches the target.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError("the target error rate is a fraction between 0 and 1")
    meeting = [p for p in points if p.error_rate is not None and p.error_rate <= target]
    return min(meeting, key=lambda p: p.threshold) if meeting else None


def threshold_for_budget(points: Sequence[RiskPoint], budget: float) -> RiskPoint | None:
    """The highest threshold (most review) that sends at most ``budget`` of the items to review.

    None only for an empty curve, since threshold 0 reviews nothing.
    """
    if not 0.0 <= budget <= 1.0:
        raise ValueError("the review budget is a fraction between 0 and 1")
    within = [p for p in points if p.review_share <= budget]
    return max(within, key=lambda p: p.threshold) if within else None


def bin_of(value: float, n_bins: int) -> int:
    """The equal-width bin of [0, 1] a value falls into, as ``histogram`` counts it."""
    return min(int(min(max(value, 0.0), 1.0) * n_bins), n_bins - 1)


def histogram(values: npt.ArrayLike, n_bins: int = 20) -> list[int]:
    """Counts in ``n_bins`` equal-width bins of [0, 1]; 1.0 falls into the last bin."""
    x = _floats(values, "values").ravel()
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError("values must lie in [0, 1]")
    index = np.minimum((x * n_bins).astype(np.int64), n_bins - 1)
    return [int(c) for c in np.bincount(index, minlength=n_bins)]
