"""The emotion knowledge: tables, consistency, likelihoods, sampling, recomputation, text."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from seke_app.engine import knowledge
from seke_app.engine.knowledge import (
    AU_DESCRIPTIONS,
    AU_RATES,
    EXPRESSION_DEFINITIONS,
    PROTOTYPES,
    VA_PRIORS,
    consistency,
    expression_log_likelihoods,
    knowledge_text,
    recompute_au_rates,
    recompute_va_priors,
    sample_aus,
    sample_va,
)
from seke_app.engine.vocab import AU_NAMES, EXPRESSIONS, FEID_AUS, Vocabulary

FEID = Vocabulary()
RAF_DB = Vocabulary(expressions=EXPRESSIONS[:7])
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _aus(*active: int) -> dict[int, bool]:
    return {au: au in active for au in FEID_AUS}


def test_it_has_every_table_for_every_expression() -> None:
    for expression in EXPRESSIONS:
        assert expression in PROTOTYPES
        assert expression in EXPRESSION_DEFINITIONS
        assert VA_PRIORS[expression].n == 175
        assert 0.05 < VA_PRIORS[expression].valence_sd < 0.25
        assert set(AU_RATES[expression]) == set(AU_NAMES)
    assert PROTOTYPES["happiness"] == (6, 12)
    assert PROTOTYPES["neutral"] == ()


def test_it_describes_every_au() -> None:
    assert set(AU_DESCRIPTIONS) == set(AU_NAMES)


def test_it_finds_a_textbook_smile_consistent() -> None:
    result = consistency("happiness", 0.7, 0.1, _aus(6, 12, 25))

    assert result.score > 0.95
    assert result.reasons == []


def test_it_accepts_a_smile_without_au6_or_parted_lips() -> None:
    # A variant of the prototype: CK+'s posed smiles always show AU6 and AU25, others not.
    result = consistency("happiness", 0.6, 0.2, _aus(12))

    assert result.score > 0.95
    assert result.reasons == []


def test_it_flags_happiness_without_au12_and_with_negative_valence() -> None:
    result = consistency("happiness", -0.6, 0.1, _aus())

    assert result.score < 0.05
    assert result.va_score < 0.05
    assert result.au_score < 0.1
    assert any(r.startswith("AU12 absent but happiness") for r in result.reasons)
    assert "valence -0.60 is far from happiness (mean +0.68)" in result.reasons


def test_it_flags_sadness_with_positive_valence() -> None:
    result = consistency("sadness", 0.8, -0.2, None)

    assert result.score < 0.05
    assert result.au_score == 1.0
    assert "valence +0.80 is far from sadness (mean -0.61)" in result.reasons
    assert "valence and arousal fit happiness better than sadness" in result.reasons


def test_it_flags_an_au_that_is_rare_for_the_expression() -> None:
    result = consistency("neutral", 0.0, 0.0, _aus(6, 12))

    assert result.au_score < 0.5
    assert any(r.startswith("AU12 present but rare in neutral") for r in result.reasons)


def test_it_scores_a_triple_without_va_or_aus_as_consistent() -> None:
    result = consistency("fear", None, None, None)

    assert result.score == 1.0
    assert result.reasons == []


def test_it_rejects_an_expression_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="contempt"):
        consistency("contempt", 0.0, 0.0, None, RAF_DB)
    with pytest.raises(ValueError):
        sample_aus("joy", np.random.default_rng(0))


def test_it_ranks_happiness_first_for_a_smile() -> None:
    scores = expression_log_likelihoods(0.7, None, {6: True, 12: True})

    assert max(scores, key=lambda e: scores[e]) == "happiness"
    assert set(scores) == set(EXPRESSIONS)


def test_it_ranks_only_the_vocabulary_expressions() -> None:
    assert set(expression_log_likelihoods(-0.5, 0.6, None, RAF_DB)) == set(EXPRESSIONS[:7])


def test_it_samples_aus_reproducibly_within_the_vocabulary() -> None:
    disfa = Vocabulary.named("disfa12")

    first = sample_aus("surprise", np.random.default_rng(7), disfa)
    again = sample_aus("surprise", np.random.default_rng(7), disfa)

    assert first == again
    assert list(first) == list(disfa.aus)


def test_it_samples_aus_from_the_rates() -> None:
    rng = np.random.default_rng(1)
    draws = [sample_aus("happiness", rng) for _ in range(200)]

    assert all(d[12] for d in draws)  # AU12 in every CK+ happiness frame
    assert not any(d[9] for d in draws)  # AU9 in none
    assert not any(any(sample_aus("neutral", rng).values()) for _ in range(50))


def test_it_samples_va_reproducibly_and_in_range() -> None:
    first = [sample_va("fear", np.random.default_rng(3)) for _ in range(3)]
    rng = np.random.default_rng(11)
    many = np.array([sample_va("happiness", rng) for _ in range(2000)])

    assert first[0] == first[1] == first[2]
    assert (np.abs(many) <= 1.0).all()
    assert many[:, 0].mean() == pytest.approx(0.68, abs=0.03)


def test_it_recomputes_va_priors_from_rows() -> None:
    rows = [
        {"expression": "happiness", "valence": "0.5", "arousal": "0.1"},
        {"expression": "happiness", "valence": "0.7", "arousal": "0.3"},
        {"expression": "sadness", "valence": "-0.4", "arousal": "-0.2"},
        {"expression": "sadness", "valence": "", "arousal": ""},
    ]

    priors = recompute_va_priors(rows)

    assert priors["happiness"].valence == pytest.approx(0.6)
    assert priors["happiness"].arousal == pytest.approx(0.2)
    # Sample standard deviation of (0.5, 0.7): sqrt(0.02 / 1).
    assert priors["happiness"].valence_sd == pytest.approx(0.141421, abs=1e-6)
    assert priors["happiness"].n == 2
    assert priors["sadness"].n == 1
    assert priors["sadness"].valence_sd == 0.0


def test_it_recomputes_au_rates_from_rows() -> None:
    rows = [
        {"expression": "anger", "au_4": "1", "au_23": "1"},
        {"expression": "anger", "au_4": "1", "au_23": "0"},
        {"expression": "anger", "au_4": "0", "au_23": "0"},
        {"expression": "anger", "au_4": "1", "au_23": "1"},
        {"expression": "anger", "au_4": "", "au_23": ""},
        {"expression": "neutral", "au_4": "", "au_23": ""},
    ]

    rates = recompute_au_rates(rows)

    assert rates["anger"] == {4: 0.75, 23: 0.5}
    assert rates["neutral"] == {4: 0.0, 23: 0.0}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared data is not beside the project")
def test_it_matches_the_shared_data() -> None:
    def rows(name: str) -> list[dict[str, str]]:
        with (SHARED_DATA / name / "manifest.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))

    assert recompute_au_rates(rows("ckplus_facs")) == AU_RATES
    for expression, prior in recompute_va_priors(rows("affectnet_val")).items():
        stored = VA_PRIORS[expression]
        assert prior.n == stored.n
        assert prior.valence == pytest.approx(stored.valence, abs=5e-5)
        assert prior.arousal == pytest.approx(stored.arousal, abs=5e-5)
        assert prior.valence_sd == pytest.approx(stored.valence_sd, abs=5e-5)
        assert prior.arousal_sd == pytest.approx(stored.arousal_sd, abs=5e-5)


def test_it_writes_knowledge_for_the_vocabulary() -> None:
    disfa = Vocabulary.named("disfa12", expressions=("neutral", "happiness", "disgust"))

    text = knowledge_text(disfa)

    for au in disfa.aus:
        assert f"AU{au} {AU_NAMES[au]}" in text
    assert "AU7 lid tightener" not in text
    assert "- anger:" not in text
    assert "+0.68" in text
    assert knowledge_text(disfa) == text


def test_it_mentions_every_feid_au_by_default() -> None:
    text = knowledge_text()

    for au in FEID_AUS:
        assert f"AU{au} {AU_NAMES[au]}" in text
    assert text.index("Action units first") < text.index("Then the expression")


def test_it_recomputes_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    affectnet = tmp_path / "affectnet.csv"
    affectnet.write_text("file,expression,valence,arousal\na.jpg,fear,-0.1,0.7\n")
    ckplus = tmp_path / "ckplus.csv"
    ckplus.write_text("file,expression,au_1,au_4\nb.png,fear,1,0\n")

    knowledge.main([str(affectnet), str(ckplus)])

    out = capsys.readouterr().out
    assert "fear: -0.1000 0.7000 0.0000 0.0000 1" in out
    assert "fear: 1 {1: 1}" in out


def test_it_rejects_a_va_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="valence nan"):
        consistency("neutral", float("nan"), 0.0, None)
    with pytest.raises(ValueError, match="arousal inf"):
        expression_log_likelihoods(0.0, float("inf"), None)
