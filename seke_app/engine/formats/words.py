"""Small rules of English that the generated text follows: articles and plurals.

Every sentence an export writes is built from fixed templates and a closed
vocabulary (expressions, valence and arousal levels, AU names), so these rules
need only cover those words; ``tests/test_generated_text.py`` renders every
template with every label to keep it so.
"""

from __future__ import annotations

# Words that start with a vowel letter but a consonant sound ("a unit", "a one-off"),
# and with a consonant letter but a vowel sound ("an hour").
_CONSONANT_SOUND = ("uni", "use", "usu", "uti", "eu", "one", "once")
_VOWEL_SOUND = ("hour", "honest", "honour")


def indefinite_article(phrase: str) -> str:
    """ "a" or "an", as the phrase's first word is pronounced."""
    word = phrase.strip().lower()
    if word.startswith(_VOWEL_SOUND):
        return "an"
    if word.startswith(_CONSONANT_SOUND):
        return "a"
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def with_article(phrase: str) -> str:
    """The phrase after its indefinite article: "an unpleasant, activated state"."""
    return f"{indefinite_article(phrase)} {phrase}"


def count(n: int, singular: str, plural: str | None = None) -> str:
    """ "1 image", "2 images", "0 images"."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"
