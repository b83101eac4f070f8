"""The engine's metrics agree with scikit-learn and scipy to 1e-9."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk
from sklearn.calibration import calibration_curve

from seke_app.engine import metrics
from seke_app.engine.vocab import EXPRESSIONS

TOL = 1e-9


def _random_labels(seed: int, n: int, classes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    truth = [str(c) for c in rng.choice(classes, size=n)]
    predicted = [str(c) for c in rng.choice(classes, size=n)]
    return truth, predicted


@pytest.mark.parametrize("seed", range(5))
def test_it_matches_sklearn_on_random_labels(seed: int) -> None:
    truth, predicted = _random_labels(seed, 60, EXPRESSIONS[:6])
    labels = list(EXPRESSIONS)
    assert metrics.accuracy(truth, predicted) == pytest.approx(
        sk.accuracy_score(truth, predicted), abs=TOL
    )
    expected = sk.f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)
    assert metrics.macro_f1(truth, predicted, labels) == pytest.approx(expected, abs=TOL)
    p, r, f, s = sk.precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    for i, scores in enumerate(metrics.per_class_scores(truth, predicted, labels)):
        assert scores.label == labels[i]
        assert (scores.precision, scores.recall, scores.f1) == pytest.approx(
            (p[i], r[i], f[i]), abs=TOL
        )
        assert scores.support == s[i]
    np.testing.assert_array_equal(
        metrics.confusion_matrix(truth, predicted, labels),
        sk.confusion_matrix(truth, predicted, labels=labels),
    )


def test_it_counts_absent_listed_classes_as_zero_like_sklearn() -> None:
    truth = ["happiness", "happiness", "sadness", "fear"]
    predicted = ["happiness", "sadness", "sadness", "surprise"]
    labels = ["happiness", "sadness", "fear", "surprise", "contempt"]
    # happiness 2/3, sadness 2/3, fear 0, surprise 0, contempt (absent) 0.
    assert metrics.macro_f1(truth, predicted, labels) == pytest.approx(4 / 15, abs=TOL)
    assert metrics.macro_f1(truth, predicted, labels) == pytest.approx(
        sk.f1_score(truth, predicted, labels=labels, average="macro", zero_division=0), abs=TOL
    )


def test_it_scores_only_present_classes_without_labels() -> None:
    truth = ["happiness", "happiness", "sadness", "fear"]
    predicted = ["happiness", "sadness", "sadness", "surprise"]
    assert metrics.macro_f1(truth, predicted) == pytest.approx(
        sk.f1_score(truth, predicted, average="macro", zero_division=0), abs=TOL
    )
    assert metrics.macro_f1(truth, predicted) == pytest.approx(1 / 3, abs=TOL)


def test_it_leaves_unlisted_classes_out_of_the_confusion_matrix() -> None:
    truth = ["a", "b", "c", "a"]
    predicted = ["a", "c", "b", "b"]
    np.testing.assert_array_equal(
        metrics.confusion_matrix(truth, predicted, ["a", "b"]), [[1, 1], [0, 0]]
    )


@pytest.mark.parametrize("seed", range(4))
def test_it_matches_sklearn_binary_f1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = rng.random(40) < 0.3
    p = rng.random(40) < 0.4
    assert metrics.binary_f1(t, p) == pytest.approx(sk.f1_score(t, p, zero_division=0), abs=TOL)


def test_it_gives_zero_binary_f1_when_no_positives_anywhere() -> None:
    t = [False, False, False]
    assert metrics.binary_f1(t, t) == sk.f1_score(t, t, zero_division=0) == 0.0


def test_it_computes_au_f1_over_shared_aus() -> None:
    truth = {12: [True, False, True], 6: [True, True, False]}
    predicted = {12: [True, True, True], 4: [False, False, False]}
    assert metrics.au_f1(truth, predicted) == {12: pytest.approx(0.8, abs=TOL)}


@pytest.mark.parametrize("seed", range(4))
def test_it_matches_scipy_ccc_and_sklearn_rmse(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, 50)
    y = 0.6 * x + rng.normal(0.1, 0.3, 50)
    r = stats.pearsonr(x, y).statistic
    expected = 2 * r * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert metrics.ccc(x, y) == pytest.approx(expected, abs=TOL)
    assert metrics.rmse(x, y) == pytest.approx(math.sqrt(sk.mean_squared_error(x, y)), abs=TOL)


def test_it_computes_ccc_by_hand() -> None:
    # Means 2 and 3, population variances 2/3 and 2/3, covariance 2/3.
    assert metrics.ccc([1, 2, 3], [2, 3, 4]) == pytest.approx((4 / 3) / (4 / 3 + 1), abs=TOL)
    assert metrics.ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_it_matches_sklearn_auroc_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(80) < 0.6
    # Rounded scores make many ties.
    s = np.round(rng.random(80) + 0.3 * y, 1)
    assert metrics.auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=TOL)


def test_it_computes_auroc_by_hand_and_refuses_one_class() -> None:
    y = [True, True, False, False]
    s = [0.8, 0.5, 0.5, 0.9]
    # Positive 0.8 beats 0.5, loses to 0.9; positive 0.5 ties 0.5, loses to 0.9.
    assert metrics.auroc(y, s) == pytest.approx(1.5 / 4, abs=TOL)
    with pytest.raises(ValueError, match="both positive and negative"):
        metrics.auroc([True, True], [0.1, 0.2])


@pytest.mark.parametrize("seed", range(5))
def test_it_matches_scipy_spearman_and_rankdata(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40)
    y = x + rng.integers(0, 4, 40)
    np.testing.assert_allclose(metrics.average_ranks(x), stats.rankdata(x), atol=TOL)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=TOL)


def test_it_returns_nan_spearman_for_a_constant() -> None:
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("seed", range(4))
def test_it_matches_calibration_curve_bins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    conf = np.round(rng.random(200), 2)
    correct = rng.random(200) < conf
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    bins = np.searchsorted(np.linspace(0, 1, 11)[1:-1], conf)
    counts = np.bincount(bins, minlength=10)
    counts = counts[counts > 0]
    expected = float(np.sum(np.abs(prob_true - prob_pred) * counts) / conf.size)
    assert metrics.expected_calibration_error(correct, conf) == pytest.approx(expected, abs=TOL)


def test_it_computes_ece_by_hand() -> None:
    # Bin [0, 0.5]: confidences 0.2, 0.4, accuracy 0.5 -> gap 0.2 over 2 items.
    # Bin (0.5, 1]: confidences 0.9, 0.9, accuracy 1 -> gap 0.1 over 2 items.
    ece = metrics.expected_calibration_error([1, 0, 1, 1], [0.2, 0.4, 0.9, 0.9], n_bins=2)
    assert ece == pytest.approx((0.2 * 2 + 0.1 * 2) / 4, abs=TOL)


def test_it_computes_the_accepted_error_rate_at_a_budget() -> None:
    correct = [False, True, True, False, True, True, True, True, True, False]
    conf = [0.1, 0.2, 0.9, 0.3, 0.8, 0.7, 0.6, 0.95, 0.85, 0.99]
    # 30% budget: the three least confident (0.1, 0.2, 0.3) go to review.
    assert metrics.accepted_error_rate(correct, conf, 0.3) == pytest.approx(1 / 7, abs=TOL)
    assert metrics.accepted_error_rate(correct, conf, 0.0) == pytest.approx(0.3, abs=TOL)
    assert math.isnan(metrics.accepted_error_rate(correct, conf, 1.0))
    with pytest.raises(ValueError, match="fraction"):
        metrics.accepted_error_rate(correct, conf, 1.5)


def test_it_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy(["a"], ["a", "b"])
