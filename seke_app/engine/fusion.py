"""Knowledge fusion: the offline annotator's image evidence combined with the known grains.

A source dataset labels some grains of an image (AffectNet: expression and VA;
CK+: AUs); SEKE predicts the others *given* them. For the offline annotator
that is Bayes' rule over the expressions ``e`` of the run's vocabulary:

    P(e | image, VA, AUs)  ∝  P_CNN(e | image) ** w  ·  P(VA | e)  ·  P(AUs | e)

* ``P_CNN`` is the network's softmax (over the vocabulary, after any
  recalibration, at the run's temperature);
* ``P(VA | e)`` is the expression's VA mixture fitted on the AffectNet training
  faces (``likelihoods.VAMixture``);
* ``P(AUs | e)`` is the product over the known AUs of the vocabulary of
  ``p if active else 1 - p``, with ``p`` the smoothed CK+ rate
  (``likelihoods.au_probability``);
* ``w`` is the image's weight (``Likelihoods.image_weight``), fitted on
  held-out training faces because the image and a human's VA label are not
  independent evidence (``likelihoods.fit_image_weight``). It applies only when
  a grain is fused: with nothing known the posterior is the network's own
  softmax, as before.

Only the grains the request's ``KnownLabels`` give enter. A known expression
is a certainty: its posterior puts all mass on it.

Partial VA. A known valence without arousal (or the reverse) is used, not
refused: its likelihood is the marginal of the expression's mixture, which is
exact for a Gaussian mixture (each component's marginal is the Gaussian of
that axis). The missing axis is estimated as if no VA were known, and the
known one is carried as it is. SV-UAMC itself counts VA as given only when both
values are (``types.KnownLabels``), so such an answer's VA stays predicted.

Given a known expression, VA is the VA head's reading combined with that
expression's VA distribution (``likelihoods.HeadModel``), and the AUs are those
the expression's CK+ rates make at least as likely as not. Known AUs are carried as
given; the AUs of the vocabulary that the labels do not code follow the
expression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from seke_app.engine.likelihoods import Likelihoods, au_probability, fused_log_posterior
from seke_app.engine.types import KnownLabels
from seke_app.engine.vocab import Vocabulary

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class KnownEvidence:
    """The known labels of one image that the fusion can use for a vocabulary."""

    expression: str | None = None
    valence: float | None = None
    arousal: float | None = None
    aus: dict[int, bool] = field(default_factory=dict)

    @classmethod
    def of(cls, known: KnownLabels, vocabulary: Vocabulary) -> KnownEvidence:
        """The usable part of ``known``: an expression of the vocabulary, finite VA
        values, and the coded AUs of the vocabulary."""
        for name, value in (("valence", known.valence), ("arousal", known.arousal)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"the known {name} {value} is not a finite number")
        expression = known.expression if known.expression in vocabulary.expressions else None
        aus = {au: bool(on) for au, on in (known.aus or {}).items() if au in vocabulary.aus}
        return cls(expression, known.valence, known.arousal, aus)

    @property
    def has_va(self) -> bool:
        return self.valence is not None or self.arousal is not None

    def fused(self) -> tuple[str, ...]:
        """What the expression posterior is fused with, in words, for the evidence."""
        names = []
        if self.valence is not None and self.arousal is not None:
            names.append("valence/arousal")
        elif self.valence is not None:
            names.append("valence (arousal unknown)")
        elif self.arousal is not None:
            names.append("arousal (valence unknown)")
        if self.aus:
            names.append(f"{len(self.aus)} AUs")
        return tuple(names)


def known_log_likelihoods(
    evidence: KnownEvidence, vocabulary: Vocabulary, likelihoods: Likelihoods
) -> FloatArray:
    """log P(known VA, known AUs | e) for every expression of the vocabulary."""
    out = np.zeros(len(vocabulary.expressions))
    for i, expression in enumerate(vocabulary.expressions):
        if evidence.has_va:
            out[i] += likelihoods.va_log_likelihood(expression, evidence.valence, evidence.arousal)
        for au, on in evidence.aus.items():
            p = au_probability(expression, au)
            out[i] += math.log(p if on else 1.0 - p)
    return out


def expression_posterior(
    image_probs: npt.ArrayLike,
    evidence: KnownEvidence,
    vocabulary: Vocabulary,
    likelihoods: Likelihoods,
) -> FloatArray:
    """P(e | image, known grains) for each row of ``image_probs`` (module docstring).

    ``image_probs`` holds one row per view, over the vocabulary's expressions.
    """
    probs = np.atleast_2d(np.asarray(image_probs, dtype=np.float64))
    if evidence.expression is not None:
        certain = np.zeros_like(probs)
        certain[:, vocabulary.expressions.index(evidence.expression)] = 1.0
        return certain
    if not evidence.has_va and not evidence.aus:
        return probs
    log_lik = known_log_likelihoods(evidence, vocabulary, likelihoods)
    posterior: FloatArray = np.exp(
        fused_log_posterior(probs, log_lik[None, :], likelihoods.image_weight)
    )
    return posterior


def va_estimate(
    head: npt.ArrayLike, evidence: KnownEvidence, likelihoods: Likelihoods
) -> tuple[float, float]:
    """Valence and arousal for one view: known values as given, the rest estimated.

    The estimate is the head's reading, combined with the known expression's VA
    distribution when the expression is known; both are clipped to [-1, 1].
    """
    reading = np.asarray(head, dtype=np.float64)
    valence, arousal = float(reading[0]), float(reading[1])
    if evidence.expression is not None:
        valence, arousal = likelihoods.va_given_expression(evidence.expression, reading)
    if evidence.valence is not None:
        valence = evidence.valence
    if evidence.arousal is not None:
        arousal = evidence.arousal
    return _clip(valence), _clip(arousal)


def likely_aus(expression: str, vocabulary: Vocabulary) -> dict[int, bool]:
    """The vocabulary's AUs that the expression's CK+ rates make at least as likely as not.

    The smoothed rate is at least 0.5 exactly when the raw one is, so this is the
    rule of the CK+ rates themselves.
    """
    return {au: au_probability(expression, au) >= 0.5 for au in vocabulary.aus}


def aus_for(expression: str, evidence: KnownEvidence, vocabulary: Vocabulary) -> dict[int, bool]:
    """The known AUs as given; every other AU of the vocabulary follows ``expression``."""
    return likely_aus(expression, vocabulary) | evidence.aus


def _clip(value: float) -> float:
    return min(1.0, max(-1.0, value))
