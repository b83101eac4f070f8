"""Recalibration maps (seke_app/engine/calibration.py), on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from seke_app.engine import metrics
from seke_app.engine.calibration import CalibrationMap, fit_calibration


def overconfident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences whose answers are right with probability confidence cubed."""
    confidence = rng.uniform(0.3, 1.0, n)
    correct = rng.uniform(0.0, 1.0, n) < confidence**3
    return confidence, correct


def test_it_lowers_the_calibration_error_of_miscalibrated_confidences() -> None:
    rng = np.random.default_rng(0)
    fit_conf, fit_right = overconfident(rng, 400)
    new_conf, new_right = overconfident(rng, 5000)
    calibration = fit_calibration(fit_conf, fit_right)
    before = metrics.expected_calibration_error(new_right, new_conf)
    after = metrics.expected_calibration_error(new_right, calibration.apply(new_conf))
    assert calibration.method in ("platt", "isotonic")
    assert before > 0.15
    assert after < 0.04
    assert set(calibration.scores) == {"identity", "platt", "isotonic"}
    assert calibration.scores[calibration.method] == min(calibration.scores.values())


def test_it_keeps_well_calibrated_confidences_close_to_themselves() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.0, 1.0, 2000)
    correct = rng.uniform(0.0, 1.0, 2000) < confidence
    calibration = fit_calibration(confidence, correct)
    grid = np.linspace(0.05, 0.95, 19)
    assert np.max(np.abs(calibration.apply(grid) - grid)) < 0.1


def test_it_keeps_the_ranking() -> None:
    rng = np.random.default_rng(2)
    calibration = fit_calibration(*overconfident(rng, 300))
    mapped = calibration.apply(np.linspace(0.0, 1.0, 101))
    assert np.all(np.diff(mapped) >= 0)
    assert mapped.min() >= 0 and mapped.max() <= 1


def test_it_uses_the_identity_with_too_few_references_and_says_why() -> None:
    calibration = fit_calibration([0.9] * 29, [True] * 15 + [False] * 14)
    assert calibration.method == "identity"
    assert "fewer than the 30" in calibration.reason
    assert calibration.apply([0.2, 0.9]).tolist() == [0.2, 0.9]


def test_it_uses_the_identity_when_every_reference_is_right() -> None:
    calibration = fit_calibration(np.linspace(0.1, 0.9, 50), [True] * 50)
    assert calibration.method == "identity"
    assert "every reference is right" in calibration.reason


def test_it_round_trips_through_json() -> None:
    rng = np.random.default_rng(3)
    calibration = fit_calibration(*overconfident(rng, 300))
    again = CalibrationMap.from_json(calibration.to_json())
    values = np.linspace(0.0, 1.0, 11)
    assert np.allclose(again.apply(values), calibration.apply(values))
    assert again.method == calibration.method


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "magic"}, "unknown calibration method"),
        ({"method": "platt", "params": {"a": 1.0}}, "needs the parameters"),
    ],
)
def test_it_refuses_a_broken_stored_map(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CalibrationMap.from_json(data)


def test_it_refuses_bad_input_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        fit_calibration([0.5, 0.6], [True])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        fit_calibration([1.5] * 40, [True] * 40)
    with pytest.raises(ValueError, match="at least 2 folds"):
        fit_calibration([0.5] * 40, [True] * 40, folds=1)
