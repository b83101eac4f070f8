"""Every sentence an export generates reads correctly: each template with each label.

FEID answers, FEID and FEAB questions and the dataset card are built from fixed
templates and a closed vocabulary; these tests render all of them and check the
text against the rules a reader notices: the indefinite article agrees with the
next word, numbers agree with their nouns, and no sentence has a hole in it.
"""

from __future__ import annotations

import itertools
import re

import pytest

from seke_app.engine.formats import feab, feid
from seke_app.engine.formats.card import CardStats, card_markdown
from seke_app.engine.formats.records import CuratedRecord, Provenance
from seke_app.engine.formats.words import count, indefinite_article
from seke_app.engine.vocab import AU_NAMES, AU_VOCABULARIES, EXPRESSIONS

HUMAN = Provenance(source="human", reviewer="ann")
# Below, at and above each edge of the three levels, and the ends of the scale.
VA_VALUES = (-1.0, -0.5, -0.1001, -0.1, -0.05, 0.0, 0.05, 0.1, 0.1001, 0.5, 1.0)

A_BEFORE_VOWEL = re.compile(r"\b[Aa] ([aeiou]\w*)")
AN_BEFORE_CONSONANT = re.compile(r"\b[Aa]n ([b-df-hj-np-tv-z]\w*)")
HOLES = ("  ", " ,", " .", "()", "[]", "{}", "None", "nan", ",,", "..", ": .")


def reads_well(text: str) -> list[str]:
    """What is wrong with a generated sentence (or several), in words; [] when nothing."""
    problems = []
    if not text[:1].isupper():
        problems.append("does not start with a capital letter")
    if not text.endswith((".", "?")):
        problems.append("does not end a sentence")
    problems += [f"'a {w}'" for w in A_BEFORE_VOWEL.findall(text) if indefinite_article(w) == "an"]
    problems += [
        f"'an {w}'" for w in AN_BEFORE_CONSONANT.findall(text) if indefinite_article(w) == "a"
    ]
    problems += [f"has {hole!r}" for hole in HOLES if hole in text]
    return problems


def record(**values: object) -> CuratedRecord:
    base: dict[str, object] = {"image": "00000000-0000-0000-0000-000000000001", "name": "f.png"}
    base["file"] = "faces/f.png"
    base.update(values)
    base["provenance"] = {g: HUMAN for g in ("expression", "va", "aus")}
    return CuratedRecord(**base)  # type: ignore[arg-type]


def test_the_rules_catch_what_they_are_for() -> None:
    assert reads_well("Valence is 0.5: a unpleasant, calm state.") == ["'a unpleasant'"]
    assert reads_well("It is an calm state.") == ["'an calm'"]
    assert reads_well("an hour.") == ["does not start with a capital letter"]
    assert reads_well("A unit, an hour, an unpleasant state.") == []
    assert "has '()'" in reads_well("Active action units: AU1 ().")


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_it_states_every_expression_in_a_sentence(expression: str) -> None:
    text = feid.answer_text(record(expression=expression), "expression")
    assert reads_well(text) == [] and expression in text


def test_it_states_every_valence_and_arousal_level_grammatically() -> None:
    seen = set()
    for valence, arousal in itertools.product(VA_VALUES, VA_VALUES):
        text = feid.answer_text(record(valence=valence, arousal=arousal), "va")
        assert reads_well(text) == [], (valence, arousal, text)
        words = text.split(": ", 1)[1]
        seen.add(words)
    # Every valence word meets every arousal word, each with its own article.
    assert len(seen) == len(feid.VALENCE_WORDS) * len(feid.AROUSAL_WORDS)
    assert "an unpleasant, activated state." in seen and "a pleasant, calm state." in seen
    assert "a neutral, moderately activated state." in seen


@pytest.mark.parametrize("vocabulary", sorted(AU_VOCABULARIES))
def test_it_names_every_au_of_every_vocabulary(vocabulary: str) -> None:
    aus = AU_VOCABULARIES[vocabulary]
    codings = [{au: False for au in aus}, {au: True for au in aus}]
    codings += [{au: au == one for au in aus} for one in aus]
    codings += [{aus[0]: True}]
    for coding in codings:
        text = feid.answer_text(record(aus=coding), "aus")
        assert reads_well(text) == [], text
        for au, on in coding.items():
            assert f"AU{au}" in text
            assert (f"AU{au} ({AU_NAMES[au]})" in text) == on
    question = feab.question_text("aus", list(aus))
    assert reads_well(question) == [] and all(AU_NAMES[au] in question for au in aus)


IMPERATIVES = (
    "Identify",
    "Classify",
    "Estimate",
    "Rate",
    "Give",
    "List",
    "Look",
    "Describe",
    "Report",
)


def test_every_question_of_every_pool_asks_or_tells() -> None:
    for grain, pool in feid.QUESTIONS.items():
        for question in pool:
            assert reads_well(question) == [], question
            for sentence in re.split(r"(?<=[.?])\s+", question):
                asks = sentence.endswith("?")
                assert asks or sentence.split()[0] in IMPERATIVES, sentence
        assert reads_well(feab.question_text(grain, [1, 12])) == []


def test_every_feid_line_carries_sentences_that_read_well() -> None:
    full = record(expression="anger", valence=-0.6, arousal=0.7, aus={4: True, 12: False})
    for fmt in feid.FORMATS:
        for _question, answer in feid.turns(full, seed=3):
            assert reads_well(answer) == [], (fmt, answer)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_the_card_counts_agree_with_their_nouns(n: int) -> None:
    stats = CardStats()
    for i in range(n):
        stats.add(record(image=f"00000000-0000-0000-0000-00000000000{i}", valence=0.2, arousal=0.1))
    card = card_markdown(stats, title="t", summary={})
    assert f"\n{count(n, 'image')}.\n" in card
    assert "1 images" not in card
    if n:
        assert f"over {count(n, 'image')}." in card


def test_counts_and_articles() -> None:
    assert [count(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert count(1, "reference") == "1 reference"
    assert [indefinite_article(w) for w in ("unpleasant", "neutral", "activated", "unit")] == [
        "an",
        "a",
        "an",
        "a",
    ]
