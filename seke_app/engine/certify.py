"""A certified auto-accept threshold: the error among accepted answers, bounded.

An annotation is *auto-accepted* when its confidence is at least the run's
threshold. For a threshold ``t`` let ``R(t)`` be the error rate among the images
whose confidence is at least ``t``. The admin states a target ``alpha`` and a
confidence level ``1 - delta``; :func:`certify` returns the most permissive
threshold it can show to satisfy ``R(t) <= alpha``, such that the probability
(over the random audit) that the returned threshold violates the target is at
most ``delta``.

The procedure is Learn then Test (Angelopoulos, Bates, Candès, Jordan and Lei,
"Learn then Test: Calibrating Predictive Algorithms to Achieve Risk Control",
2021) with fixed-sequence testing:

1. The candidate thresholds are quantiles of the *unlabelled* confidences (every
   annotation of the run, audited or not), so the sequence is fixed before any
   audit label is read. They run from the strictest to the most permissive.
2. For each candidate in that order, the null hypothesis "``R(t) > alpha``" is
   tested on the audit references the threshold accepts with the exact binomial
   p-value ``P(Binomial(n, alpha) <= errors)``. Rejecting at level ``delta`` is the
   same as the one-sided Clopper-Pearson upper bound at ``1 - delta`` lying at or
   below ``alpha``.
3. Testing stops at the first candidate not rejected; the last rejected one is
   certified. Fixed-sequence testing controls the family-wise error at ``delta``
   without splitting it among the candidates, because a later hypothesis is only
   tested once every earlier one was rejected.

The audit must be a uniform random sample of the run's annotations, reviewed
blind: the binomial model assumes the audited images that a threshold accepts are
a random sample of all the images it accepts.

Where the sequence starts matters. A candidate that accepts only a handful of
audit references can never be rejected (with ``n`` references and no error the
bound is ``1 - delta ** (1 / n)``), and a non-rejection at the very start ends
the sequence. The first candidate is therefore the strictest one at which the
audit is *expected* to hold enough accepted references (``START_FACTOR`` times the
minimum that could reject at all); the expectation uses only the audit's size and
the unlabelled confidences, so the sequence stays fixed before any label is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

METHOD = (
    "Learn then Test, fixed-sequence over unlabelled confidence quantiles, exact binomial "
    "(Clopper-Pearson) tests (Angelopoulos et al. 2021)"
)
# The first candidate is expected to accept this many times the fewest audit
# references that could certify anything (see the module docstring). Chosen on
# synthetic confidences and on the held-out training images, never on the
# evaluation sets (bench/README.md, "bench/certify.py").
START_FACTOR = 3.0
# The chance of certifying that `needed` asks for, under its assumption.
NEEDED_POWER = 0.8

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Certificate:
    """The outcome of :func:`certify` for one grain of one run.

    ``threshold`` is ``None`` when nothing could be certified; ``needed`` then says
    how many audit references in all (not how many more) would certify at least one
    candidate with an 80 % chance, assuming the error rates the audit shows at each
    candidate stay as they are, a stricter candidate's being no higher than a more
    permissive one's (``None`` if no audit size up to the number of annotations
    would, or if something was certified; see ``_needed``).
    ``upper_bound`` is the Clopper-Pearson upper bound at ``1 - delta`` on the error
    among accepted at the threshold, from ``errors_accepted`` errors among the
    ``n_accepted_references`` audit references it accepts. ``coverage`` is the share
    of all annotations (audited or not) whose confidence is at least the threshold.
    """

    threshold: float | None
    alpha: float
    delta: float
    n_references: int
    n_accepted_references: int
    errors_accepted: int
    upper_bound: float | None
    coverage: float
    method: str
    needed: int | None
    n_candidates_tested: int = 0

    @property
    def certified(self) -> bool:
        return self.threshold is not None

    def more_needed(self) -> int | None:
        """How many audit references beyond the current ones ``needed`` asks for."""
        return None if self.needed is None else max(0, self.needed - self.n_references)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Certificate:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown certificate fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1 (got {value})")


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson upper bound at level ``1 - delta`` on a binomial rate.

    The ``1 - delta`` quantile of Beta(errors + 1, n - errors); 1 when every trial
    failed or there was none. ``P(rate > bound) <= delta`` whatever the rate.
    """
    _check_level("delta", delta)
    if n < 0 or not 0 <= errors <= n:
        raise ValueError(f"need 0 <= errors <= n (got {errors} errors in {n})")
    if errors == n:
        return 1.0
    return float(stats.beta.ppf(1.0 - delta, errors + 1, n - errors))


def min_references(alpha: float, delta: float) -> int:
    """The fewest references that can certify ``alpha``: all of them right.

    With ``n`` references and no error the upper bound is ``1 - delta ** (1 / n)``,
    which is at most ``alpha`` from ``n >= log(delta) / log(1 - alpha)`` on.
    """
    _check_level("alpha", alpha)
    _check_level("delta", delta)
    return math.ceil(math.log(delta) / math.log1p(-alpha) - 1e-12)


def _floats(values: Sequence[float] | npt.ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains values that are not finite numbers")
    return array


def candidate_thresholds(
    all_confidence: FloatArray, n_references: int, alpha: float, delta: float, n_candidates: int
) -> FloatArray:
    """Candidate thresholds, strictest first, from the unlabelled confidences only.

    Observed confidence values at evenly spaced accepted shares, from the share at
    which ``n_references`` audit references are expected to hold ``START_FACTOR``
    times :func:`min_references` accepted ones, up to everything; duplicates (tied
    confidences) are tested once.
    """
    if n_references == 0:
        return np.empty(0)
    start = min(1.0, START_FACTOR * min_references(alpha, delta) / n_references)
    shares = np.linspace(start, 1.0, n_candidates)
    ordered = np.sort(all_confidence)[::-1]
    picks = ordered[np.clip(np.ceil(shares * ordered.size).astype(int) - 1, 0, ordered.size - 1)]
    return np.unique(picks)[::-1]


def _needed(
    conf: FloatArray,
    errors: npt.NDArray[np.bool_],
    all_conf: FloatArray,
    alpha: float,
    delta: float,
    n_candidates: int,
) -> int | None:
    """The audit size at which the first candidate would be certified with 80 % chance.

    The assumption: at each candidate, the share of all annotations accepted is
    what the unlabelled confidences say, and the error rate among accepted is the
    one the current audit shows there, ``errors / n`` among the ``n`` references
    the candidate accepts (half an error when there is none, so that a few lucky
    references do not promise too much), unless a more permissive candidate shows
    a lower one, which it then takes. That is the premise of auto-accepting the
    confident end: a stricter threshold accepts no larger a share of errors. It
    matters because a larger audit starts at a stricter candidate (see the module
    docstring), where the current audit holds few references or none; judged on
    those alone, every larger audit looked hopeless.

    A sequence certifies something exactly when its first candidate is rejected,
    and the first candidate is expected to accept about ``START_FACTOR`` times
    :func:`min_references` references whatever the audit's size. A larger audit
    therefore helps by holding more references at the first candidate while it
    is smaller than that, and beyond it only by starting at a stricter candidate,
    whose assumed error must be low enough for that many references to reject
    it. The size is doubled, then bisected, and the size returned is one at which
    the first candidate is rejected with probability ``NEEDED_POWER`` under the
    assumption. ``None`` when no candidate's assumed error is below ``alpha``,
    or when none is low enough for an audit of every annotation to do it.
    """
    thresholds, rates = _assumed_error_rates(conf, errors, all_conf)
    largest = all_conf.size
    if rates.min() >= alpha or conf.size >= largest:
        return None

    def certifies(size: int) -> bool:
        t = float(candidate_thresholds(all_conf, size, alpha, delta, n_candidates)[0])
        n = math.floor(size * float(np.mean(all_conf >= t)))
        # The most errors among n that still reject, then the chance of no more.
        critical = int(stats.binom.ppf(delta, n, alpha))
        while critical >= 0 and stats.binom.cdf(critical, n, alpha) > delta:
            critical -= 1
        rate = float(rates[np.searchsorted(thresholds, t)])
        return critical >= 0 and bool(stats.binom.cdf(critical, n, rate) >= NEEDED_POWER)

    low, high = max(1, conf.size), min(max(2, conf.size * 2), largest)
    while not certifies(high):
        if high >= largest:
            return None
        low, high = high, min(high * 2, largest)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if certifies(middle) else (middle, high)
    return high


def _assumed_error_rates(
    conf: FloatArray, errors: npt.NDArray[np.bool_], all_conf: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """The distinct unlabelled confidences (ascending) and the error rate ``_needed``
    assumes among the annotations each accepts as a threshold."""
    thresholds = np.unique(all_conf)
    order = np.argsort(-conf, kind="stable")
    cumulative_errors = np.r_[0, np.cumsum(errors[order])]
    accepted = np.searchsorted(-conf[order], -thresholds, side="right")
    shown = np.where(
        accepted > 0,
        np.maximum(cumulative_errors[accepted], 0.5) / np.maximum(accepted, 1),
        1.0,
    )
    # Ascending thresholds run from the most permissive: a running minimum gives
    # each threshold the lowest rate shown at it or at a more permissive one.
    return thresholds, np.minimum.accumulate(shown)


def certify(
    *,
    audit_confidence: Sequence[float] | npt.ArrayLike,
    audit_error: Sequence[bool] | npt.ArrayLike,
    all_confidence: Sequence[float] | npt.ArrayLike,
    alpha: float,
    delta: float,
    n_candidates: int = 50,
) -> Certificate:
    """The most permissive threshold certified to keep the error among accepted <= alpha.

    ``audit_confidence`` and ``audit_error`` describe the blind audit references (a
    uniform random sample of the run's annotations, ``True`` = the machine was
    wrong); ``all_confidence`` holds every annotation's confidence, audited or not.
    See the module docstring for the procedure.
    """
    _check_level("alpha", alpha)
    _check_level("delta", delta)
    if n_candidates < 1:
        raise ValueError("n_candidates must be at least 1")
    conf = _floats(audit_confidence, "audit_confidence")
    errors = np.asarray(audit_error, dtype=bool).ravel()
    all_conf = _floats(all_confidence, "all_confidence")
    if conf.size != errors.size:
        raise ValueError(
            f"audit_confidence and audit_error differ in length ({conf.size} and {errors.size})"
        )
    if all_conf.size == 0:
        raise ValueError("all_confidence is empty: there is nothing to accept")
    best: tuple[float, int, int, float] | None = None
    tested = 0
    for t in candidate_thresholds(all_conf, conf.size, alpha, delta, n_candidates):
        tested += 1
        accepted = conf >= t
        n, k = int(accepted.sum()), int(errors[accepted].sum())
        if n == 0 or stats.binom.cdf(k, n, alpha) > delta:
            break
        best = (float(t), n, k, clopper_pearson_upper(k, n, delta))
    if best is None:
        return Certificate(
            threshold=None, alpha=alpha, delta=delta, n_references=int(conf.size),
            n_accepted_references=0, errors_accepted=0, upper_bound=None, coverage=0.0,
            method=METHOD, needed=_needed(conf, errors, all_conf, alpha, delta, n_candidates),
            n_candidates_tested=tested,
        )  # fmt: skip
    threshold, n, k, bound = best
    return Certificate(
        threshold=threshold, alpha=alpha, delta=delta, n_references=int(conf.size),
        n_accepted_references=n, errors_accepted=k, upper_bound=bound,
        coverage=float(np.mean(all_conf >= threshold)), method=METHOD, needed=None,
        n_candidates_tested=tested,
    )  # fmt: skip
