"""Confidence intervals for a dataset mean from audit references and machine predictions.

The quantity is a mean over the run's images, e.g. the accuracy of the machine's
expression (the mean of 1 where the machine is right) or the share of a class
(the mean of 1 where the label is that class). The audit references give the
truth on a uniform random sample of ``n`` images; the machine gives a prediction
of the same quantity on every image.

:func:`ppi_mean` is prediction-powered inference with power tuning, PPI++
(Angelopoulos, Duchi and Zrnic, "PPI++: Efficient Prediction-Powered
Inference", 2023). With ``Y`` the truth and ``f`` the prediction on the
labelled (audited) images and ``f~`` the prediction on the ``N`` unlabelled
ones, the estimate is::

    theta = mean(Y) + lambda * (mean(f~) - mean(f))

Any ``lambda`` gives an unbiased estimate; the one that minimises the variance
is ``Cov(Y, f) / ((1 + n / N) Var(f))``, estimated from the data and clipped to
[0, 1] (0 is the audit alone, 1 plain prediction-powered inference). The
interval is the normal one with the variance
``Var(Y - lambda f) / n + lambda^2 Var(f~) / N``. It is never wider than the
audit-only interval by more than the error of estimating ``lambda``, and
narrower the better ``f`` tracks ``Y``.

Validity needs the labelled images to be a uniform random sample, the
unlabelled ones to be the others (disjoint from them) and the prediction ``f``
not to be fitted on the labelled images it is scored with: the machine's raw
confidence qualifies, a recalibration map fitted on the same audit does not
(``lambda`` already rescales the prediction linearly).

:func:`classical_mean` is the audit alone: the Wilson score interval when the
truth is 0/1 (it keeps its level for small samples and rates near 0 or 1), the
Wald interval otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

PPI_METHOD = "PPI++ with power tuning, normal interval (Angelopoulos, Duchi, Zrnic 2023)"
WILSON_METHOD = "Wilson score interval on the audit references alone"
WALD_METHOD = "Wald interval on the audit references alone"

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval at level ``1 - alpha``."""

    estimate: float
    low: float
    high: float
    n_labelled: int
    n_unlabelled: int
    method: str

    @property
    def width(self) -> float:
        return self.high - self.low

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Interval:
        return cls(**data)


def _floats(values: npt.ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains values that are not finite numbers")
    return array


def _z(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1 (got {alpha})")
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def ppi_mean(
    *,
    labelled_truth: npt.ArrayLike,
    labelled_pred: npt.ArrayLike,
    unlabelled_pred: npt.ArrayLike,
    alpha: float = 0.05,
) -> Interval:
    """The PPI++ estimate and interval of a mean (see the module docstring)."""
    y = _floats(labelled_truth, "labelled_truth")
    f = _floats(labelled_pred, "labelled_pred")
    f_tilde = _floats(unlabelled_pred, "unlabelled_pred")
    if y.size != f.size:
        raise ValueError(
            f"labelled_truth and labelled_pred differ in length ({y.size} and {f.size})"
        )
    if y.size < 2 or f_tilde.size < 2:
        raise ValueError("PPI needs at least 2 labelled and 2 unlabelled images")
    z = _z(alpha)
    n, big_n = y.size, f_tilde.size
    variance_f = float(np.var(np.concatenate([f, f_tilde]), ddof=1))
    covariance = float(np.cov(y, f, ddof=1)[0, 1])
    lam = covariance / ((1.0 + n / big_n) * variance_f) if variance_f > 0 else 0.0
    lam = min(1.0, max(0.0, lam))
    estimate = float(y.mean() + lam * (f_tilde.mean() - f.mean()))
    variance = (
        float(np.var(y - lam * f, ddof=1)) / n + lam**2 * float(np.var(f_tilde, ddof=1)) / big_n
    )
    half = z * math.sqrt(max(variance, 0.0))
    return Interval(estimate, estimate - half, estimate + half, n, big_n, PPI_METHOD)


def classical_mean(*, labelled_truth: npt.ArrayLike, alpha: float = 0.05) -> Interval:
    """The audit-only estimate and interval: Wilson for 0/1 truth, Wald otherwise."""
    y = _floats(labelled_truth, "labelled_truth")
    if y.size == 0:
        raise ValueError("an interval needs at least one audit reference")
    z = _z(alpha)
    n, mean = y.size, float(y.mean())
    if np.all((y == 0) | (y == 1)):
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n))
        return Interval(mean, centre - half, centre + half, n, 0, WILSON_METHOD)
    if n < 2:
        raise ValueError("a Wald interval needs at least 2 audit references")
    half = z * math.sqrt(float(np.var(y, ddof=1)) / n)
    return Interval(mean, mean - half, mean + half, n, 0, WALD_METHOD)
