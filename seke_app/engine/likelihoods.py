"""The likelihoods the offline annotator fuses known labels with, and how they are fitted.

SEKE completes the grains a dataset does not label from those it does
(``fusion.py``). For the offline annotator that needs, per expression ``e``:

* **P(VA | e)**, a density of (valence, arousal). It is a mixture of one to
  ``MAX_COMPONENTS`` full-covariance Gaussians per expression, fitted by
  expectation-maximisation on the AffectNet training faces (``affectnet_train``:
  never ``affectnet_val``, which the completion benchmark scores). One Gaussian
  per class does not fit those labels: each class has a tight core (the neutral
  faces crowd at the origin) and a wide halo of less typical faces, and a single
  Gaussian spreads its mass over both. The number of components of each class
  is the one with the lowest Bayesian information criterion (BIC), with at
  least ``POINTS_PER_COMPONENT`` faces per component, so a small class gets one
  Gaussian. In cross-validation on ``affectnet_train`` the mixtures name the
  expression from VA alone more often than one Gaussian per class does
  (``bench/completion.py`` prints both). A variance floor of ``VARIANCE_FLOOR`` is added to every
  component's covariance: the labels repeat exact values (several neutral faces
  at (0, 0)), on which maximum likelihood would shrink a component to zero
  width. The fit is seeded, so it is reproducible.
* **The VA head's statistics**, for combining the network's VA head with a
  known expression's VA distribution (``HeadModel``).
* **The image's weight** in the fusion (``image_weight``).
* **P(AUs | e)**, the product over the known AUs of Bernoulli terms with the CK+
  occurrence rates that ``knowledge.AU_RATES`` already holds (in-sample on
  ``ckplus_facs``, which they were counted on). They are not refitted here; see
  ``au_probability`` for their smoothing.

The head's statistics and the image weight are measured on the AffectNet
training faces that the training script held out (``held_out_indices``), which
the network never learnt from, so that they describe its outputs on unseen
faces.

The fitted numbers (not the labels) are stored in ``likelihoods.json`` next to
this module, with their source, the number of faces per class, the weights they
were measured with, the date and the command that recomputes them::

    python manage.py seke_fit_likelihoods --data ../shared/data

Rerun it after retraining the offline network: the head's statistics and the
image weight belong to one set of weights. The engine reads the file once
(``default_likelihoods``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from seke_app.engine.knowledge import AU_RATES, AU_SAMPLE_SIZES
from seke_app.engine.vocab import EXPRESSIONS

FloatArray = npt.NDArray[np.float64]

FORMAT = "seke-fusion-likelihoods/1"
LIKELIHOODS_PATH = Path(__file__).with_name("likelihoods.json")
FIT_COMMAND = "python manage.py seke_fit_likelihoods --data ../shared/data"

# Mixture fitting (see the module docstring).
MAX_COMPONENTS = 4
POINTS_PER_COMPONENT = 10
VARIANCE_FLOOR = 1e-3
EM_RESTARTS = 3
EM_ITERATIONS = 300
EM_TOLERANCE = 1e-8
FIT_SEED = 20250101
# The image weights tried, from almost ignoring the image to doubling its say.
IMAGE_WEIGHTS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 41))
# Digits kept in the JSON file.
DIGITS = 6

# The held-out shares of the training script's ``load_data``, in the order it
# splits its sources (``seke_app/engine/offline/train.py``).
HELD_OUT_SHARES: tuple[tuple[str, float], ...] = (
    ("ferplus_train", 0.10),
    ("affectnet_train", 0.15),
)


# --- The fitted objects ---------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One Gaussian of a VA mixture: its weight, mean and covariance (V then A)."""

    weight: float
    mean: tuple[float, float]
    covariance: tuple[tuple[float, float], tuple[float, float]]

    def log_density(self, valence: float | None, arousal: float | None) -> float:
        """log N of the given components; a missing one is integrated out (its marginal)."""
        axes = [i for i, x in enumerate((valence, arousal)) if x is not None]
        if not axes:
            return 0.0
        x = np.array([(valence, arousal)[i] for i in axes], dtype=np.float64)
        mean = np.array([self.mean[i] for i in axes])
        cov = np.array([[self.covariance[i][j] for j in axes] for i in axes])
        diff = x - mean
        _, logdet = np.linalg.slogdet(cov)
        quad = float(diff @ np.linalg.solve(cov, diff))
        return -0.5 * (quad + float(logdet) + len(axes) * math.log(2 * math.pi))


@dataclass(frozen=True)
class VAMixture:
    """P(valence, arousal | expression): a Gaussian mixture fitted on ``n`` faces."""

    components: tuple[Component, ...]
    n: int

    def log_density(self, valence: float | None, arousal: float | None) -> float:
        """log P(VA | e); with only valence (or arousal) given, that component's marginal."""
        terms = [math.log(c.weight) + c.log_density(valence, arousal) for c in self.components]
        top = max(terms)
        return top + math.log(sum(math.exp(t - top) for t in terms))

    def mean(self) -> tuple[float, float]:
        """The mixture's mean, the expression's mean VA."""
        v = sum(c.weight * c.mean[0] for c in self.components)
        a = sum(c.weight * c.mean[1] for c in self.components)
        return v, a


@dataclass(frozen=True)
class HeadModel:
    """How the network's VA head relates to the true VA of faces of a known expression.

    Given the expression ``e``, the true VA ``t`` and the head's output ``h`` are
    modelled as jointly Gaussian: ``t`` has the expression's mean ``mu_e`` (the
    mean of its VA mixture), ``h`` has a mean ``offsets[e]`` of its own, and their
    deviations from those means have one covariance, pooled over expressions.
    The best estimate of ``t`` is then the conditional mean::

        t_hat = mu_e + gain @ (h - offsets[e]),   gain = C_th @ inv(C_hh)

    which is the precision-weighted combination of the class distribution with
    the head's reading, once the head's own bias and scale are allowed for. Its
    uncertainty is ``residual_sd``. The head is far from unbiased: it shrinks
    towards the middle of the scale, by a different amount for each expression
    (figures in ``bench/README.md``, "completion.py"), so treating its raw output as a
    measurement of ``t`` with its error variance would pull every estimate
    towards the middle. Its variance (``C_hh``, and ``C_th`` with the truth)
    is measured on the held-out training faces, which the network never learnt
    from: on the faces it trained on, its error is much smaller than on any new
    face. The spread of the head across test-time views is part of that
    variance; each sample applies the conditional mean to its own view, so the
    views' spread reaches SV-UAMC as the samples' spread.
    """

    offsets: dict[str, tuple[float, float]]
    gain: tuple[tuple[float, float], tuple[float, float]]
    residual_sd: tuple[float, float]
    n: int

    def estimate(
        self, mean: tuple[float, float], expression: str, head: npt.ArrayLike
    ) -> tuple[float, float]:
        """The conditional mean of the true VA given the expression's ``mean`` and the head."""
        offset = self.offsets.get(expression)
        if offset is None:
            return mean
        deviation = np.asarray(head, dtype=np.float64) - np.asarray(offset)
        adjusted = np.asarray(mean) + np.asarray(self.gain) @ deviation
        return float(adjusted[0]), float(adjusted[1])


@dataclass(frozen=True)
class Likelihoods:
    """Everything the fusion needs that is fitted on data (see the module docstring)."""

    va: dict[str, VAMixture]
    head: HeadModel
    image_weight: float
    metadata: dict[str, Any]

    def va_log_likelihood(
        self, expression: str, valence: float | None, arousal: float | None
    ) -> float:
        mixture = self.va.get(expression)
        if mixture is None:
            raise ValueError(f"no VA likelihood was fitted for {expression!r}")
        return mixture.log_density(valence, arousal)

    def va_given_expression(self, expression: str, head: npt.ArrayLike) -> tuple[float, float]:
        """The VA estimate for a face of known ``expression`` whose head reads ``head``."""
        mixture = self.va.get(expression)
        if mixture is None:
            raise ValueError(f"no VA likelihood was fitted for {expression!r}")
        return self.head.estimate(mixture.mean(), expression, head)

    # --- JSON ---

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "metadata": self.metadata,
            "va": {e: _mixture_json(m) for e, m in self.va.items()},
            "head": {
                "offsets": {e: _rounded(o) for e, o in self.head.offsets.items()},
                "gain": [_rounded(row) for row in self.head.gain],
                "residual_sd": _rounded(self.head.residual_sd),
                "n": self.head.n,
            },
            "image_weight": self.image_weight,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Likelihoods:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"unknown likelihoods format {data.get('format')!r}; expected {FORMAT!r}"
            )
        head = data["head"]
        return cls(
            va={e: _mixture(m) for e, m in data["va"].items()},
            head=HeadModel(
                offsets={e: _pair(o) for e, o in head["offsets"].items()},
                gain=(_pair(head["gain"][0]), _pair(head["gain"][1])),
                residual_sd=_pair(head["residual_sd"]),
                n=int(head["n"]),
            ),
            image_weight=float(data["image_weight"]),
            metadata=dict(data.get("metadata", {})),
        )

    @classmethod
    def load(cls, path: Path | None = None) -> Likelihoods:
        path = LIKELIHOODS_PATH if path is None else path
        return cls.from_json(json.loads(path.read_text()))


@cache
def default_likelihoods() -> Likelihoods:
    """The shipped likelihoods, read once per process."""
    return Likelihoods.load()


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), DIGITS) for v in values]


def _pair(values: Sequence[Any] | npt.NDArray[Any]) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def _mixture_json(mixture: VAMixture) -> dict[str, Any]:
    return {
        "n": mixture.n,
        "components": [
            {
                "weight": round(c.weight, DIGITS),
                "mean": _rounded(c.mean),
                "covariance": [_rounded(row) for row in c.covariance],
            }
            for c in mixture.components
        ],
    }


def _mixture(data: Mapping[str, Any]) -> VAMixture:
    components = tuple(
        Component(
            weight=float(c["weight"]),
            mean=_pair(c["mean"]),
            covariance=(_pair(c["covariance"][0]), _pair(c["covariance"][1])),
        )
        for c in data["components"]
    )
    return VAMixture(components, int(data["n"]))


# --- AU likelihood -----------------------------------------------------------------------


def au_probability(expression: str, au: int) -> float:
    """P(AU active | expression), smoothed so that no rate is exactly 0 or 1.

    CK+ counts ``k`` frames with the AU among the ``n`` frames of the expression
    (``knowledge.AU_RATES`` times ``AU_SAMPLE_SIZES``); the probability is
    Laplace's rule of succession, ``(k + 1) / (n + 2)``, the posterior mean under
    a uniform prior. A rate of 0 or 1 would make one contrary AU rule an
    expression out whatever the image shows (an AU never coded in 57 neutral
    onset frames gets 1/59 instead), while a rate from many frames moves little.
    AUs CK+ does not code (none of SEKE's vocabularies has one) count as unseen
    in the expression's frames.
    """
    n = AU_SAMPLE_SIZES[expression]
    k = round(AU_RATES[expression].get(au, 0.0) * n)
    return (k + 1) / (n + 2)


# --- Fitting -----------------------------------------------------------------------------


def _log_gaussians(points: FloatArray, means: FloatArray, covs: FloatArray) -> FloatArray:
    """(n, k) log densities of every point under every component."""
    out = np.empty((len(points), len(means)))
    for j, (mean, cov) in enumerate(zip(means, covs, strict=True)):
        diff = points - mean
        _, logdet = np.linalg.slogdet(cov)
        quad = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
        out[:, j] = -0.5 * (quad + logdet + 2 * math.log(2 * math.pi))
    return out


def _logsumexp(values: FloatArray) -> FloatArray:
    top = values.max(axis=1, keepdims=True)
    summed: FloatArray = top[:, 0] + np.log(np.exp(values - top).sum(axis=1))
    return summed


def _seed_means(points: FloatArray, k: int, rng: np.random.Generator) -> FloatArray:
    """k-means++ seeding: each further mean is a point drawn by squared distance."""
    means = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min([((points - m) ** 2).sum(axis=1) for m in means], axis=0)
        total = d2.sum()
        index = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
        means.append(points[index])
    return np.array(means)


def _em(points: FloatArray, k: int, rng: np.random.Generator) -> tuple[float, VAMixture]:
    """One EM run from a k-means++ start; returns the log-likelihood and the mixture."""
    floor = VARIANCE_FLOOR * np.eye(2)
    means = _seed_means(points, k, rng)
    covs = np.array([np.cov(points.T, bias=True) + floor] * k)
    weights = np.full(k, 1.0 / k)
    previous = -math.inf
    for _ in range(EM_ITERATIONS):
        joint = _log_gaussians(points, means, covs) + np.log(weights)
        total = _logsumexp(joint)
        loglik = float(total.sum())
        resp = np.exp(joint - total[:, None])
        counts = resp.sum(axis=0) + 1e-12
        weights = counts / len(points)
        means = (resp.T @ points) / counts[:, None]
        for j in range(k):
            diff = points - means[j]
            covs[j] = (resp[:, j, None] * diff).T @ diff / counts[j] + floor
        if loglik - previous < EM_TOLERANCE * len(points):
            break
        previous = loglik
    final = float(_logsumexp(_log_gaussians(points, means, covs) + np.log(weights)).sum())
    components = tuple(
        Component(float(w), _pair(m), (_pair(c[0]), _pair(c[1])))
        for w, m, c in zip(weights, means, covs, strict=True)
    )
    return final, VAMixture(components, len(points))


def fit_mixture(points: npt.ArrayLike, seed: int = FIT_SEED) -> VAMixture:
    """The BIC-chosen Gaussian mixture of (valence, arousal) points (module docstring)."""
    data = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(data) == 0:
        raise ValueError("a VA likelihood needs at least one face")
    rng = np.random.default_rng(seed)
    most = max(1, min(MAX_COMPONENTS, len(data) // POINTS_PER_COMPONENT))
    best: tuple[float, VAMixture] | None = None
    for k in range(1, most + 1):
        runs = [_em(data, k, rng) for _ in range(EM_RESTARTS if k > 1 else 1)]
        loglik, mixture = max(runs, key=lambda run: run[0])
        bic = -2 * loglik + (6 * k - 1) * math.log(len(data))
        if best is None or bic < best[0]:
            best = (bic, mixture)
    assert best is not None
    return best[1]


def fit_va(rows: Sequence[tuple[str, float, float]]) -> dict[str, VAMixture]:
    """One mixture per expression of (expression, valence, arousal) rows, in EXPRESSIONS order."""
    by_class: dict[str, list[tuple[float, float]]] = {}
    for expression, valence, arousal in rows:
        by_class.setdefault(expression, []).append((valence, arousal))
    return {e: fit_mixture(by_class[e]) for e in EXPRESSIONS if e in by_class}


def fit_head(
    expressions: Sequence[str],
    truth: npt.ArrayLike,
    head: npt.ArrayLike,
    means: Mapping[str, tuple[float, float]],
) -> HeadModel:
    """The head's per-expression offsets and pooled gain (``HeadModel``) on held-out faces."""
    t = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    h = np.asarray(head, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(expressions)
    offsets = {e: _pair(h[labels == e].mean(axis=0)) for e in EXPRESSIONS if (labels == e).any()}
    t_dev = t - np.array([means[e] for e in labels])
    h_dev = h - np.array([offsets[e] for e in labels])
    n = len(t)
    c_th = t_dev.T @ h_dev / max(n, 1)
    c_hh = h_dev.T @ h_dev / max(n, 1)
    # With fewer faces than unknowns the pooled covariance says nothing: no gain.
    gain = c_th @ np.linalg.inv(c_hh + 1e-9 * np.eye(2)) if n > 4 else np.zeros((2, 2))
    residual = t_dev - h_dev @ gain.T
    residual_sd = np.sqrt((residual**2).mean(axis=0)) if n else np.zeros(2)
    return HeadModel(offsets, (_pair(gain[0]), _pair(gain[1])), _pair(residual_sd), n)


def fused_log_posterior(
    image_probs: npt.ArrayLike, log_likelihoods: npt.ArrayLike, weight: float
) -> FloatArray:
    """Row-wise log of ``p_image ** weight * exp(log_likelihoods)``, normalised."""
    logp = weight * np.log(np.clip(np.asarray(image_probs, dtype=np.float64), 1e-12, 1.0))
    logp = logp + np.asarray(log_likelihoods, dtype=np.float64)
    normalised: FloatArray = logp - _logsumexp(np.atleast_2d(logp))[:, None]
    return normalised


def fit_image_weight(
    image_probs: npt.ArrayLike, log_likelihoods: npt.ArrayLike, labels: Sequence[int]
) -> float:
    """The weight of the image that minimises the fused posterior's negative log-likelihood.

    The fusion multiplies the network's probabilities by the known grains'
    likelihoods as if they were independent given the expression. They are not:
    an AffectNet annotator chose the face's valence and arousal looking at the
    same face the network reads, so the product counts part of one piece of
    evidence twice. Raising the network's probabilities to a weight below 1
    allows for that; the weight is the one under which the fused posterior
    best predicts the true expressions of the held-out training faces
    (``IMAGE_WEIGHTS``, first of equals). The likelihoods given here must not
    have been fitted on those faces.
    """
    index = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(index))
    scores = []
    for weight in IMAGE_WEIGHTS:
        posterior = fused_log_posterior(image_probs, log_likelihoods, weight)
        scores.append(float(-posterior[rows, index].mean()))
    return IMAGE_WEIGHTS[int(np.argmin(scores))]


def held_out_indices(
    labels: Mapping[str, Sequence[str]], seed: int
) -> dict[str, npt.NDArray[np.int64]]:
    """The rows of each training set that the training script held out.

    It draws, with one generator seeded with ``seed``, a permutation of each class
    of ``ferplus_train`` and then of ``affectnet_train`` (classes in sorted order
    of their index in ``EXPRESSIONS``) and holds out the first 10 % and 15 % of
    each (at least one face). Repeating those draws here, from the two
    manifests' expression columns alone, gives the same faces.
    """
    rng = np.random.default_rng(seed)
    held: dict[str, npt.NDArray[np.int64]] = {}
    for dataset, share in HELD_OUT_SHARES:
        codes = np.array([EXPRESSIONS.index(e) for e in labels[dataset]], dtype=np.int64)
        chosen: list[int] = []
        for code in np.unique(codes):
            members = rng.permutation(np.flatnonzero(codes == code))
            chosen += members[: max(1, round(len(members) * share))].tolist()
        held[dataset] = np.array(sorted(chosen), dtype=np.int64)
    return held


def fit_likelihoods(
    va_rows: Sequence[tuple[str, float, float]],
    held_out: Sequence[int],
    image_probs: npt.ArrayLike,
    head: npt.ArrayLike,
    metadata: Mapping[str, Any],
) -> Likelihoods:
    """Fit everything from the AffectNet training rows and the network's held-out outputs.

    ``va_rows`` are all the training faces' (expression, valence, arousal);
    ``held_out`` the indices of the faces the network did not train on, and
    ``image_probs`` (n, 8) and ``head`` (n, 2) its deterministic outputs on them,
    in the same order. The VA mixtures that are shipped use every face; the image
    weight is chosen with mixtures refitted without the held-out faces, so that
    no held-out face's own label is in the likelihood it is scored with.
    """
    va = fit_va(va_rows)
    held_rows = [va_rows[i] for i in held_out]
    held_set = set(held_out)
    rest = fit_va([row for i, row in enumerate(va_rows) if i not in held_set])
    expressions = [e for e, _, _ in held_rows]
    truth = [(v, a) for _, v, a in held_rows]
    weight = 1.0
    if held_rows:
        log_lik = [[_log_or_floor(rest, e, v, a) for e in EXPRESSIONS] for _, v, a in held_rows]
        labels = [EXPRESSIONS.index(e) for e in expressions]
        weight = fit_image_weight(image_probs, log_lik, labels)
    means = {e: m.mean() for e, m in va.items()}
    return Likelihoods(
        va=va,
        head=fit_head(expressions, truth, head, means),
        image_weight=weight,
        metadata=dict(metadata),
    )


def _log_or_floor(mixtures: Mapping[str, VAMixture], e: str, v: float, a: float) -> float:
    # A class absent from the refit (possible only on tiny sets) explains nothing.
    mixture = mixtures.get(e)
    return mixture.log_density(v, a) if mixture is not None else -1e6
