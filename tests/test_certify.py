"""The certified auto-accept threshold (seke_app/engine/certify.py), on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from seke_app.engine.certify import (
    Certificate,
    certify,
    clopper_pearson_upper,
    min_references,
)

# Synthetic runs: confidence uniform on [0, 1] and P(wrong | c) = 0.8 (1 - c), so
# the error among accepted at a threshold t is R(t) = 0.4 (1 - t), known exactly.
ALPHA, DELTA = 0.2, 0.1


def draw_run(rng: np.random.Generator, n_all: int = 2000, n_audit: int = 300) -> dict[str, object]:
    confidence = rng.uniform(0.0, 1.0, n_all)
    wrong = rng.uniform(0.0, 1.0, n_all) < 0.8 * (1.0 - confidence)
    audited = rng.choice(n_all, n_audit, replace=False)
    return {
        "audit_confidence": confidence[audited],
        "audit_error": wrong[audited],
        "all_confidence": confidence,
    }


def violation_limit(draws: int) -> int:
    """The most violations a valid procedure shows in ``draws`` draws, but once in 1,000.

    Violations of a valid procedure are at most Binomial(draws, DELTA); allowing up
    to its 0.999 quantile keeps the test from failing by chance while still
    catching a procedure whose violation rate is clearly above DELTA (as the naive
    empirical threshold's is, below).
    """
    return int(stats.binom.ppf(0.999, draws, DELTA))


def test_it_matches_the_exact_clopper_pearson_bound() -> None:
    for errors, n in [(0, 10), (3, 50), (17, 200), (9, 9)]:
        expected = stats.binomtest(errors, n).proportion_ci(0.95, "exact").high
        one_sided = stats.binomtest(errors, n, alternative="less").proportion_ci(0.95, "exact")
        assert clopper_pearson_upper(errors, n, 0.05) == pytest.approx(one_sided.high, abs=1e-9)
        assert clopper_pearson_upper(errors, n, 0.025) == pytest.approx(expected, abs=1e-9)
    assert clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20))


def test_it_needs_log_delta_over_log_one_minus_alpha_references() -> None:
    n = min_references(0.1, 0.05)
    assert clopper_pearson_upper(0, n, 0.05) <= 0.1 < clopper_pearson_upper(0, n - 1, 0.05)


def test_it_keeps_violations_at_or_under_delta_over_many_draws() -> None:
    rng = np.random.default_rng(1)
    draws, violations, certified = 300, 0, 0
    for _ in range(draws):
        certificate = certify(**draw_run(rng), alpha=ALPHA, delta=DELTA)  # type: ignore[arg-type]
        if certificate.threshold is not None:
            certified += 1
            violations += 0.4 * (1.0 - certificate.threshold) > ALPHA
    assert certified > 0.9 * draws
    assert violations <= violation_limit(draws)


def test_it_would_catch_the_uncorrected_empirical_threshold() -> None:
    # The same harness flags the threshold read off the empirical curve with no
    # margin for sampling error, so the validity test above can fail.
    rng = np.random.default_rng(2)
    draws, violations = 300, 0
    for _ in range(draws):
        run = draw_run(rng)
        conf = np.asarray(run["audit_confidence"])
        wrong = np.asarray(run["audit_error"])
        order = np.argsort(-conf)
        rates = np.cumsum(wrong[order]) / np.arange(1, conf.size + 1)
        permissive = np.flatnonzero(rates <= ALPHA).max()
        violations += 0.4 * (1.0 - conf[order][permissive]) > ALPHA
    assert violations > violation_limit(draws)


def test_it_certifies_everything_when_the_machine_is_never_wrong() -> None:
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.0, 1.0, 1000)
    certificate = certify(
        audit_confidence=confidence[:200],
        audit_error=[False] * 200,
        all_confidence=confidence,
        alpha=0.1,
        delta=0.05,
    )
    assert certificate.threshold == pytest.approx(confidence.min())
    assert certificate.coverage == 1.0
    assert certificate.n_accepted_references == 200
    assert certificate.errors_accepted == 0
    assert certificate.upper_bound is not None and certificate.upper_bound <= 0.1
    assert certificate.needed is None


def test_it_certifies_nothing_and_needs_no_audit_when_the_target_is_impossible() -> None:
    rng = np.random.default_rng(4)
    confidence = rng.uniform(0.0, 1.0, 1000)
    wrong = rng.uniform(0.0, 1.0, 1000) < 0.5
    certificate = certify(
        audit_confidence=confidence[:300],
        audit_error=wrong[:300],
        all_confidence=confidence,
        alpha=0.1,
        delta=0.05,
    )
    assert certificate.threshold is None
    assert certificate.coverage == 0.0
    assert certificate.upper_bound is None
    assert certificate.needed is None


def test_it_says_how_many_references_a_small_audit_needs() -> None:
    rng = np.random.default_rng(5)
    confidence = rng.uniform(0.0, 1.0, 1000)
    small = certify(
        audit_confidence=confidence[:20],
        audit_error=[False] * 20,
        all_confidence=confidence,
        alpha=0.1,
        delta=0.05,
    )
    assert small.threshold is None
    assert small.needed is not None and small.needed > 20
    assert small.more_needed() == small.needed - 20
    # An audit of that size with the same (error-free) answers certifies.
    enough = certify(
        audit_confidence=confidence[: small.needed],
        audit_error=[False] * small.needed,
        all_confidence=confidence,
        alpha=0.1,
        delta=0.05,
    )
    assert enough.threshold is not None


@pytest.mark.parametrize("wrong_at", [19, 10, 0])
def test_it_says_how_many_references_a_nearly_error_free_audit_needs(wrong_at: int) -> None:
    # Twenty references spread over the confidences, one of them wrong: the audit
    # shows an error rate of 5 %, well under a target of 20 %.
    confidence = np.linspace(0.0, 1.0, 2000)
    audit = np.argsort(confidence)[::100]
    wrong = np.zeros(20, dtype=bool)
    wrong[wrong_at] = True
    small = certify(
        audit_confidence=confidence[audit],
        audit_error=wrong,
        all_confidence=confidence,
        alpha=0.2,
        delta=0.05,
    )
    assert small.threshold is None
    assert small.needed is not None and 20 < small.needed <= 2000
    # Sound: audits of that size at the error rate shown certify with the chance
    # promised (80 %; a little less allowed for the 400 draws).
    rng = np.random.default_rng(11)
    certified = 0
    for _ in range(400):
        drawn = rng.choice(2000, small.needed, replace=False)
        certified += certify(
            audit_confidence=confidence[drawn],
            audit_error=rng.uniform(0.0, 1.0, small.needed) < 0.05,
            all_confidence=confidence,
            alpha=0.2,
            delta=0.05,
        ).certified
    assert certified / 400 >= 0.75


def test_it_never_asks_for_more_references_than_there_are_annotations() -> None:
    # An audit of a run's 100 annotations holds at most 100 references.
    confidence = np.linspace(0.0, 1.0, 100)
    audit = np.linspace(0, 99, 30).round().astype(int)
    wrong = np.zeros(30, dtype=bool)
    wrong[6] = True
    certificate = certify(
        audit_confidence=confidence[audit],
        audit_error=wrong,
        all_confidence=confidence,
        alpha=0.1,
        delta=0.05,
    )
    assert certificate.threshold is None
    assert certificate.needed is None or certificate.needed <= 100


def test_it_stops_at_the_first_candidate_it_cannot_reject() -> None:
    # The most confident tenth is often wrong and the rest always right: the whole
    # set's error is low, but fixed-sequence testing may not skip the strict end.
    confidence = np.linspace(0.0, 1.0, 1000)
    wrong = confidence > 0.9
    certificate = certify(
        audit_confidence=confidence,
        audit_error=wrong,
        all_confidence=confidence,
        alpha=0.2,
        delta=0.05,
    )
    assert certificate.threshold is None


def test_it_round_trips_through_json() -> None:
    rng = np.random.default_rng(6)
    certificate = certify(**draw_run(rng), alpha=ALPHA, delta=DELTA)  # type: ignore[arg-type]
    assert Certificate.from_json(certificate.to_json()) == certificate
    with pytest.raises(ValueError, match="unknown certificate fields"):
        Certificate.from_json(certificate.to_json() | {"colour": "red"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"alpha": 0.0}, "alpha must lie strictly between 0 and 1"),
        ({"delta": 1.5}, "delta must lie strictly between 0 and 1"),
        ({"audit_error": [True]}, "differ in length"),
        ({"all_confidence": []}, "nothing to accept"),
        ({"audit_confidence": [float("nan"), 0.5]}, "not finite"),
    ],
)
def test_it_refuses_bad_input_with_a_clear_message(
    changes: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "audit_confidence": [0.9, 0.5],
        "audit_error": [False, True],
        "all_confidence": [0.9, 0.5, 0.7],
        "alpha": 0.1,
        "delta": 0.05,
    }
    with pytest.raises(ValueError, match=message):
        certify(**(arguments | changes))  # type: ignore[arg-type]


def test_it_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="0 <= errors <= n"):
        clopper_pearson_upper(5, 3, 0.05)
