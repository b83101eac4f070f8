"""Evaluation metrics in plain numpy.

Each metric follows the definition of the reference implementation named in its
docstring (scikit-learn or scipy), so that SEKE's figures can be compared with
published ones; ``tests/test_metrics.py`` checks the agreement to 1e-9. The
engine must not depend on scikit-learn at run time, hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence, Sized
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def _floats(values: npt.ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains values that are not finite numbers")
    return array


def _same_length(a: Sized, b: Sized) -> None:
    if len(a) != len(b):
        raise ValueError(f"truth and prediction differ in length ({len(a)} and {len(b)})")


def accuracy(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Share of items whose prediction equals the truth (``sklearn.metrics.accuracy_score``)."""
    _same_length(truth, predicted)
    if not truth:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall, F1 and support of one class."""

    label: Hashable
    precision: float
    recall: float
    f1: float
    support: int


def _labels_or_present(
    truth: Sequence[Hashable], predicted: Sequence[Hashable], labels: Sequence[Hashable] | None
) -> list[Hashable]:
    if labels is not None:
        return list(labels)
    # Without explicit labels scikit-learn scores the sorted union of the classes seen.
    return sorted(set(truth) | set(predicted), key=lambda label: (str(type(label)), label))


def per_class_scores(
    truth: Sequence[Hashable],
    predicted: Sequence[Hashable],
    labels: Sequence[Hashable] | None = None,
) -> list[ClassScores]:
    """Per-class scores as ``precision_recall_fscore_support(..., zero_division=0)`` gives them.

    A ratio whose denominator is zero counts as 0, and F1 is ``2tp / (2tp + fp + fn)``.
    """
    _same_length(truth, predicted)
    scores = []
    for label in _labels_or_present(truth, predicted, labels):
        tp = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted, strict=True))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted, strict=True))
        scores.append(
            ClassScores(
                label=label,
                precision=tp / (tp + fp) if tp + fp else 0.0,
                recall=tp / (tp + fn) if tp + fn else 0.0,
                f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                support=tp + fn,
            )
        )
    return scores


def macro_f1(
    truth: Sequence[Hashable],
    predicted: Sequence[Hashable],
    labels: Sequence[Hashable] | None = None,
) -> float:
    """Unweighted mean F1 (``f1_score(average="macro", labels=labels, zero_division=0)``).

    With ``labels`` given every listed class counts, a class absent from both truth
    and prediction contributing 0; without it only the classes that occur count.
    """
    scores = per_class_scores(truth, predicted, labels)
    if not scores:
        raise ValueError("macro F1 needs at least one class")
    return float(np.mean([s.f1 for s in scores]))


def confusion_matrix(
    truth: Sequence[Hashable], predicted: Sequence[Hashable], labels: Sequence[Hashable]
) -> npt.NDArray[np.int64]:
    """Counts with truth in rows and prediction in columns, in ``labels`` order.

    Items whose truth or prediction is not among ``labels`` are left out, as in
    ``sklearn.metrics.confusion_matrix``.
    """
    _same_length(truth, predicted)
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    return matrix


def binary_f1(truth: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """F1 of the positive class (``f1_score(truth, predicted, zero_division=0)``)."""
    t = np.asarray(truth, dtype=bool).ravel()
    p = np.asarray(predicted, dtype=bool).ravel()
    _same_length(t, p)
    tp = int(np.sum(t & p))
    wrong = int(np.sum(t ^ p))
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def au_f1(
    truth: Mapping[int, Sequence[bool]], predicted: Mapping[int, Sequence[bool]]
) -> dict[int, float]:
    """Binary F1 for every AU present in both mappings."""
    return {au: binary_f1(truth[au], predicted[au]) for au in sorted(truth) if au in predicted}


def ccc(truth: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Lin's concordance correlation coefficient with population (ddof=0) moments.

    ``2 cov(x, y) / (var x + var y + (mean x - mean y)^2)``; the usual measure for
    valence and arousal (e.g. the AffectNet and Aff-Wild2 papers).
    """
    x = _floats(truth, "truth")
    y = _floats(predicted, "prediction")
    _same_length(x, y)
    if x.size == 0:
        raise ValueError("CCC of an empty set is undefined")
    mx, my = x.mean(), y.mean()
    covariance = float(np.mean((x - mx) * (y - my)))
    denominator = float(x.var() + y.var() + (mx - my) ** 2)
    return 2 * covariance / denominator if denominator > 0 else float("nan")


def rmse(truth: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Root mean squared error (``sqrt(mean_squared_error)``)."""
    x = _floats(truth, "truth")
    y = _floats(predicted, "prediction")
    _same_length(x, y)
    if x.size == 0:
        raise ValueError("RMSE of an empty set is undefined")
    return math.sqrt(float(np.mean((x - y) ** 2)))


def average_ranks(values: npt.ArrayLike) -> FloatArray:
    """Ranks from 1, tied values sharing their mean rank (``scipy.stats.rankdata``)."""
    x = _floats(values, "values")
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Each run of equal values gets the mean of the positions it spans.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve from the Mann-Whitney rank sum.

    Tied scores count one half, which equals ``roc_auc_score``'s trapezoidal area.
    Raises ``ValueError`` when only one class is present, as scikit-learn does.
    """
    positive = np.asarray(labels, dtype=bool).ravel()
    s = _floats(scores, "scores")
    _same_length(positive, s)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative items")
    rank_sum = float(average_ranks(s)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def spearman(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Spearman's rank correlation with average ranks for ties (``scipy.stats.spearmanr``).

    Returns NaN when either variable is constant, as scipy does.
    """
    rx, ry = average_ranks(x), average_ranks(y)
    _same_length(rx, ry)
    if rx.size < 2:
        raise ValueError("Spearman correlation needs at least two items")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(np.sum(dx * dx) * np.sum(dy * dy)))
    return float(np.sum(dx * dy)) / denominator if denominator > 0 else float("nan")


def item_weights(weights: npt.ArrayLike | None, size: int) -> FloatArray:
    """Item weights: ones when none are given; otherwise finite, non-negative, one per item."""
    if weights is None:
        return np.ones(size)
    array = _floats(weights, "weights")
    if array.size != size:
        raise ValueError(f"weights and items differ in length ({array.size} and {size})")
    if np.any(array < 0):
        raise ValueError("weights must not be negative")
    return array


def expected_calibration_error(
    correct: npt.ArrayLike,
    confidence: npt.ArrayLike,
    n_bins: int = 10,
    weights: npt.ArrayLike | None = None,
) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of [0, 1].

    ``sum_b |accuracy_b - mean confidence_b| * n_b / N``. Bin edges follow
    ``sklearn.calibration.calibration_curve(strategy="uniform")``: a confidence on
    an inner edge falls into the lower bin.

    With ``weights``, each item counts for its weight in the accuracies, the mean
    confidences and the bins' shares (``n_b`` and ``N`` are sums of weights): an
    estimate for a population the items were drawn from with unequal chances, each
    weight the inverse of an item's chance of having been drawn.
    """
    right = np.asarray(correct, dtype=np.float64).ravel()
    conf = _floats(confidence, "confidence")
    _same_length(right, conf)
    if conf.size == 0:
        raise ValueError("calibration error of an empty set is undefined")
    if n_bins < 1:
        raise ValueError("the number of bins must be at least 1")
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidences must lie in [0, 1]")
    weight = item_weights(weights, conf.size)
    if weight.sum() <= 0:
        raise ValueError("the weights sum to zero")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        mass = float(weight[members].sum())
        if mass <= 0:
            continue
        gap = np.average(right[members], weights=weight[members]) - np.average(
            conf[members], weights=weight[members]
        )
        total += abs(float(gap)) * mass
    return total / float(weight.sum())


def accepted_error_rate(correct: npt.ArrayLike, confidence: npt.ArrayLike, budget: float) -> float:
    """Error rate among the items left auto-accepted when the least confident go to review.

    The ``round(budget * N)`` least confident items (ties in input order, by a
    stable sort) are sent to review; the result is the share of wrong answers among
    the rest. NaN when nothing is left.
    """
    right = np.asarray(correct, dtype=bool).ravel()
    conf = _floats(confidence, "confidence")
    _same_length(right, conf)
    if not 0.0 <= budget <= 1.0:
        raise ValueError("the review budget is a fraction between 0 and 1")
    n_review = math.floor(budget * conf.size + 0.5)
    accepted = np.argsort(conf, kind="stable")[n_review:]
    if accepted.size == 0:
        return float("nan")
    return float(1.0 - right[accepted].mean())
