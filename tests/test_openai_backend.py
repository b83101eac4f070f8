"""The OpenAI-compatible backend against the fake server, through the real client."""

from __future__ import annotations

import base64
import functools
import io
import json
import operator
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image, ImageDraw

from seke_app.engine.llm.backend import OpenAIBackend, split_usage
from seke_app.engine.llm.client import ClientConfig, VLLMClient, VLLMError
from seke_app.engine.schema import answer_to_schema_json
from seke_app.engine.types import (
    AnnotationRequest,
    Answer,
    KnownLabels,
    Sample,
    Usage,
    VerificationRequest,
)
from seke_app.engine.uamc import UAMCParams, run_uamc
from seke_app.engine.vocab import FEID_AUS, Vocabulary
from tests.fake_openai import FakeOpenAI, Fault, prompt_tokens_for

FEID = Vocabulary()
KEY = "sk-test-backend"
GPT_4O_PRICE = (2.50, 10.00)  # USD per 1M input and output tokens, as the client prices it


def _face_png(width: int = 96, height: int = 96) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 8, height // 16, width * 7 // 8, height * 15 // 16), outline="black")
    draw.arc((width // 3, height // 2, width * 2 // 3, height * 3 // 4), 20, 160, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _answer(expression: str, *active: int) -> Answer:
    return Answer(
        expression=expression,
        valence=0.6 if expression == "happiness" else 0.2,
        arousal=0.2 if expression == "happiness" else 0.7,
        aus={au: au in active for au in FEID_AUS},
        evidence={"aus": "seen", "expression": "so", "va": "thus"},
    )


ANSWERS = [_answer("happiness", 6, 12), _answer("surprise", 1, 2, 5, 26), _answer("happiness", 12)]


def _sampling_responder(body: dict[str, Any], index: int) -> str:
    return json.dumps(answer_to_schema_json(ANSWERS[index % len(ANSWERS)]))


def _verifying_responder(body: dict[str, Any], index: int) -> str:
    reply = {
        "verdicts": {
            "aus": {"verdict": "confirm"},
            "expression": {"verdict": "revise"},
            "va": {"verdict": "confirm"},
        },
        "answer": answer_to_schema_json(_answer("fear", 1, 2, 4, 5, 20)),
    }
    return json.dumps(reply)


@pytest.fixture
def client(fake_openai: FakeOpenAI) -> Iterator[VLLMClient]:
    fake_openai.api_key = KEY
    fake_openai.responder = _sampling_responder
    config = ClientConfig(base_url=fake_openai.base_url, api_key=KEY, model="gpt-4o")
    with VLLMClient(config, sleep=lambda seconds: None) as vllm:
        yield vllm


def _request(**changes: Any) -> AnnotationRequest:
    fields: dict[str, Any] = {"image_bytes": _face_png(), "vocabulary": FEID}
    fields.update(changes)
    return AnnotationRequest(**fields)


def _call_usage(fake: FakeOpenAI) -> Usage:
    """What the fake server billed, priced the way the client prices gpt-4o."""
    total = Usage()
    for captured in fake.requests:
        prompt = prompt_tokens_for(captured.body)
        completion = 0
        for index in range(int(captured.body.get("n") or 1)):
            completion += -(-len(fake.responder(captured.body, index)) // 4)
        cost = (prompt * GPT_4O_PRICE[0] + completion * GPT_4O_PRICE[1]) / 1_000_000
        total = total + Usage(1, prompt, completion, cost)
    return total


def _total(samples: list[Sample]) -> Usage:
    return functools.reduce(operator.add, (s.usage for s in samples), Usage())


def test_it_draws_k_samples_with_one_request(fake_openai: FakeOpenAI, client: VLLMClient) -> None:
    backend = OpenAIBackend(client, model="gpt-4o")

    samples = backend.sample(_request(), 3, 0.8)

    assert fake_openai.request_count == 1
    body = fake_openai.requests[0].body
    assert body["n"] == 3
    assert body["temperature"] == 0.8
    assert body["response_format"]["json_schema"]["name"] == "seke_answer"
    assert [s.kind for s in samples] == ["sample"] * 3
    assert [s.answer for s in samples] == ANSWERS
    assert all(s.valid and s.error is None for s in samples)
    assert backend.name == "openai"
    assert backend.model == "gpt-4o"


def test_it_attributes_the_call_usage_to_the_samples_exactly(
    fake_openai: FakeOpenAI, client: VLLMClient
) -> None:
    samples = OpenAIBackend(client, model="gpt-4o").sample(_request(), 3, 1.0)

    expected = _call_usage(fake_openai)
    assert _total(samples) == expected
    assert samples[0].usage.requests == 1
    assert [s.usage.requests for s in samples[1:]] == [0, 0]
    assert samples[1].usage.prompt_tokens == expected.prompt_tokens // 3


def test_it_sums_usage_when_the_endpoint_takes_no_n(
    fake_openai: FakeOpenAI, client: VLLMClient
) -> None:
    fake_openai.reject_n = True

    samples = OpenAIBackend(client, model="gpt-4o").sample(_request(), 3, 1.0)

    assert len(samples) == 3
    assert all(s.valid for s in samples)
    # The rejected request with n=3 is not billed; the three single requests are.
    assert fake_openai.request_count == 4
    assert _total(samples).requests == 3


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("malformed", "the reply is not JSON"),
        ("refusal", "the model refused: I'm sorry"),
        ("out_of_range", "valence 1.7 is outside [-1, 1]"),
        ("wrong_aus", "'smile' is not an AU name like 'AU12'"),
        ("length", "the reply was cut off at the token limit"),
        ("content_filter", "blocked by the endpoint's content filter"),
    ],
)
def test_it_keeps_an_invalid_reply_as_an_invalid_sample(
    fake_openai: FakeOpenAI, client: VLLMClient, fault: str, reason: str
) -> None:
    fake_openai.script(Fault(fault, choice=1))

    samples = OpenAIBackend(client, model="gpt-4o").sample(_request(), 3, 1.0)

    assert [s.valid for s in samples] == [True, False, True]
    assert samples[1].answer is None
    assert samples[1].error is not None and reason in samples[1].error
    # The faulty choice's text is the fake's, so only the prompt side is predictable;
    # the totals must still be those of one priced request.
    total = _total(samples)
    assert total.requests == 1
    assert total.prompt_tokens == prompt_tokens_for(fake_openai.requests[0].body)
    expected_cost = (
        total.prompt_tokens * GPT_4O_PRICE[0] + total.completion_tokens * GPT_4O_PRICE[1]
    ) / 1_000_000
    assert total.cost_usd == expected_cost


def test_it_downscales_the_image_to_the_max_side(
    fake_openai: FakeOpenAI, client: VLLMClient
) -> None:
    OpenAIBackend(client, model="gpt-4o", max_side=64, detail="low").sample(
        _request(image_bytes=_face_png(200, 100)), 1, 1.0
    )

    parts = fake_openai.requests[0].body["messages"][1]["content"]
    image = next(p["image_url"] for p in parts if p["type"] == "image_url")
    assert image["detail"] == "low"
    data = base64.b64decode(image["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (64, 32)


# backend_for reads the endpoint's latest check (seke_app.runs.probes) from the database.
@pytest.mark.django_db
def test_runs_send_images_at_the_configured_max_side(
    fake_openai: FakeOpenAI, settings: Any
) -> None:
    from seke_app.models import PromptVersion
    from seke_app.runs.backends import backend_for

    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = KEY, fake_openai.base_url
    settings.OPENAI_RPM = settings.OPENAI_TPM = 0
    settings.IMAGE_MAX_SIDE = 80
    backend = backend_for("openai", "gpt-4o", PromptVersion(knowledge_text="k"))
    backend.sample(_request(image_bytes=_face_png(400, 200)), 1, 1.0)

    parts = fake_openai.requests[0].body["messages"][1]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (80, 40)


def test_it_closes_its_client_when_closed(fake_openai: FakeOpenAI) -> None:
    config = ClientConfig(base_url=fake_openai.base_url, api_key="sk-any", model="gpt-4o")

    with OpenAIBackend(VLLMClient(config), model="gpt-4o") as backend:
        assert len(backend.sample(_request(), 2, 1.0)) == 2
        assert not backend.client.closed

    assert backend.client.closed


# backend_for reads the endpoint's latest check from the database.
@pytest.mark.django_db
def test_runs_build_a_backend_whose_close_closes_the_client(
    fake_openai: FakeOpenAI, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seke_app.models import PromptVersion
    from seke_app.runs import backends

    built: list[VLLMClient] = []

    class RecordedClient(VLLMClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(backends, "VLLMClient", RecordedClient)
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = KEY, fake_openai.base_url
    # With limits the client sits behind the rate limiter, whose close passes it on.
    settings.OPENAI_RPM, settings.OPENAI_TPM = 1000, 0
    for check_only in (False, True):
        with backends.backend_for(
            "openai", "gpt-4o", PromptVersion(knowledge_text="k"), check_only=check_only
        ) as backend:
            expected = OpenAIBackend if check_only else backends.RateLimitedBackend
            assert type(backend) is expected
            assert not built[-1].closed
        assert built[-1].closed
    assert len(built) == 2


def test_it_sends_plain_instructions_without_structured_outputs(
    fake_openai: FakeOpenAI, client: VLLMClient
) -> None:
    fake_openai.responder = lambda body, index: "```json\n" + _sampling_responder(body, 0) + "\n```"

    samples = OpenAIBackend(client, model="gpt-4o", structured=False).sample(_request(), 2, 1.0)

    body = fake_openai.requests[0].body
    assert "response_format" not in body
    assert "Reply with one JSON object" in json.dumps(body["messages"])
    assert [s.answer for s in samples] == [ANSWERS[0], ANSWERS[0]]


def test_it_sends_the_known_labels_as_anchors(fake_openai: FakeOpenAI, client: VLLMClient) -> None:
    request = _request(known=KnownLabels(expression="happiness"))

    OpenAIBackend(client, model="gpt-4o").sample(request, 1, 1.0)

    assert "- expression: happiness" in json.dumps(fake_openai.requests[0].body["messages"])


def test_every_call_of_a_run_carries_the_anchors(
    fake_openai: FakeOpenAI, client: VLLMClient
) -> None:
    # The known expression and AUs are inputs: the sampling and the verification
    # prompts both state them, and the answer carries them whatever the model said.
    known = KnownLabels(expression="surprise", aus={1: True, 2: True, 4: False})
    backend = OpenAIBackend(client, model="gpt-4o")

    def responder(body: dict[str, Any], index: int) -> str:
        verifying = body["response_format"]["json_schema"]["name"] == "seke_verification"
        return (_verifying_responder if verifying else _sampling_responder)(body, index)

    fake_openai.responder = responder

    result = run_uamc(backend, _request(known=known), UAMCParams(k0=2, kmax=2))

    assert len(fake_openai.requests) == 2
    for sent in fake_openai.requests:
        messages = json.dumps(sent.body["messages"])
        assert "- expression: surprise" in messages
        assert "- action units: present AU1, AU2; absent AU4" in messages
    assert result.given_grains == ("expression", "aus")
    assert result.answer is not None and result.answer.expression == "surprise"
    assert result.verification is not None and result.verification.ignored == ("expression",)


def test_it_verifies_at_temperature_zero_and_returns_the_verdicts(
    fake_openai: FakeOpenAI, client: VLLMClient
) -> None:
    fake_openai.responder = _verifying_responder
    verification = VerificationRequest(
        request=_request(),
        aggregate=ANSWERS[1],
        disagreement="expression split 2/1 between happiness and surprise",
    )

    sample = OpenAIBackend(client, model="gpt-4o").verify(verification)

    body = fake_openai.requests[0].body
    assert body["temperature"] == 0.0
    assert body.get("n", 1) == 1
    assert body["response_format"]["json_schema"]["name"] == "seke_verification"
    assert "expression split 2/1" in json.dumps(body["messages"])
    assert sample.kind == "verification"
    assert sample.verdict == {"aus": "confirm", "expression": "revise", "va": "confirm"}
    assert sample.answer is not None and sample.answer.expression == "fear"
    assert sample.usage == _call_usage(fake_openai)


def test_it_keeps_an_invalid_verification_with_its_reason(
    fake_openai: FakeOpenAI, client: VLLMClient
) -> None:
    fake_openai.script("refusal")
    verification = VerificationRequest(request=_request(), aggregate=ANSWERS[0], disagreement="")

    sample = OpenAIBackend(client, model="gpt-4o").verify(verification)

    assert sample.kind == "verification"
    assert not sample.valid
    assert sample.verdict is None
    assert sample.error is not None and sample.error.startswith("the model refused")


def test_it_lets_a_failed_request_raise(fake_openai: FakeOpenAI) -> None:
    fake_openai.api_key = KEY
    config = ClientConfig(base_url=fake_openai.base_url, api_key="sk-wrong", model="gpt-4o")

    with VLLMClient(config) as vllm, pytest.raises(VLLMError) as caught:
        OpenAIBackend(vllm, model="gpt-4o").sample(_request(), 2, 1.0)

    assert caught.value.retryable is False
    assert caught.value.status == 401


def test_it_splits_usage_exactly() -> None:
    usage = Usage(requests=1, prompt_tokens=1001, completion_tokens=302, cost_usd=0.0123457)

    shares = split_usage(usage, 4)

    assert [s.prompt_tokens for s in shares] == [251, 250, 250, 250]
    assert [s.requests for s in shares] == [1, 0, 0, 0]
    assert functools.reduce(operator.add, shares, Usage()) == usage
    assert functools.reduce(operator.add, reversed(shares), Usage()) == usage
    with pytest.raises(ValueError):
        split_usage(usage, 0)
