"""Reading the expression's soft vote from token log-probabilities."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from seke_app.engine.llm.backend import OpenAIBackend
from seke_app.engine.llm.client import ClientConfig, VLLMClient, VLLMError
from seke_app.engine.llm.logprobs import (
    VERIFICATION_PATH,
    TokenLogprob,
    expression_probs,
    read_expression,
    value_start,
)
from seke_app.engine.schema import answer_to_schema_json
from seke_app.engine.types import AnnotationRequest, Answer, VerificationRequest
from seke_app.engine.uamc import UAMCParams, run_uamc
from seke_app.engine.vocab import EXPRESSIONS, FEID_AUS, Vocabulary
from seke_app.runs.backends import backend_for
from seke_app.runs.prompts import prompt_version_active
from tests.fake_openai import FIXED_ANSWER, FakeOpenAI, token_logprobs


def _tok(token: str, *alternatives: tuple[str, float]) -> TokenLogprob:
    """A token whose top alternatives have the given probabilities (not logs)."""
    top = tuple((t, math.log(p)) for t, p in alternatives) or ((token, 0.0),)
    chosen = dict(top).get(token, 0.0)
    return TokenLogprob(token, chosen, top)


def _spelled(*tokens: str | TokenLogprob) -> list[TokenLogprob]:
    return [t if isinstance(t, TokenLogprob) else _tok(t) for t in tokens]


def test_it_reads_the_value_token_with_a_leading_quote() -> None:
    tokens = _spelled(
        '{"ev',
        'idence":{"ex',
        'pression":"',
        'smile"},"expr',
        'ession":',
        _tok('"hap', ('"hap', 0.6), ('"sad', 0.3), ('"neu', 0.1)),
        'piness"}',
    )
    probs = expression_probs(tokens, EXPRESSIONS, "happiness")
    assert probs is not None
    assert probs["happiness"] == pytest.approx(0.6)
    assert probs["sadness"] == pytest.approx(0.3)
    assert probs["neutral"] == pytest.approx(0.1)
    assert probs["anger"] == 0.0


def test_it_reads_the_value_token_after_a_quote_token() -> None:
    tokens = _spelled(
        '{"exp',
        "ression",
        '": "',
        _tok("ang", ("ang", 0.5), ("dis", 0.5)),
        'er"}',
    )
    probs = expression_probs(tokens, EXPRESSIONS, "anger")
    assert probs == {e: 0.5 if e in ("anger", "disgust") else 0.0 for e in EXPRESSIONS}


def test_case_and_spaces_inside_the_value_do_not_matter() -> None:
    tokens = _spelled('{"expression": "', _tok(" Fe", (" Fe", 0.75), ("Sur", 0.25)), 'ar"}')
    probs = expression_probs(tokens, EXPRESSIONS, "fear")
    assert probs is not None
    assert probs["fear"] == pytest.approx(0.75)
    assert probs["surprise"] == pytest.approx(0.25)


def test_alternatives_without_the_opening_quote_are_not_counted() -> None:
    # The chosen token carries the quote; an alternative without it would not
    # start a string value, so it says nothing about the class.
    tokens = _spelled('{"expression":', _tok('"con', ('"con', 0.6), ("sad", 0.4)), 'tempt"}')
    reading = read_expression(tokens, EXPRESSIONS, "contempt")
    assert reading.probs is not None
    assert reading.probs["contempt"] == pytest.approx(1.0)
    assert reading.mass == pytest.approx(0.6)


def test_it_finds_the_answer_under_a_verification_reply() -> None:
    reply = {
        "verdicts": {"expression": {"verdict": "confirm"}},
        "answer": {"evidence": {"expression": "sad eyes"}, "expression": "sadness"},
    }
    text = json.dumps(reply)
    start = value_start(text, VERIFICATION_PATH)
    assert start is not None
    assert text[start:].startswith('sadness"')
    assert value_start(text, ("expression",)) is None


def test_a_shared_first_token_is_resolved_by_the_next_token_of_the_reply() -> None:
    tokens = _spelled(
        '{"expression":"',
        _tok("s", ("s", 0.8), ("h", 0.2)),
        _tok("ur", ("ur", 0.75), ("ad", 0.25)),
        'prise"}',
    )
    reading = read_expression(tokens, EXPRESSIONS, "surprise")
    assert reading.probs is not None
    assert reading.probs["surprise"] == pytest.approx(0.6)
    assert reading.probs["sadness"] == pytest.approx(0.2)
    assert reading.probs["happiness"] == pytest.approx(0.2)
    assert reading.split == ()


def test_a_shared_token_the_reply_did_not_take_is_split_evenly_and_reported() -> None:
    tokens = _spelled('{"expression":"', _tok("h", ("h", 0.6), ("s", 0.4)), 'appiness"}')
    reading = read_expression(tokens, EXPRESSIONS, "happiness")
    assert reading.probs is not None
    assert reading.probs["sadness"] == pytest.approx(0.2)
    assert reading.probs["surprise"] == pytest.approx(0.2)
    assert reading.split == (("sadness", "surprise"),)


def test_a_label_that_is_a_prefix_of_another_is_told_apart_by_the_closing_quote() -> None:
    classes = ("sad", "sadness", "happy")
    tokens = _spelled(
        '{"expression":"',
        _tok("sad", ("sad", 0.9), ("happy", 0.1)),
        _tok('"}', ('"}', 0.7), ("ness", 0.3)),
    )
    probs = expression_probs(tokens, classes, "sad")
    assert probs is not None
    assert probs["sad"] == pytest.approx(0.63)
    assert probs["sadness"] == pytest.approx(0.27)
    assert probs["happy"] == pytest.approx(0.1)


def test_a_shared_token_at_the_end_of_the_reply_is_split_evenly() -> None:
    classes = ("sad", "sadness")
    tokens = _spelled('{"expression":"', _tok("sad", ("sad", 1.0)))
    reading = read_expression(tokens, classes, "sad")
    assert reading.probs == {"sad": 0.5, "sadness": 0.5}
    assert reading.split == (("sad", "sadness"),)


def test_too_little_mass_on_the_vocabulary_gives_no_soft_vote() -> None:
    tokens = _spelled('{"expression":"', _tok("joy", ("joy", 0.6), ("ang", 0.4)), 'ful"}')
    reading = read_expression(tokens, EXPRESSIONS, "anger")
    assert reading.probs is None
    assert reading.mass == pytest.approx(0.4)
    assert "names a class" in (reading.reason or "")


def test_a_reading_that_gives_the_replys_own_expression_nothing_is_dropped() -> None:
    tokens = _spelled('{"expression":"', _tok("ang", ("ang", 1.0)), 'er"}')
    reading = read_expression(tokens, EXPRESSIONS, "fear")
    assert reading.probs is None
    assert "'fear' has no probability" in (reading.reason or "")


@pytest.mark.parametrize(
    "tokens",
    [
        None,
        [],
        _spelled('{"valence": 0.5}'),
        _spelled('{"expression": null}'),
        _spelled("no JSON here"),
    ],
)
def test_no_position_or_no_logprobs_give_no_soft_vote(tokens: list[TokenLogprob] | None) -> None:
    assert expression_probs(tokens, EXPRESSIONS, "happiness") is None


def test_it_reads_every_tokenisation_of_the_fake_server() -> None:
    content = json.dumps(FIXED_ANSWER)
    wanted = {"happiness": 0.55, "surprise": 0.3, "sadness": 0.1, "fear": 0.05}
    for seed in range(40):
        entries = token_logprobs(
            content, {k: math.log(v) for k, v in wanted.items()}, 20, seed=seed
        )
        tokens = [
            TokenLogprob(
                e["token"],
                e["logprob"],
                tuple((t["token"], t["logprob"]) for t in e["top_logprobs"]),
            )
            for e in entries
        ]
        assert "".join(t.token for t in tokens) == content
        assert any(0 < len(t.token) < 4 for t in tokens)
        reading = read_expression(tokens, EXPRESSIONS, "happiness")
        assert reading.probs is not None
        probs = reading.probs
        # A one-character token "s" names sadness and surprise alike: split evenly.
        exact = wanted if not reading.split else {"happiness": 0.55, "fear": 0.05}
        assert reading.split in ((), (("sadness", "surprise"),))
        for name, p in exact.items():
            assert probs[name] == pytest.approx(p, abs=1e-5), seed
        assert probs["sadness"] + probs["surprise"] == pytest.approx(0.4)


# -- the client, the backend and SV-UAMC against the fake server -------------------

KEY = "sk-test-logprobs"
SOFT = {"happiness": 0.7, "surprise": 0.2, "fear": 0.1}


def _log(probs: dict[str, float]) -> dict[str, float]:
    return {name: math.log(p) for name, p in probs.items()}


def _client(server: FakeOpenAI, **overrides: Any) -> VLLMClient:
    config = ClientConfig(base_url=server.base_url, api_key=KEY, model="gpt-4o", **overrides)
    return VLLMClient(config, sleep=lambda seconds: None)


def _face() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 160, 140)).save(buffer, format="PNG")
    return buffer.getvalue()


def _answer(expression: str) -> Answer:
    # Every answer has the same VA and AUs, so that only the expression is in doubt.
    return Answer(expression, 0.3, 0.4, {au: au in (1, 2) for au in FEID_AUS})


def _answers(*expressions: str) -> Callable[[dict[str, Any], int], str]:
    def responder(body: dict[str, Any], index: int) -> str:
        answer = _answer(expressions[index % len(expressions)])
        if body["response_format"]["json_schema"]["name"] == "seke_verification":
            verdicts = {g: {"verdict": "confirm"} for g in ("aus", "expression", "va")}
            return json.dumps({"verdicts": verdicts, "answer": answer_to_schema_json(answer)})
        return json.dumps(answer_to_schema_json(answer))

    return responder


def _messages() -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "Answer in JSON."}]}]


def test_the_client_asks_for_logprobs_and_keeps_the_tokens(fake_openai: FakeOpenAI) -> None:
    fake_openai.expression_logprobs = _log(SOFT)
    with _client(fake_openai, top_logprobs=5) as client:
        result = client.chat(_messages(), n=2)

    body = fake_openai.requests[0].body
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 5
    for choice in result.choices:
        assert choice.tokens is not None
        assert "".join(t.token for t in choice.tokens) == choice.text
        assert all(len(t.top) <= 5 for t in choice.tokens)
        assert expression_probs(choice.tokens, EXPRESSIONS, "happiness") == pytest.approx(
            {e: SOFT.get(e, 0.0) for e in EXPRESSIONS}
        )


def test_the_client_can_be_told_not_to_ask_for_logprobs(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai, top_logprobs=0) as client:
        result = client.chat(_messages())

    assert "logprobs" not in fake_openai.requests[0].body
    assert "top_logprobs" not in fake_openai.requests[0].body
    assert result.choices[0].tokens is None
    assert client.top_logprobs == 0


def test_the_client_steps_down_when_logprobs_are_rejected_and_remembers(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.reject_logprobs = True
    with _client(fake_openai) as client:
        first = client.chat(_messages(), n=2)
        second = client.chat(_messages())

    asked = [r.body.get("logprobs") for r in fake_openai.requests]
    assert asked == [True, None, None]
    assert client.top_logprobs == 0
    assert first.usage.requests == 1 and second.usage.requests == 1
    assert len(first.choices) == 2
    assert all(c.tokens is None for c in first.choices + second.choices)


def test_an_endpoint_that_ignores_logprobs_answers_as_before(fake_openai: FakeOpenAI) -> None:
    fake_openai.ignore_logprobs = True
    fake_openai.expression_logprobs = _log(SOFT)
    with _client(fake_openai) as client:
        client.chat(_messages())
        result = client.chat(_messages())

    assert [r.body.get("logprobs") for r in fake_openai.requests] == [True, True]
    assert result.choices[0].tokens is None
    assert result.choices[0].text is not None


def test_another_bad_request_is_still_an_error(fake_openai: FakeOpenAI) -> None:
    fake_openai.script("400")
    with _client(fake_openai) as client, pytest.raises(VLLMError) as caught:
        client.chat(_messages())

    assert caught.value.status == 400
    assert client.top_logprobs == 10


def test_the_backend_gives_samples_and_the_verification_their_probabilities(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.responder = _answers("happiness", "surprise")
    fake_openai.expression_logprobs = _log(SOFT)
    request = AnnotationRequest(image_bytes=_face(), vocabulary=Vocabulary())
    with OpenAIBackend(_client(fake_openai), model="gpt-4o") as backend:
        samples = backend.sample(request, 2, 1.0)
        verification = backend.verify(
            VerificationRequest(request, _answer("happiness"), "all agree")
        )

    expected = {e: pytest.approx(SOFT.get(e, 0.0)) for e in EXPRESSIONS}
    assert [s.answer.expression for s in samples if s.answer] == ["happiness", "surprise"]
    assert [s.expression_probs for s in samples] == [expected, expected]
    assert verification.expression_probs == expected


def test_without_logprobs_samples_stay_whole_votes(fake_openai: FakeOpenAI) -> None:
    fake_openai.responder = _answers("happiness")
    fake_openai.expression_logprobs = _log(SOFT)
    fake_openai.ignore_logprobs = True
    request = AnnotationRequest(image_bytes=_face(), vocabulary=Vocabulary())
    with OpenAIBackend(_client(fake_openai), model="gpt-4o") as backend:
        samples = backend.sample(request, 2, 1.0)

    assert [s.expression_probs for s in samples] == [None, None]


def test_confident_logprobs_settle_a_split_sooner_and_grade_the_verification(
    fake_openai: FakeOpenAI,
) -> None:
    # The draws split 3/1 in every round; the model puts 0.99 on happiness each time.
    fake_openai.responder = _answers("happiness", "happiness", "happiness", "surprise")
    request = AnnotationRequest(image_bytes=_face(), vocabulary=Vocabulary())
    params = UAMCParams(k0=4, kmax=10, step=4)
    results = {}
    for logprobs in (False, True):
        fake_openai.ignore_logprobs = not logprobs
        fake_openai.expression_logprobs = _log({"happiness": 0.99, "surprise": 0.01})
        with OpenAIBackend(_client(fake_openai), model="gpt-4o") as backend:
            results[logprobs] = run_uamc(backend, request, params)

    hard, soft = results[False], results[True]
    assert hard.answer is not None and soft.answer is not None
    assert hard.answer.expression == soft.answer.expression == "happiness"
    assert soft.n_samples < hard.n_samples
    assert soft.uncertainty.expression.soft and not hard.uncertainty.expression.soft
    assert soft.confidence.components["expression"]["verification"] == pytest.approx(0.99)
    assert hard.confidence.components["expression"]["verification"] == 1.0


@pytest.mark.django_db
@pytest.mark.parametrize("setting", [0, 5])
def test_a_runs_client_asks_for_the_alternatives_the_setting_gives(
    settings: Any, setting: int
) -> None:
    settings.OPENAI_API_KEY = "sk-test-key"
    settings.OPENAI_TOP_LOGPROBS = setting
    backend = backend_for("openai", "gpt-4o", prompt_version_active(), check_only=True)
    try:
        assert isinstance(backend, OpenAIBackend)
        assert backend.client.top_logprobs == setting
    finally:
        backend.close()


def test_confident_logprobs_settle_a_unanimous_round_that_whole_votes_cannot(
    fake_openai: FakeOpenAI,
) -> None:
    # Two whole votes of two leave the plurality posterior under 0.7, so whole
    # votes draw a second round; two soft votes of 0.95 settle the margin at once.
    fake_openai.responder = _answers("happiness")
    request = AnnotationRequest(image_bytes=_face(), vocabulary=Vocabulary())
    params = UAMCParams(k0=2)
    results = {}
    for logprobs in (False, True):
        fake_openai.ignore_logprobs = not logprobs
        fake_openai.expression_logprobs = _log({"happiness": 0.95, "neutral": 0.05})
        with OpenAIBackend(_client(fake_openai), model="gpt-4o") as backend:
            results[logprobs] = run_uamc(backend, request, params)

    hard, soft = results[False], results[True]
    assert hard.rounds == [2, 2] and soft.rounds == [2]
    assert soft.n_samples < hard.n_samples
    assert hard.uncertainty.expression.margin is None
    assert soft.uncertainty.expression.margin is not None
    assert soft.answer is not None and soft.answer.expression == "happiness"
    stored = [s["probs_source"] for s in soft.to_json()["samples"]]
    assert stored == ["logprobs"] * 3
    assert [s["probs_source"] for s in hard.to_json()["samples"]] == [None] * 5
