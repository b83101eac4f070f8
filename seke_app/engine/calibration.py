"""Recalibration maps: a confidence turned into the probability that the answer is right.

A map is fitted per model and prompt version on *audit* references (a uniform
random sample reviewed blind), never on flagged reviews alone: those were chosen
by the very confidence being calibrated, so their accuracy at a given confidence
is not the accuracy of the run at that confidence.

Three maps compete, and five-fold cross-validation on the references picks the
one with the lowest mean Brier score (squared error between the mapped
confidence and 1 for right, 0 for wrong; a proper score that, unlike the
log-loss, stays finite when isotonic regression predicts exactly 0 or 1):

* ``identity``: the confidence as it is;
* ``platt``: ``expit(a * logit(c) + b)``, a two-parameter logistic fit with
  Platt's smoothed targets (Platt, "Probabilistic Outputs for Support Vector
  Machines", 1999), which keeps the ranking and needs few references;
* ``isotonic``: the monotone step fit of ``scipy.optimize.isotonic_regression``
  (pool adjacent violators), linearly interpolated between the fitted
  confidences and flat beyond them; it fixes any monotone distortion but needs
  more references and may tie confidences that were distinct.

Below ``MIN_REFERENCES`` references, or when they are all right or all wrong,
the map is the identity: five folds of fewer than six references each say more
about the draw than about the model, and a map fitted on one class only would
send every confidence to 0 or 1. The raw confidence is always kept; the map
only changes what is shown and ranked by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

Method = Literal["isotonic", "platt", "identity"]
MIN_REFERENCES = 30
# Confidences are clipped this far inside (0, 1) before the logit.
_EPS = 1e-6

FloatArray = npt.NDArray[np.float64]


def _floats(values: npt.ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains values that are not finite numbers")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1]")
    return array


def _logit(values: FloatArray) -> FloatArray:
    return np.asarray(special.logit(np.clip(values, _EPS, 1.0 - _EPS)), dtype=np.float64)


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted map from raw confidence to calibrated confidence.

    ``params`` holds ``a`` and ``b`` for Platt, the knots ``x`` and ``y`` for
    isotonic, nothing for the identity; ``reason`` says why the map was chosen,
    ``n_references`` how many references it was fitted on, ``scores`` the
    cross-validated Brier score of each candidate.
    """

    method: Method
    params: dict[str, Any] = field(default_factory=dict)
    n_references: int = 0
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    def apply(self, values: npt.ArrayLike) -> FloatArray:
        conf = _floats(values, "confidence")
        if self.method == "platt":
            z = self.params["a"] * _logit(conf) + self.params["b"]
            return np.asarray(special.expit(z), dtype=np.float64)
        if self.method == "isotonic":
            x = np.asarray(self.params["x"], dtype=np.float64)
            y = np.asarray(self.params["y"], dtype=np.float64)
            return np.clip(np.interp(conf, x, y), 0.0, 1.0)
        return conf.copy()

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "n_references": self.n_references,
            "reason": self.reason,
            "scores": self.scores,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalibrationMap:
        method = data.get("method")
        if method not in ("isotonic", "platt", "identity"):
            raise ValueError(f"unknown calibration method {method!r}")
        params = dict(data.get("params") or {})
        needed = {"platt": {"a", "b"}, "isotonic": {"x", "y"}, "identity": set()}[method]
        if not needed <= set(params):
            raise ValueError(f"a {method} map needs the parameters {sorted(needed)}")
        return cls(
            method=method,
            params=params,
            n_references=int(data.get("n_references", 0)),
            reason=str(data.get("reason", "")),
            scores={str(k): float(v) for k, v in (data.get("scores") or {}).items()},
        )


def _fit_platt(conf: FloatArray, right: FloatArray) -> dict[str, Any]:
    z = _logit(conf)
    n_right = right.sum()
    n_wrong = right.size - n_right
    target = np.where(right > 0.5, (n_right + 1) / (n_right + 2), 1.0 / (n_wrong + 2))

    def loss(ab: FloatArray) -> tuple[float, FloatArray]:
        logits = ab[0] * z + ab[1]
        p = special.expit(logits)
        value = np.mean(np.logaddexp(0.0, logits) - target * logits)
        residual = (p - target) / z.size
        return float(value), np.array([np.sum(residual * z), np.sum(residual)])

    result = optimize.minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return {"a": float(result.x[0]), "b": float(result.x[1])}


def _fit_isotonic(conf: FloatArray, right: FloatArray) -> dict[str, Any]:
    x, inverse, counts = np.unique(conf, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=right) / counts
    fitted = optimize.isotonic_regression(means, weights=counts.astype(np.float64)).x
    return {"x": x.tolist(), "y": np.asarray(fitted, dtype=np.float64).tolist()}


def _fit(method: Method, conf: FloatArray, right: FloatArray) -> CalibrationMap:
    if method == "platt":
        return CalibrationMap("platt", _fit_platt(conf, right), int(conf.size))
    if method == "isotonic":
        return CalibrationMap("isotonic", _fit_isotonic(conf, right), int(conf.size))
    return CalibrationMap("identity", {}, int(conf.size))


def _cv_brier(method: Method, conf: FloatArray, right: FloatArray, folds: int, seed: int) -> float:
    order = np.random.default_rng(seed).permutation(conf.size)
    squared = np.empty(conf.size)
    for held in np.array_split(order, folds):
        kept = np.setdiff1d(order, held)
        if np.unique(right[kept]).size < 2:
            squared[held] = (conf[held] - right[held]) ** 2
            continue
        fitted = _fit(method, conf[kept], right[kept])
        squared[held] = (fitted.apply(conf[held]) - right[held]) ** 2
    return float(squared.mean())


def fit_calibration(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, *, folds: int = 5, seed: int = 0
) -> CalibrationMap:
    """The map (identity, Platt or isotonic) with the best cross-validated Brier score.

    ``confidence`` and ``correct`` describe the audit references (``True`` = the
    machine's answer was right). See the module docstring for the candidates and
    when the identity is returned without a contest.
    """
    conf = _floats(confidence, "confidence")
    right = np.asarray(correct, dtype=bool).ravel().astype(np.float64)
    if conf.size != right.size:
        raise ValueError(f"confidence and correct differ in length ({conf.size} and {right.size})")
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if conf.size < MIN_REFERENCES:
        reason = f"{conf.size} references, fewer than the {MIN_REFERENCES} a fit needs"
        return CalibrationMap("identity", {}, int(conf.size), reason)
    if np.unique(right).size < 2:
        reason = "every reference is right" if right[0] else "every reference is wrong"
        return CalibrationMap("identity", {}, int(conf.size), reason + ": nothing to fit")
    methods: tuple[Method, ...] = ("identity", "platt", "isotonic")
    scores: dict[str, float] = {m: _cv_brier(m, conf, right, folds, seed) for m in methods}
    best = min(methods, key=lambda m: scores[m])
    reason = f"lowest {folds}-fold cross-validated Brier score ({scores[best]:.4f})"
    fitted = _fit(best, conf, right)
    return CalibrationMap(best, fitted.params, int(conf.size), reason, scores)
