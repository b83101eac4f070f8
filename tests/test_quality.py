"""Agreement, calibration and risk-coverage figures on hand-made data with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import cohen_kappa_score

from seke_app.engine import quality
from seke_app.engine.vocab import EXPRESSIONS

TOL = 1e-9


def test_it_computes_kappa_of_the_worked_two_by_two_example() -> None:
    # 50 items: both yes 20, first yes / second no 5, first no / second yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4.
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert quality.cohen_kappa(first, second) == pytest.approx(0.4, abs=TOL)
    assert quality.kappa_from_table([[20, 5], [10, 15]]) == pytest.approx(0.4, abs=TOL)


@pytest.mark.parametrize("seed", range(8))
def test_it_agrees_with_sklearn_on_random_raters(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    classes = EXPRESSIONS[: int(rng.integers(2, 8))]
    first = [str(c) for c in rng.choice(classes, size=n)]
    # A second rater who copies the first 60% of the time, so kappa is far from 0.
    second = [f if rng.random() < 0.6 else str(rng.choice(classes)) for f in first]
    assert quality.cohen_kappa(first, second) == pytest.approx(
        cohen_kappa_score(first, second), abs=TOL
    )
    labels = list(EXPRESSIONS)
    assert quality.cohen_kappa(first, second, labels) == pytest.approx(
        cohen_kappa_score(first, second, labels=labels), abs=TOL
    )


def test_it_leaves_kappa_undefined_where_sklearn_does() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = cohen_kappa_score(["a", "a"], ["a", "a"])
    assert math.isnan(expected) and math.isnan(quality.cohen_kappa(["a", "a"], ["a", "a"]))
    # Perfect agreement on two labels is kappa 1; systematic disagreement is -1.
    assert quality.cohen_kappa(["a", "b"], ["a", "b"]) == 1.0
    assert quality.cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="empty"):
        quality.cohen_kappa([], [])
    with pytest.raises(ValueError, match="differ in length"):
        quality.cohen_kappa(["a"], ["a", "b"])


def test_it_shows_prevalence_next_to_per_au_kappa() -> None:
    # AU12: common, the raters agree on 9 of 10. AU9: rare, they agree on 9 of 10 as well.
    first = {12: [True] * 6 + [False] * 4, 9: [False] * 9 + [True]}
    second = {12: [True] * 5 + [False] * 5, 9: [False] * 10}
    rows = {r.au: r for r in quality.au_agreement(first, second)}
    assert rows[12].n == 10 and rows[12].observed_agreement == pytest.approx(0.9)
    assert rows[12].prevalence == pytest.approx(11 / 20)
    assert rows[12].kappa == pytest.approx(cohen_kappa_score(first[12], second[12]), abs=TOL)
    assert rows[12].kappa == pytest.approx(0.8, abs=TOL)
    # The kappa paradox: the same 90% agreement, but a rare AU gets kappa 0.
    assert rows[9].observed_agreement == pytest.approx(0.9)
    assert rows[9].prevalence == pytest.approx(1 / 20)
    assert rows[9].kappa == pytest.approx(0.0, abs=TOL)
    assert rows[9].kappa == pytest.approx(cohen_kappa_score(first[9], second[9]), abs=TOL)


def test_it_measures_valence_arousal_distance() -> None:
    first = [(0.0, 0.0), (0.3, 0.4), (-1.0, 1.0)]
    second = [(0.0, 0.0), (0.0, 0.0), (-1.0, 0.0)]
    # Distances 0, 0.5 (a 3-4-5 triangle) and 1.
    assert quality.mean_va_distance(first, second) == pytest.approx(0.5, abs=TOL)
    assert quality.va_agrees((0.1, 0.1), (0.3, -0.1))
    assert not quality.va_agrees((0.1, 0.1), (0.31, 0.1))
    assert quality.aus_agree({1: True, 2: False}, {1: True})
    assert not quality.aus_agree({1: True}, {1: True, 4: True})


def test_it_draws_the_reliability_diagram_of_a_hand_made_set() -> None:
    confidence = [0.95, 0.95, 0.85, 0.85, 0.55, 0.55, 0.15, 0.15]
    correct = [1, 1, 1, 0, 1, 0, 0, 0]
    diagram = quality.reliability_diagram(correct, confidence, n_bins=10)
    # Gaps |accuracy - confidence| * count: 0.05*2 + 0.35*2 + 0.05*2 + 0.15*2 = 1.2, over 8.
    assert diagram.ece == pytest.approx(0.15, abs=TOL)
    assert diagram.n == 8
    assert [(b.lower, b.upper, b.count) for b in diagram.bins] == [
        pytest.approx((0.1, 0.2, 2)),
        pytest.approx((0.5, 0.6, 2)),
        pytest.approx((0.8, 0.9, 2)),
        pytest.approx((0.9, 1.0, 2)),
    ]
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10)
    np.testing.assert_allclose([b.accuracy for b in diagram.bins], prob_true, atol=TOL)
    np.testing.assert_allclose([b.mean_confidence for b in diagram.bins], prob_pred, atol=TOL)


def test_it_is_perfectly_calibrated_when_confidence_equals_accuracy() -> None:
    confidence = [0.75] * 4 + [0.25] * 4
    correct = [1, 1, 1, 0, 1, 0, 0, 0]
    assert quality.reliability_diagram(correct, confidence).ece == pytest.approx(0.0, abs=TOL)


# Five items: confidence and whether the machine was right.
CONFIDENCE = [0.9, 0.2, 0.5, 0.7, 0.6]
CORRECT = [True, False, True, True, False]


def test_it_traces_risk_and_coverage_on_a_hand_made_set() -> None:
    points = quality.risk_coverage(CORRECT, CONFIDENCE)
    table = [(p.threshold, p.n_review, p.n_accepted, p.n_errors, p.error_rate) for p in points]
    assert table == [
        (0.0, 0, 5, 2, pytest.approx(2 / 5)),
        (0.5, 1, 4, 1, pytest.approx(1 / 4)),
        (0.6, 2, 3, 1, pytest.approx(1 / 3)),
        (0.7, 3, 2, 0, 0.0),
        (0.9, 4, 1, 0, 0.0),
        (1.0, 5, 0, 0, None),
    ]
    assert [p.review_share for p in points] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert points[1].coverage == pytest.approx(0.8)
    # Any threshold splits the items as the curve says.
    assert quality.risk_point(CORRECT, CONFIDENCE, 0.55).n_review == 2
    assert quality.risk_point(CORRECT, CONFIDENCE, 0.1).error_rate == pytest.approx(0.4)


def test_it_picks_the_threshold_for_a_target_error_rate() -> None:
    points = quality.risk_coverage(CORRECT, CONFIDENCE)
    chosen = quality.threshold_for_error_rate(points, 0.3)
    assert chosen is not None and chosen.threshold == 0.5 and chosen.review_share == 0.2
    # Zero errors needs the three least confident reviewed.
    chosen = quality.threshold_for_error_rate(points, 0.0)
    assert chosen is not None and chosen.threshold == 0.7
    # 40% is met without reviewing anything.
    chosen = quality.threshold_for_error_rate(points, 0.4)
    assert chosen is not None and chosen.threshold == 0.0
    everything_wrong = quality.risk_coverage([False, False], [0.3, 0.8])
    assert quality.threshold_for_error_rate(everything_wrong, 0.1) is None


def test_it_picks_the_threshold_for_a_review_budget() -> None:
    points = quality.risk_coverage(CORRECT, CONFIDENCE)
    assert quality.threshold_for_budget(points, 0.5).threshold == 0.6  # type: ignore[union-attr]
    assert quality.threshold_for_budget(points, 0.19).threshold == 0.0  # type: ignore[union-attr]
    assert quality.threshold_for_budget(points, 1.0).threshold == 1.0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="fraction"):
        quality.threshold_for_budget(points, 1.5)


def test_it_counts_a_histogram_of_confidences() -> None:
    counts = quality.histogram([0.0, 0.04, 0.05, 0.5, 0.99, 1.0], n_bins=20)
    assert sum(counts) == 6
    assert counts[0] == 2 and counts[1] == 1 and counts[10] == 1 and counts[19] == 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quality.histogram([1.2])
