"""Emotion knowledge: how expressions, valence-arousal (VA) and action units (AUs) relate.

The facts come from three sources, cited where they are encoded:

* FACS action units (Ekman, Friesen & Hager, 2002) and the EMFACS expression
  prototypes (Ekman & Friesen), with their common variants;
* mean and spread of valence and arousal per expression, measured on AffectNet's
  manually annotated validation set (Mollahosseini, Hasani & Mahoor, 2017);
* how often each AU occurs per expression, measured on the FACS-coded peak frames of
  the Extended Cohn-Kanade dataset, CK+ (Lucey et al., 2010).

The measured tables are constants below, recomputed from the shared data with::

    python -m seke_app.engine.knowledge \\
        ../shared/data/affectnet_val/manifest.csv ../shared/data/ckplus_facs/manifest.csv

The knowledge is used in three places: as text in the prompt (``knowledge_text``), as
the consistency score of a candidate (expression, VA, AUs) triple (``consistency``) and
as the prior of the offline annotator (``expression_log_likelihoods``, ``sample_aus``,
``sample_va``).

Consistency score (this project's own definition)
-------------------------------------------------
Both grains are scored by a likelihood ratio: how likely the observation is under the
claimed expression ``e``, relative to the expression of the vocabulary under which it
is most likely. A score of 1 means no other expression explains the observation
better; the score falls towards 0 as another expression explains it better.

* VA. Each expression's prior is an axis-aligned Gaussian with the AffectNet mean and
  standard deviation. Because a single estimate of V or A is itself noisy, the prior
  is convolved with a Gaussian measurement kernel of width ``VA_NOISE_SD`` (0.2):
  ``sd_eff = sqrt(sd**2 + VA_NOISE_SD**2)``. With ``l_va(e) = sum over the given
  components of log N(x; mean_e, sd_eff_e)``::

      va_score = exp(l_va(e) - max_e' l_va(e'))

* AUs. AU ``i`` is active under ``e`` with probability ``p = max(rate, floor)``, where
  ``rate`` is the CK+ occurrence rate (``BASE_AU_RATE`` for AUs CK+ does not code) and
  ``floor`` is ``PROTOTYPE_FLOOR`` (0.3) when ``i`` belongs to the EMFACS prototype of
  ``e``, else 0. CK+ frames are posed at their peak, so an AU can occur in every CK+
  frame of an expression that often shows without it (AU6 and AU25 in happiness); unless
  ``i`` is in every EMFACS form of ``e`` (prototype and variants), ``p`` is therefore
  capped at ``OPTIONAL_AU_CAP`` (0.7) in the likelihood, so that a closed-mouth smile
  without AU6 still fits happiness. A coder of AUs (human or model) errs with probability
  ``AU_ERROR_RATE`` (0.05) either way, so an AU is observed active with probability
  ``q = eps + (1 - 2 * eps) * p``. Treating AUs as independent overcounts evidence,
  since AUs co-occur (AU6 with AU12, AU1 with AU2), so the log-likelihood is tempered
  by ``AU_TEMPERING`` (0.5)::

      l_au(e) = AU_TEMPERING * sum_i log(q_i if active_i else 1 - q_i)
      au_score = exp(l_au(e) - max_e' l_au(e'))

* Combined: the weighted geometric mean
  ``score = va_score ** VA_WEIGHT * au_score ** (1 - VA_WEIGHT)`` with ``VA_WEIGHT``
  0.5, so that one clearly inconsistent grain pulls the score down whatever the other
  says. A grain that is not given scores 1 and is left out of the mean.

``expression_log_likelihoods`` returns ``l_va(e) + l_au(e)`` per expression, the same
quantities the scores are built from, so tie-breaking and the offline annotator's
prior agree with the consistency score.

The reasons name the concrete conflicts: a valence or arousal more than two effective
standard deviations from the expression's mean; an absent AU that every EMFACS form of
the expression shares (prototype and variants) and CK+ shows usually (``p >= 0.5``),
such as AU12 for happiness, whereas AU6 is not required since a smile without it is a
variant; an active AU that is rare for the expression (``p < 0.1``) and in none of its
forms; and, when a grain scores under 0.5, the expression that explains it better.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seke_app.engine.vocab import AU_NAMES, CKPLUS_AUS, DEFAULT_VOCABULARY, Vocabulary

# Width of the measurement kernel added to every VA prior (see the module docstring).
VA_NOISE_SD = 0.2
# Probability that an AU coder reports an AU wrongly, in either direction.
AU_ERROR_RATE = 0.05
# Tempering of the independent-AU log-likelihood, for AUs that co-occur.
AU_TEMPERING = 0.5
# Minimum occurrence probability of an AU of the expression's EMFACS prototype.
PROTOTYPE_FLOOR = 0.3
# Likelihood cap of an AU the expression can do without (see the module docstring).
OPTIONAL_AU_CAP = 0.7
# Occurrence probability of an AU for which CK+ has no rate.
BASE_AU_RATE = 0.05
# Weight of the VA score in the combined geometric mean; the AU score gets the rest.
VA_WEIGHT = 0.5

# Thresholds for the reasons given in words.
_FAR_Z = 2.0
_USUAL_AU = 0.5
_RARE_AU = 0.1
_POOR_FIT = 0.5

# --- FACS ------------------------------------------------------------------------------

# What moves on the face for each AU, in the project's own words, following the
# appearance changes described in the FACS manual (Ekman, Friesen & Hager, 2002).
AU_DESCRIPTIONS: dict[int, str] = {
    1: "the inner ends of the eyebrows are pulled up, slanting the brows and wrinkling "
    "the middle of the forehead",
    2: "the outer parts of the eyebrows are pulled up, arching the brows and wrinkling "
    "the sides of the forehead",
    4: "the eyebrows are pulled down and together, with vertical furrows between them",
    5: "the upper eyelid is raised so that the eye looks wide and white may show above the iris",
    6: "the cheeks are lifted, bagging the skin below the eyes, narrowing the eyes from "
    "below and making crow's-feet wrinkles at the outer corners",
    7: "the eyelids tighten and the lower lid rises and straightens, narrowing the eye "
    "without lifting the cheek",
    9: "the skin along the nose wrinkles upwards, the nostrils flare and the inner "
    "brows may be drawn down",
    10: "the upper lip is lifted straight up, deepening the furrow beside the nose and "
    "possibly showing the upper teeth",
    11: "the middle of the furrow running from the nose to the lip corners is pulled up "
    "and deepened, with little lift of the lip",
    12: "the lip corners are pulled up and back at an angle, as in a smile",
    13: "the lip corners are pulled up sharply into narrow points and the cheeks puff out",
    14: "the lip corners are tightened and drawn inwards, making dimples or bulges beside them",
    15: "the lip corners are pulled down, so that the line of the mouth turns downwards",
    16: "the lower lip is pulled down and slightly outwards, possibly showing the lower teeth",
    17: "the chin is pushed up, wrinkling the chin skin and pushing the lower lip up",
    18: "the lips are pushed forward and drawn together, as if to kiss",
    20: "the lip corners are pulled sideways, stretching and flattening the mouth",
    21: "the skin of the neck tightens and vertical cords stand out",
    23: "the lips tighten and narrow, so that less of their red part shows",
    24: "the lips are pressed firmly together, bulging the skin around them",
    25: "the lips part, while the teeth may stay together",
    26: "the jaw drops and relaxes so that the mouth falls open",
    27: "the mouth is stretched wide open by actively pulling the jaw far down",
    28: "the lips are sucked into the mouth over the teeth",
}

# --- Expressions -----------------------------------------------------------------------

EXPRESSION_DEFINITIONS: dict[str, str] = {
    "neutral": "no emotion shown: the face is at rest and no action unit is clearly active",
    "happiness": "enjoyment or amusement: the lip corners are pulled up into a smile; a "
    "felt smile also raises the cheeks and wrinkles the outer eye corners",
    "sadness": "loss or disappointment: the inner brows rise and draw together, the lip "
    "corners turn down and the chin often pushes up",
    "surprise": "a reaction to something sudden: the brows rise high, the eyes open wide "
    "and the jaw drops; brief, and either pleasant or unpleasant",
    "fear": "a reaction to threat: the brows rise and draw together, the upper lids rise, "
    "the lower lids tense and the lips stretch sideways, often with the mouth open",
    "disgust": "revulsion at something offensive: the nose wrinkles and the upper lip "
    "rises; the lower lip is lowered or pushed up by the chin",
    "anger": "hostility or frustration: the brows lower and draw together, the eyes glare "
    "with raised upper and tightened lower lids, and the lips press or tighten",
    "contempt": "scorn or superiority: one lip corner tightens and rises slightly, a "
    "one-sided smirk",
}

# EMFACS prototypes (Ekman & Friesen). Disgust's AU16 and the one-sidedness of
# contempt's AUs cannot be expressed in every vocabulary; the variants below cover that.
PROTOTYPES: dict[str, tuple[int, ...]] = {
    "neutral": (),
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "disgust": (9, 15, 16),
    "anger": (4, 5, 7, 23),
    "contempt": (12, 14),
}

# Common variants of the EMFACS prototypes, following the alternatives EMFACS lists
# (for example a smile without AU6, surprise with AU27 instead of AU26, disgust through
# AU10 instead of AU9).
PROTOTYPE_VARIANTS: dict[str, tuple[tuple[int, ...], ...]] = {
    "neutral": (),
    "happiness": ((12,),),
    "sadness": ((1, 4, 15, 17), (1, 4, 11, 15), (6, 15)),
    "surprise": ((1, 2, 5, 27), (1, 2, 26), (5, 26)),
    "fear": ((1, 2, 4, 5, 20, 25), (1, 2, 4, 5, 25), (5, 20, 25)),
    "disgust": ((9, 10, 17), (9, 17), (10, 17), (10, 16, 25)),
    "anger": ((4, 5, 7, 17, 23), (4, 5, 7, 17, 24), (4, 5, 7, 24), (4, 5, 7, 10, 23, 25)),
    "contempt": ((14,),),
}

# Binary AU codes lose the side of a one-sided action, which defines contempt.
_CONTEMPT_NOTE = "contempt's AU12 and AU14 are one-sided; the AU codes here do not record the side"

# Which sign of valence each expression takes, read off the AffectNet priors below:
# surprise is mildly positive on average but its spread covers both signs.
_VALENCE_SIGNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("positive", ("happiness",)),
    ("negative", ("sadness", "disgust", "anger", "contempt")),
    ("mildly negative", ("fear",)),
    ("either sign, mildly positive on average", ("surprise",)),
    ("near zero, with arousal near zero too", ("neutral",)),
)

# --- Measured tables -------------------------------------------------------------------


@dataclass(frozen=True)
class VAPrior:
    """Mean and sample standard deviation of valence and arousal for one expression."""

    valence: float
    arousal: float
    valence_sd: float
    arousal_sd: float
    n: int


# AffectNet validation set (Mollahosseini, Hasani & Mahoor, 2017), the project's dev
# selection of 175 images per class; means and sample (n - 1) standard deviations,
# rounded to four decimals. Recompute with the command in the module docstring.
VA_PRIORS: dict[str, VAPrior] = {
    "neutral": VAPrior(-0.0199, -0.0339, 0.1322, 0.1285, 175),
    "happiness": VAPrior(0.6846, 0.0971, 0.1581, 0.1479, 175),
    "sadness": VAPrior(-0.6095, -0.2548, 0.2392, 0.1535, 175),
    "surprise": VAPrior(0.1813, 0.7001, 0.1810, 0.1465, 175),
    "fear": VAPrior(-0.1171, 0.7432, 0.0612, 0.1855, 175),
    "disgust": VAPrior(-0.6867, 0.4503, 0.1703, 0.1089, 175),
    "anger": VAPrior(-0.4353, 0.5573, 0.1757, 0.2043, 175),
    "contempt": VAPrior(-0.5039, 0.5883, 0.2075, 0.1105, 175),
}

# CK+ (Lucey et al., 2010): number of FACS-coded peak frames per class in the project's
# dev selection, and in how many of them each AU was coded present; AUs not listed
# were never coded present. Neutral counts the sequences' onset frames, which CK+
# does not FACS-code but which show a face at rest by design, so no AU is present.
# Recompute with the command in the module docstring.
# fmt: off
_CKPLUS_AU_COUNTS: dict[str, tuple[int, dict[int, int]]] = {
    "neutral": (57, {}),
    "happiness": (34, {6: 34, 7: 4, 12: 34, 16: 1, 20: 1, 25: 34, 26: 2}),
    "sadness": (14, {1: 14, 2: 5, 4: 9, 15: 11, 17: 13, 18: 2, 23: 2, 24: 1, 26: 1}),
    "surprise": (
        42,
        {1: 41, 2: 41, 4: 1, 5: 34, 12: 2, 16: 1, 20: 1, 23: 1, 25: 42, 26: 5, 27: 37},
    ),
    "fear": (
        12,
        {1: 10, 2: 5, 4: 11, 5: 7, 7: 3, 10: 3, 11: 1, 12: 1, 14: 3, 16: 2, 17: 1,
         20: 12, 21: 1, 25: 12},
    ),
    "disgust": (
        29,
        {4: 17, 6: 8, 7: 13, 9: 28, 10: 4, 12: 2, 14: 1, 15: 1, 17: 17, 24: 3, 25: 5},
    ),
    "anger": (
        23,
        {4: 20, 5: 3, 6: 4, 7: 15, 9: 1, 12: 1, 14: 2, 15: 1, 17: 19, 18: 2, 23: 19,
         24: 16},
    ),
    "contempt": (9, {1: 1, 2: 1, 4: 1, 12: 3, 14: 8, 15: 2, 17: 2, 23: 1, 24: 2}),
}
# fmt: on

# Number of CK+ frames behind each expression's AU rates.
AU_SAMPLE_SIZES: dict[str, int] = {e: n for e, (n, _) in _CKPLUS_AU_COUNTS.items()}

# P(AU active | expression) on CK+ frames, for every AU CK+ codes.
AU_RATES: dict[str, dict[int, float]] = {
    e: {au: counts.get(au, 0) / n for au in CKPLUS_AUS}
    for e, (n, counts) in _CKPLUS_AU_COUNTS.items()
}


# --- Consistency -----------------------------------------------------------------------


@dataclass(frozen=True)
class Consistency:
    """How well one (expression, VA, AUs) triple agrees with the knowledge."""

    score: float
    va_score: float
    au_score: float
    reasons: list[str]


def consistency(
    expression: str,
    valence: float | None,
    arousal: float | None,
    aus: Mapping[int, bool] | None,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
) -> Consistency:
    """Score a candidate triple against the knowledge; see the module docstring."""
    _check_expression(expression, vocabulary)
    _check_va(valence, arousal)
    va = {e: _va_log_likelihood(e, valence, arousal) for e in vocabulary.expressions}
    au = {e: _au_log_likelihood(e, aus, vocabulary) for e in vocabulary.expressions}
    va_score = _likelihood_ratio(va, expression)
    au_score = _likelihood_ratio(au, expression)
    has_va = valence is not None or arousal is not None
    has_aus = bool(_coded_aus(aus, vocabulary))
    reasons = _va_reasons(expression, valence, arousal)
    reasons += _au_reasons(expression, aus, vocabulary)
    if has_va and va_score < _POOR_FIT:
        reasons.append(_better_fit_reason("valence and arousal", va, expression))
    if has_aus and au_score < _POOR_FIT:
        reasons.append(_better_fit_reason("the AUs", au, expression))
    score = _combine(va_score if has_va else None, au_score if has_aus else None)
    return Consistency(score=score, va_score=va_score, au_score=au_score, reasons=reasons)


def expression_log_likelihoods(
    valence: float | None,
    arousal: float | None,
    aus: Mapping[int, bool] | None,
    vocabulary: Vocabulary = DEFAULT_VOCABULARY,
) -> dict[str, float]:
    """log P(VA, AUs | expression) per expression of the vocabulary (AU term tempered)."""
    _check_va(valence, arousal)
    return {
        e: _va_log_likelihood(e, valence, arousal) + _au_log_likelihood(e, aus, vocabulary)
        for e in vocabulary.expressions
    }


def _check_expression(expression: str, vocabulary: Vocabulary) -> None:
    if expression not in vocabulary.expressions:
        known = ", ".join(vocabulary.expressions)
        raise ValueError(f"expression {expression!r} is not in the vocabulary ({known})")


def _check_va(valence: float | None, arousal: float | None) -> None:
    for name, value in (("valence", valence), ("arousal", arousal)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} {value} is not a finite number")


def _effective_sd(sd: float) -> float:
    return math.hypot(sd, VA_NOISE_SD)


def _log_normal(x: float, mean: float, sd: float) -> float:
    z = (x - mean) / sd
    return -0.5 * z * z - math.log(sd) - 0.5 * math.log(2 * math.pi)


def _va_log_likelihood(expression: str, valence: float | None, arousal: float | None) -> float:
    prior = VA_PRIORS[expression]
    total = 0.0
    if valence is not None:
        total += _log_normal(valence, prior.valence, _effective_sd(prior.valence_sd))
    if arousal is not None:
        total += _log_normal(arousal, prior.arousal, _effective_sd(prior.arousal_sd))
    return total


def _au_probability(expression: str, au: int) -> float:
    """P(AU active | expression): the CK+ rate, raised to the floor for prototype AUs."""
    rate = AU_RATES.get(expression, {}).get(au, BASE_AU_RATE)
    floor = PROTOTYPE_FLOOR if au in PROTOTYPES[expression] else 0.0
    return max(rate, floor)


def _likelihood_probability(expression: str, au: int) -> float:
    """The AU's probability with the cap for AUs some form of the expression lacks."""
    p = _au_probability(expression, au)
    return p if _in_every_form(expression, au) else min(p, OPTIONAL_AU_CAP)


def _observed_probability(expression: str, au: int) -> float:
    """P(AU reported active | expression) for a coder who errs with AU_ERROR_RATE."""
    return AU_ERROR_RATE + (1 - 2 * AU_ERROR_RATE) * _likelihood_probability(expression, au)


def _coded_aus(aus: Mapping[int, bool] | None, vocabulary: Vocabulary) -> dict[int, bool]:
    """The given AUs that belong to the vocabulary; others carry no knowledge here."""
    if not aus:
        return {}
    return {au: bool(on) for au, on in aus.items() if au in vocabulary.aus}


def _au_log_likelihood(
    expression: str, aus: Mapping[int, bool] | None, vocabulary: Vocabulary
) -> float:
    total = 0.0
    for au, on in _coded_aus(aus, vocabulary).items():
        q = _observed_probability(expression, au)
        total += math.log(q if on else 1 - q)
    return AU_TEMPERING * total


def _likelihood_ratio(log_likelihoods: Mapping[str, float], expression: str) -> float:
    return math.exp(log_likelihoods[expression] - max(log_likelihoods.values()))


def _combine(va_score: float | None, au_score: float | None) -> float:
    if va_score is None:
        return 1.0 if au_score is None else au_score
    if au_score is None:
        return va_score
    return float(va_score**VA_WEIGHT * au_score ** (1 - VA_WEIGHT))


def _va_reasons(expression: str, valence: float | None, arousal: float | None) -> list[str]:
    prior = VA_PRIORS[expression]
    reasons = []
    for name, value, mean, sd in (
        ("valence", valence, prior.valence, prior.valence_sd),
        ("arousal", arousal, prior.arousal, prior.arousal_sd),
    ):
        if value is not None and abs(value - mean) > _FAR_Z * _effective_sd(sd):
            reasons.append(f"{name} {value:+.2f} is far from {expression} (mean {mean:+.2f})")
    return reasons


def _forms(expression: str) -> tuple[tuple[int, ...], ...]:
    return (PROTOTYPES[expression], *PROTOTYPE_VARIANTS[expression])


def _in_any_form(expression: str, au: int) -> bool:
    return any(au in form for form in _forms(expression))


def _in_every_form(expression: str, au: int) -> bool:
    return all(au in form for form in _forms(expression))


def _au_reasons(
    expression: str, aus: Mapping[int, bool] | None, vocabulary: Vocabulary
) -> list[str]:
    reasons = []
    for au, on in sorted(_coded_aus(aus, vocabulary).items()):
        p = _au_probability(expression, au)
        if not on and _in_every_form(expression, au) and p >= _USUAL_AU:
            reasons.append(f"AU{au} absent but {expression} ({_rate_phrase(expression, au)})")
        if on and p < _RARE_AU and not _in_any_form(expression, au):
            reasons.append(
                f"AU{au} present but rare in {expression} ({_rate_phrase(expression, au)})"
            )
    return reasons


def _rate_phrase(expression: str, au: int) -> str:
    if au not in AU_RATES.get(expression, {}):
        return "not measured on CK+"
    frames = "onset" if expression == "neutral" else "peak"
    return f"AU{au} in {AU_RATES[expression][au]:.0%} of CK+ {expression} {frames} frames"


def _better_fit_reason(grain: str, log_likelihoods: Mapping[str, float], expression: str) -> str:
    best = max(log_likelihoods, key=lambda e: log_likelihoods[e])
    return f"{grain} fit {best} better than {expression}"


# --- Sampling (the offline annotator's prior) ------------------------------------------


def sample_aus(
    expression: str, rng: np.random.Generator, vocabulary: Vocabulary = DEFAULT_VOCABULARY
) -> dict[int, bool]:
    """Draw AU occurrences for the vocabulary's AUs given the expression."""
    _check_expression(expression, vocabulary)
    draws = rng.random(len(vocabulary.aus))
    return {
        au: bool(draw < _au_probability(expression, au))
        for au, draw in zip(vocabulary.aus, draws, strict=True)
    }


def sample_va(expression: str, rng: np.random.Generator) -> tuple[float, float]:
    """Draw (valence, arousal) from the expression's AffectNet prior, clipped to [-1, 1]."""
    if expression not in VA_PRIORS:
        raise ValueError(f"unknown expression {expression!r}")
    prior = VA_PRIORS[expression]
    v, a = rng.normal([prior.valence, prior.arousal], [prior.valence_sd, prior.arousal_sd])
    return float(np.clip(v, -1.0, 1.0)), float(np.clip(a, -1.0, 1.0))


# --- Recomputing the measured tables ---------------------------------------------------


def recompute_va_priors(rows: Iterable[Mapping[str, str]]) -> dict[str, VAPrior]:
    """Mean and sample standard deviation of V and A per expression of manifest rows.

    Rows whose valence or arousal cell is empty are skipped: they carry no VA label.
    """
    values: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.get("valence", "") == "" or row.get("arousal", "") == "":
            continue
        values.setdefault(row["expression"], []).append(
            (float(row["valence"]), float(row["arousal"]))
        )
    return {e: _va_prior(np.array(pairs)) for e, pairs in sorted(values.items())}


def _va_prior(pairs: np.ndarray) -> VAPrior:
    ddof = 1 if len(pairs) > 1 else 0
    mean = pairs.mean(axis=0)
    sd = pairs.std(axis=0, ddof=ddof)
    return VAPrior(float(mean[0]), float(mean[1]), float(sd[0]), float(sd[1]), len(pairs))


def recompute_au_counts(
    rows: Iterable[Mapping[str, str]],
) -> dict[str, tuple[int, dict[int, int]]]:
    """Frames per expression and how many of them have each ``au_N`` column set to 1.

    A row with empty AU cells was not FACS-coded. It is counted as AU-free when its
    expression is neutral, because the CK+ frames labelled neutral are onset frames that
    show a face at rest, and skipped otherwise.
    """
    table: dict[str, tuple[int, dict[int, int]]] = {}
    for row in rows:
        columns = {int(k[3:]): v.strip() for k, v in row.items() if k.startswith("au_")}
        if not columns:
            continue
        if any(v == "" for v in columns.values()) and row["expression"] != "neutral":
            continue
        n, counts = table.get(row["expression"], (0, {au: 0 for au in columns}))
        for au, cell in columns.items():
            counts[au] = counts.get(au, 0) + (cell == "1")
        table[row["expression"]] = (n + 1, counts)
    return dict(sorted(table.items()))


def recompute_au_rates(rows: Iterable[Mapping[str, str]]) -> dict[str, dict[int, float]]:
    """P(AU active | expression) from manifest rows with ``au_N`` columns (0/1)."""
    return {
        e: {au: k / n for au, k in sorted(counts.items())}
        for e, (n, counts) in recompute_au_counts(rows).items()
    }


# --- The knowledge block of the prompt -------------------------------------------------


def knowledge_text(vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> str:
    """The default knowledge given to the model, for the vocabulary's labels only."""
    sections = [
        _au_section(vocabulary),
        _expression_section(vocabulary),
        _constraints_section(vocabulary),
    ]
    return "\n\n".join(sections)


def _au_section(vocabulary: Vocabulary) -> str:
    lines = ["Action units (FACS, Ekman, Friesen & Hager 2002) coded in this task:"]
    for au in vocabulary.aus:
        lines.append(f"- AU{au} {AU_NAMES[au]}: {AU_DESCRIPTIONS[au]}.")
    return "\n".join(lines)


def _expression_section(vocabulary: Vocabulary) -> str:
    lines = [
        "Expressions, their EMFACS prototypes (Ekman & Friesen), the AUs seen in at "
        "least 30% of CK+ posed peak frames, and their typical valence and arousal "
        "on AffectNet (mean ± standard deviation, scale -1 to +1):"
    ]
    for expression in vocabulary.expressions:
        lines.append(f"- {expression}: {EXPRESSION_DEFINITIONS[expression]}.")
        lines.append(f"  Prototype: {_prototype_phrase(expression, vocabulary)}.")
        lines.append(f"  Frequent AUs: {_frequent_aus_phrase(expression, vocabulary)}.")
        lines.append(f"  {_va_phrase(expression)}.")
    return "\n".join(lines)


def _aus_phrase(aus: Iterable[int], vocabulary: Vocabulary) -> str:
    inside = [f"AU{au}" for au in aus if au in vocabulary.aus]
    outside = [f"AU{au}" for au in aus if au not in vocabulary.aus]
    text = " + ".join(inside) if inside else "no coded AU"
    if outside:
        text += f" (and {', '.join(outside)}, not coded here)"
    return text


def _prototype_phrase(expression: str, vocabulary: Vocabulary) -> str:
    if not PROTOTYPES[expression]:
        return "no AU active"
    text = _aus_phrase(PROTOTYPES[expression], vocabulary)
    # A reduced vocabulary can make two variants read the same; list each text once.
    variants = list(
        dict.fromkeys(_aus_phrase(v, vocabulary) for v in PROTOTYPE_VARIANTS[expression])
    )
    if variants:
        text += "; variants: " + "; ".join(variants)
    if expression == "contempt":
        text += f"; {_CONTEMPT_NOTE}"
    return text


def _frequent_aus_phrase(expression: str, vocabulary: Vocabulary) -> str:
    rates = AU_RATES.get(expression, {})
    frequent = [
        f"AU{au} {rates[au]:.0%}"
        for au in sorted(rates, key=lambda a: (-rates[a], a))
        if rates[au] >= 0.3 and au in vocabulary.aus
    ]
    return ", ".join(frequent) if frequent else "none"


def _va_phrase(expression: str) -> str:
    prior = VA_PRIORS[expression]
    return (
        f"Valence {_level(prior.valence, 'negative', 'positive')} "
        f"({prior.valence:+.2f} ± {prior.valence_sd:.2f}), arousal "
        f"{_level(prior.arousal, 'calm', 'aroused')} "
        f"({prior.arousal:+.2f} ± {prior.arousal_sd:.2f})"
    )


def _level(value: float, low: str, high: str) -> str:
    if abs(value) < 0.1:
        return "near zero"
    strength = "clearly" if abs(value) >= 0.45 else "mildly"
    return f"{strength} {high if value > 0 else low}"


def _constraints_section(vocabulary: Vocabulary) -> str:
    lines = [
        "How the three grains constrain each other (reason from fine to coarse):",
        "1. Action units first: decide each AU from what visibly moves on the face, "
        "independently of any expression you expect.",
        "2. Then the expression: choose the one whose prototype or frequent AUs best match "
        "the active AUs; an expression without its usual AUs needs clear other evidence "
        "(for example happiness without AU12 is unlikely).",
        "3. Then valence and arousal: start from the chosen expression's typical values and "
        "adjust for intensity; stronger and more open faces (AU5, AU25, AU26, AU27) mean "
        "higher arousal, a face at rest means arousal near zero.",
        "4. Keep valence consistent with the expression: " + _valence_signs(vocabulary) + ".",
    ]
    if len(vocabulary.expressions) < len(VA_PRIORS):
        lines.append(f"Only these expressions may be used: {', '.join(vocabulary.expressions)}.")
    return "\n".join(lines)


def _valence_signs(vocabulary: Vocabulary) -> str:
    parts = []
    for sign, expressions in _VALENCE_SIGNS:
        inside = [e for e in expressions if e in vocabulary.expressions]
        if inside:
            parts.append(f"{sign} for {', '.join(inside)}")
    return "; ".join(parts)


# --- Command line: recompute the tables from the shared data ---------------------------


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _print_tables(affectnet: Path, ckplus: Path) -> None:
    print("VA_PRIORS (mean V, mean A, sd V, sd A, n):")
    for e, p in recompute_va_priors(_read_rows(affectnet)).items():
        print(f"  {e}: {p.valence:.4f} {p.arousal:.4f} {p.valence_sd:.4f} {p.arousal_sd:.4f} {p.n}")
    print("CK+ AU counts (frames, {AU: frames with the AU}):")
    for e, (n, counts) in recompute_au_counts(_read_rows(ckplus)).items():
        present = {au: k for au, k in counts.items() if k}
        print(f"  {e}: {n} {present}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Recompute SEKE's measured knowledge tables.")
    parser.add_argument("affectnet_manifest", type=Path, help="manifest.csv with valence/arousal")
    parser.add_argument("ckplus_manifest", type=Path, help="manifest.csv with au_N columns")
    args = parser.parse_args(argv)
    _print_tables(args.affectnet_manifest, args.ckplus_manifest)


if __name__ == "__main__":
    main()
