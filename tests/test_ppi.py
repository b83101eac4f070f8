"""Prediction-powered and audit-only intervals (seke_app/engine/ppi.py), on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from seke_app.engine.ppi import Interval, classical_mean, ppi_mean

DRAWS = 400


def draw(rng: np.random.Generator, n: int = 200, big_n: int = 2000) -> dict[str, np.ndarray]:
    """An audit of n and N unlabelled images; right with probability the confidence."""
    confidence = rng.beta(4.0, 1.5, n + big_n)
    right = (rng.uniform(0.0, 1.0, n + big_n) < confidence).astype(float)
    return {
        "labelled_truth": right[:n],
        "labelled_pred": confidence[:n],
        "unlabelled_pred": confidence[n:],
    }


def coverage_bounds() -> tuple[float, float]:
    """Where the coverage of a 95% interval over DRAWS draws lies but once in 1,000."""
    low, high = stats.binom.interval(0.999, DRAWS, 0.95)
    return low / DRAWS, high / DRAWS


def test_it_covers_the_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    truth = 4.0 / 5.5  # The mean of Beta(4, 1.5).
    covered = sum(ppi_mean(**draw(rng)).covers(truth) for _ in range(DRAWS))
    low, high = coverage_bounds()
    assert low <= covered / DRAWS <= high


def test_it_is_narrower_than_the_audit_alone_when_predictions_are_good() -> None:
    rng = np.random.default_rng(1)
    ppi_widths, classical_widths = [], []
    for _ in range(50):
        data = draw(rng)
        ppi_widths.append(ppi_mean(**data).width)
        classical_widths.append(classical_mean(labelled_truth=data["labelled_truth"]).width)
    assert np.mean(ppi_widths) < 0.95 * np.mean(classical_widths)


def test_it_falls_back_to_the_audit_when_predictions_are_noise() -> None:
    rng = np.random.default_rng(2)
    truth = (rng.uniform(size=300) < 0.7).astype(float)
    interval = ppi_mean(
        labelled_truth=truth,
        labelled_pred=rng.uniform(size=300),
        unlabelled_pred=rng.uniform(size=3000),
    )
    classical = classical_mean(labelled_truth=truth)
    assert interval.width < 1.1 * classical.width
    assert interval.n_labelled == 300 and interval.n_unlabelled == 3000


def test_it_gives_the_wilson_interval_for_binary_truth() -> None:
    truth = [1.0] * 37 + [0.0] * 13
    interval = classical_mean(labelled_truth=truth)
    expected = stats.binomtest(37, 50).proportion_ci(0.95, method="wilson")
    assert interval.low == pytest.approx(expected.low, abs=1e-9)
    assert interval.high == pytest.approx(expected.high, abs=1e-9)
    assert interval.estimate == pytest.approx(0.74)
    assert "Wilson" in interval.method


def test_it_gives_the_wald_interval_for_other_truth() -> None:
    values = np.array([0.1, 0.4, 0.35, 0.8, 0.5])
    interval = classical_mean(labelled_truth=values, alpha=0.1)
    half = stats.norm.ppf(0.95) * values.std(ddof=1) / np.sqrt(values.size)
    assert interval.high - interval.estimate == pytest.approx(half)
    assert "Wald" in interval.method


def test_it_round_trips_through_json() -> None:
    interval = ppi_mean(**draw(np.random.default_rng(3)))
    assert Interval.from_json(interval.to_json()) == interval


def test_it_refuses_bad_input_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ppi_mean(labelled_truth=[1, 0, 1], labelled_pred=[0.5, 0.5], unlabelled_pred=[0.5, 0.4])
    with pytest.raises(ValueError, match="at least 2 labelled and 2 unlabelled"):
        ppi_mean(labelled_truth=[1, 0], labelled_pred=[0.5, 0.5], unlabelled_pred=[0.5])
    with pytest.raises(ValueError, match="alpha must lie strictly between 0 and 1"):
        classical_mean(labelled_truth=[1, 0], alpha=0)
    with pytest.raises(ValueError, match="at least one audit reference"):
        classical_mean(labelled_truth=[])
