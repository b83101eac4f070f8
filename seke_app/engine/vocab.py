"""Label vocabularies: the expressions and the FACS action units SEKE speaks of."""

from __future__ import annotations

from dataclasses import dataclass

# AffectNet's eight expression classes, in the order every array in SEKE uses.
EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)

# FACS names of the action units SEKE knows (Ekman, Friesen & Hager, 2002).
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    10: "upper lip raiser",
    11: "nasolabial deepener",
    12: "lip corner puller",
    13: "sharp lip puller",
    14: "dimpler",
    15: "lip corner depressor",
    16: "lower lip depressor",
    17: "chin raiser",
    18: "lip pucker",
    20: "lip stretcher",
    21: "neck tightener",
    23: "lip tightener",
    24: "lip pressor",
    25: "lips part",
    26: "jaw drop",
    27: "mouth stretch",
    28: "lip suck",
}

# The 17 AUs of FEID: the union of the DISFA, BP4D and Aff-Wild2 AU sets.
FEID_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)
# The AUs coded in the CK+ FACS files shipped with the dataset's peak frames.
CKPLUS_AUS: tuple[int, ...] = tuple(sorted(AU_NAMES))
# DISFA's 12 AUs.
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)

AU_VOCABULARIES: dict[str, tuple[int, ...]] = {
    "feid17": FEID_AUS,
    "ckplus": CKPLUS_AUS,
    "disfa12": DISFA_AUS,
}


@dataclass(frozen=True)
class Vocabulary:
    """The labels one dataset or run works with."""

    expressions: tuple[str, ...] = EXPRESSIONS
    aus: tuple[int, ...] = FEID_AUS

    def __post_init__(self) -> None:
        unknown = [e for e in self.expressions if e not in EXPRESSIONS]
        if unknown:
            raise ValueError(f"unknown expressions: {', '.join(unknown)}")
        bad_aus = [a for a in self.aus if a not in AU_NAMES]
        if bad_aus:
            raise ValueError(f"unknown action units: {', '.join(map(str, bad_aus))}")

    @classmethod
    def named(cls, au_set: str, expressions: tuple[str, ...] = EXPRESSIONS) -> Vocabulary:
        try:
            aus = AU_VOCABULARIES[au_set]
        except KeyError:
            known = ", ".join(sorted(AU_VOCABULARIES))
            raise ValueError(f"unknown AU vocabulary {au_set!r}; known: {known}") from None
        return cls(expressions=expressions, aus=aus)


DEFAULT_VOCABULARY = Vocabulary()
