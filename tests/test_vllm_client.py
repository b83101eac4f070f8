"""The VLLM client, driven through the real openai package against the fake server."""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from PIL import Image

from seke_app.engine.llm.client import (
    ChatResult,
    ClientConfig,
    VLLMClient,
    VLLMError,
    image_data_url,
    retry_after_seconds,
)
from seke_app.engine.llm.prices import ModelPrice, model_price
from seke_app.engine.vocab import FEID_AUS
from tests.fake_openai import FakeOpenAI, Fault

KEY = "sk-test-Zq8v3SECRETk2"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "expression": {"type": "string", "enum": ["neutral", "happiness", "sadness"]},
        "valence": {"type": "number"},
        "arousal": {"type": "number"},
        "aus": {
            "type": "object",
            "properties": {str(au): {"type": "boolean"} for au in FEID_AUS},
            "required": [str(au) for au in FEID_AUS],
            "additionalProperties": False,
        },
    },
    "required": ["expression", "valence", "arousal", "aus"],
    "additionalProperties": False,
}
PROMPT = "Describe the facial expression in this image. Answer in JSON."


class Sleeps:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(fake_openai: FakeOpenAI, sleeps: Sleeps) -> Iterator[VLLMClient]:
    with _client(fake_openai, sleeps) as made:
        yield made


def _client(server: FakeOpenAI, sleeps: Sleeps, **overrides: Any) -> VLLMClient:
    settings: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": KEY,
        "model": "gpt-4o",
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 1.0,
        "backoff_max_s": 8.0,
    }
    settings.update(overrides)
    return VLLMClient(ClientConfig(**settings), sleep=sleeps)


def _messages(image_url: str | None = None, detail: str = "high") -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": PROMPT}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url, "detail": detail}})
    return [{"role": "user", "content": content}]


def _png(width: int, height: int, colour: tuple[int, int, int] = (200, 150, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _raw_data_url(image_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes).decode("ascii")


def _decode(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _answers(result: ChatResult) -> list[dict[str, Any]]:
    return [json.loads(choice.text or "") for choice in result.choices]


def _format_types(server: FakeOpenAI) -> list[str | None]:
    return [(r.body.get("response_format") or {}).get("type") for r in server.requests]


# -- answers, choices, fallbacks ------------------------------------------------------


def test_it_returns_a_valid_structured_answer(client: VLLMClient, fake_openai: FakeOpenAI) -> None:
    result = client.chat(_messages(), json_schema=SCHEMA, temperature=0.7)

    [answer] = _answers(result)
    assert answer["expression"] == "happiness"
    assert answer["valence"] == 0.6 and answer["arousal"] == 0.2
    assert set(answer["aus"]) == {str(au) for au in FEID_AUS}
    assert answer["aus"]["12"] is True and answer["aus"]["1"] is False
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.requests == 1
    [request] = fake_openai.requests
    assert request.body["model"] == "gpt-4o"
    assert request.body["temperature"] == 0.7
    assert "n" not in request.body
    assert request.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "seke_answer", "schema": SCHEMA, "strict": True},
    }


def test_it_sends_no_response_format_without_a_schema(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    result = client.chat(_messages())

    assert _answers(result)[0]["expression"] == "happiness"
    assert "response_format" not in fake_openai.requests[0].body


def test_it_asks_for_several_choices_in_one_request_and_pays_the_image_once(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    # 1024x1024 at high detail is scaled to 768x768: four 512-px tiles.
    messages = _messages(_raw_data_url(_png(1024, 1024)))
    single = client.chat(messages, json_schema=SCHEMA)
    several = client.chat(messages, n=4, json_schema=SCHEMA)

    assert fake_openai.request_count == 2
    assert fake_openai.requests[1].body["n"] == 4
    assert len(several.choices) == 4
    assert client.supports_n is True
    expected_prompt = math.ceil(len(PROMPT) / 4) + 85 + 170 * 4
    assert single.usage.prompt_tokens == several.usage.prompt_tokens == expected_prompt
    assert several.usage.completion_tokens == 4 * single.usage.completion_tokens
    assert several.usage.requests == 1


def test_it_counts_a_low_detail_image_as_85_tokens(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    result = client.chat(_messages(_raw_data_url(_png(1024, 1024)), detail="low"))

    assert result.usage.prompt_tokens == math.ceil(len(PROMPT) / 4) + 85


def test_it_falls_back_to_single_requests_when_n_is_rejected_and_remembers(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reject_n = True

    first = client.chat(_messages(), n=3, json_schema=SCHEMA)
    assert len(first.choices) == 3
    assert first.usage.requests == 3
    assert client.supports_n is False
    assert [r.body.get("n") for r in fake_openai.requests] == [3, None, None, None]

    second = client.chat(_messages(), n=2, json_schema=SCHEMA)
    assert len(second.choices) == 2
    assert [r.body.get("n") for r in fake_openai.requests[4:]] == [None, None]


def test_it_asks_for_the_rest_singly_when_the_endpoint_ignores_n(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.ignore_n = True

    result = client.chat(_messages(), n=3, json_schema=SCHEMA)

    assert len(result.choices) == 3
    assert [r.body.get("n") for r in fake_openai.requests] == [3, None, None]
    assert client.supports_n is False
    assert result.usage.requests == 3


def test_it_falls_back_to_json_object_when_json_schema_is_rejected(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reject_json_schema = True

    client.chat(_messages(), json_schema=SCHEMA)
    client.chat(_messages(), json_schema=SCHEMA)

    assert _format_types(fake_openai) == ["json_schema", "json_object", "json_object"]
    assert client.response_format_mode == "json_object"


def test_it_drops_the_response_format_when_json_object_is_rejected_too(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reject_json_schema = True
    fake_openai.reject_json_object = True

    result = client.chat(_messages(), json_schema=SCHEMA)

    assert _answers(result)[0]["expression"] == "happiness"
    assert _format_types(fake_openai) == ["json_schema", "json_object", None]
    assert client.response_format_mode == "none"


def test_it_does_not_retry_other_bad_requests(
    client: VLLMClient, fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script("400")

    with pytest.raises(VLLMError) as caught:
        client.chat(_messages(), n=3, json_schema=SCHEMA)

    assert caught.value.retryable is False
    assert caught.value.status == 400
    assert fake_openai.request_count == 1
    assert sleeps.waits == []
    assert client.supports_n is None
    assert client.response_format_mode == "json_schema"


# -- retries ------------------------------------------------------------------------------


def test_it_honours_retry_after_on_429(
    client: VLLMClient, fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script(Fault("429", retry_after=3))

    result = client.chat(_messages())

    assert len(result.choices) == 1
    assert sleeps.waits == [3.0]
    assert fake_openai.request_count == 2
    assert result.usage.requests == 1


def test_it_prefers_retry_after_ms(
    client: VLLMClient, fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script(Fault("429", retry_after=5, retry_after_ms=250))

    client.chat(_messages())

    assert sleeps.waits == [0.25]


def test_it_retries_a_500_with_jittered_exponential_backoff(
    client: VLLMClient, fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script("500", "500", Fault("503", retry_after=None))

    result = client.chat(_messages())

    assert len(result.choices) == 1
    assert fake_openai.request_count == 4
    first, second, third = sleeps.waits
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0
    assert 2.0 <= third <= 4.0


def test_it_caps_the_backoff_step(fake_openai: FakeOpenAI, sleeps: Sleeps) -> None:
    fake_openai.script(*["500"] * 4)

    with _client(fake_openai, sleeps, max_retries=4, backoff_max_s=1.5) as capped:
        capped.chat(_messages())

    assert all(wait <= 1.5 for wait in sleeps.waits)
    assert len(sleeps.waits) == 4


def test_it_gives_up_retryable_when_retries_are_exhausted(
    fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script(*[Fault("503", retry_after=1)] * 3)

    with (
        _client(fake_openai, sleeps, max_retries=2) as impatient,
        pytest.raises(VLLMError) as caught,
    ):
        impatient.chat(_messages())

    assert caught.value.retryable is True
    assert caught.value.status == 503
    assert fake_openai.request_count == 3
    assert sleeps.waits == [1.0, 1.0]


def test_it_gives_up_when_retry_after_exceeds_the_wait_budget(
    fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script(Fault("429", retry_after=600))

    with (
        _client(fake_openai, sleeps, max_total_wait_s=60) as bounded,
        pytest.raises(VLLMError) as caught,
    ):
        bounded.chat(_messages())

    assert caught.value.retryable is True
    assert caught.value.status == 429
    assert sleeps.waits == []


def test_it_fails_fast_on_401_without_leaking_the_key(sleeps: Sleeps) -> None:
    # This server echoes the presented key in its 401 text, as some proxies do.
    with FakeOpenAI(api_key="sk-the-right-one") as server, _client(server, sleeps) as client:
        with pytest.raises(VLLMError) as caught:
            client.chat(_messages())

        assert caught.value.retryable is False
        assert caught.value.status == 401
        assert server.request_count == 1
        assert sleeps.waits == []
        assert KEY not in str(caught.value)
        assert KEY not in repr(caught.value)
        assert caught.value.__cause__ is None
        assert KEY not in repr(client)
        assert KEY not in repr(ClientConfig(base_url=None, api_key=KEY, model="gpt-4o"))
        assert all(KEY not in json.dumps(r.headers) for r in server.requests)


def test_it_retries_a_hanging_request_then_succeeds(
    fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script(Fault("hang", hang_s=2.0))

    started = time.monotonic()
    with _client(fake_openai, sleeps, timeout_s=0.3) as quick:
        result = quick.chat(_messages())

    assert len(result.choices) == 1
    assert fake_openai.request_count == 2
    assert len(sleeps.waits) == 1
    assert time.monotonic() - started < 1.5


def test_it_gives_up_retryable_after_repeated_timeouts(
    fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    fake_openai.script(*[Fault("hang", hang_s=2.0)] * 2)

    with (
        _client(fake_openai, sleeps, timeout_s=0.3, max_retries=1) as quick,
        pytest.raises(VLLMError) as caught,
    ):
        quick.chat(_messages())

    assert caught.value.retryable is True
    assert caught.value.status is None
    assert "0.3" in str(caught.value)
    assert fake_openai.request_count == 2


def test_it_treats_a_refused_connection_as_retryable(sleeps: Sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, model="gpt-4o", max_retries=1
    )

    with VLLMClient(config, sleep=sleeps) as client, pytest.raises(VLLMError) as caught:
        client.chat(_messages())

    assert caught.value.retryable is True
    assert caught.value.status is None
    assert len(sleeps.waits) == 1


def test_it_closes_its_connections_and_refuses_calls_afterwards(
    fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    with _client(fake_openai, sleeps) as client:
        client.chat(_messages())
        assert not client.closed
    assert client.closed
    client.close()  # closing twice is harmless

    with pytest.raises(VLLMError, match="the VLLM client has been closed") as caught:
        client.chat(_messages())

    # Refused at once: no request, no retry, no wait.
    assert caught.value.retryable is False
    assert fake_openai.request_count == 1
    assert sleeps.waits == []


# -- per-choice outcomes --------------------------------------------------------------------


def test_it_reports_a_refusal_on_its_choice(client: VLLMClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Fault("refusal", choice=1))

    result = client.chat(_messages(), n=3, json_schema=SCHEMA)

    refused = result.choices[1]
    assert refused.text is None
    assert refused.refusal
    assert [c.refusal is None for c in result.choices] == [True, False, True]
    assert json.loads(result.choices[0].text or "")["expression"] == "happiness"


def test_it_reports_truncation_and_content_filtering_per_choice(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script("length", Fault("content_filter", choice=0))

    truncated = client.chat(_messages(), json_schema=SCHEMA)
    filtered = client.chat(_messages(), n=2, json_schema=SCHEMA)

    assert truncated.choices[0].finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(truncated.choices[0].text or "")
    assert [c.finish_reason for c in filtered.choices] == ["content_filter", "stop"]
    assert filtered.choices[0].text is None


def test_it_passes_invalid_content_through_for_the_caller_to_judge(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script("malformed", "out_of_range", "wrong_aus")

    malformed, out_of_range, wrong_aus = (
        client.chat(_messages(), json_schema=SCHEMA).choices[0].text or "" for _ in range(3)
    )

    with pytest.raises(ValueError):
        json.loads(malformed)
    assert json.loads(out_of_range)["valence"] > 1
    assert "smile" in json.loads(wrong_aus)["aus"]


# -- cost ----------------------------------------------------------------------------------


def test_it_computes_cost_from_the_price_table(fake_openai: FakeOpenAI, sleeps: Sleeps) -> None:
    with _client(fake_openai, sleeps, model="gpt-4o-mini") as mini:
        result = mini.chat(_messages(), n=2)

    usage = result.usage
    assert result.priced is True
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    expected = (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.60) / 1_000_000
    assert usage.cost_usd == pytest.approx(expected)


def test_it_lets_the_caller_override_and_add_prices(
    fake_openai: FakeOpenAI, sleeps: Sleeps
) -> None:
    prices = {
        "gpt-4o": ModelPrice.listed(5.0, 20.0),
        "my-azure-deployment": ModelPrice.listed(1.0, 2.0),
    }
    with (
        _client(fake_openai, sleeps, prices=prices) as overridden,
        _client(fake_openai, sleeps, model="my-azure-deployment", prices=prices) as added,
    ):
        dear = overridden.chat(_messages()).usage
        deployed = added.chat(_messages())

    assert dear.cost_usd == pytest.approx(
        (dear.prompt_tokens * 5.0 + dear.completion_tokens * 20.0) / 1_000_000
    )
    assert deployed.priced is True
    assert deployed.usage.cost_usd == pytest.approx(
        (deployed.usage.prompt_tokens * 1.0 + deployed.usage.completion_tokens * 2.0) / 1_000_000
    )


def test_it_prices_dated_snapshots_like_their_family_and_nothing_else() -> None:
    assert model_price("gpt-4o-2024-08-06") == ModelPrice(2.50, 10.00, 1.25, 5.00)
    assert model_price("gpt-4o-mini-2024-07-18") == ModelPrice(0.15, 0.60, 0.075, 0.30)
    assert model_price("gpt-4.1-mini") == ModelPrice(0.40, 1.60, 0.20, 0.80)
    assert model_price("gpt-4o-audio-preview") is None


def test_it_marks_unknown_models_unpriced(fake_openai: FakeOpenAI, sleeps: Sleeps) -> None:
    with _client(fake_openai, sleeps, model="llava:13b") as local:
        result = local.chat(_messages())

    assert result.priced is False
    assert local.priced is False
    assert result.usage.cost_usd == 0.0
    assert result.usage.prompt_tokens > 0


# -- concurrency ---------------------------------------------------------------------------


def test_it_limits_concurrent_requests(fake_openai: FakeOpenAI, sleeps: Sleeps) -> None:
    fake_openai.latency_s = 0.1
    errors: list[BaseException] = []

    with _client(fake_openai, sleeps, max_concurrency=2) as limited:

        def call() -> None:
            try:
                limited.chat(_messages())
            except BaseException as err:  # surfaced by the assertion below
                errors.append(err)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

    assert errors == []
    assert fake_openai.request_count == 8
    assert fake_openai.max_in_flight == 2


# -- helpers ---------------------------------------------------------------------------------


def test_it_parses_every_retry_after_form() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=7), usegmt=True)

    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "1.5", "retry-after-ms": "120"}) == 0.12
    assert retry_after_seconds({"Retry-After": date}, now=now) == 7.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_it_rejects_invalid_configs() -> None:
    with pytest.raises(ValueError):
        ClientConfig(base_url=None, api_key=KEY, model="gpt-4o", max_concurrency=0)
    with pytest.raises(ValueError):
        ClientConfig(base_url=None, api_key=KEY, model="")


def test_it_downscales_images_keeping_the_aspect_ratio() -> None:
    large = _decode(image_data_url(_png(1200, 600), max_side=512))
    small = _decode(image_data_url(_png(100, 50)))

    assert large.size == (512, 256)
    assert large.mode == "RGB" and large.format == "JPEG"
    assert small.size == (100, 50)


def test_it_flattens_transparency_onto_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(buffer, format="PNG")

    image = _decode(image_data_url(buffer.getvalue()))

    assert image.mode == "RGB"
    assert min(image.getpixel((20, 20))) > 240  # type: ignore[arg-type]


def test_it_applies_exif_orientation() -> None:
    # Stored landscape, left half red, right half blue; orientation 6 means the
    # viewer must turn it 90 degrees clockwise, putting red on top.
    stored = Image.new("RGB", (200, 100), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)

    upright = _decode(image_data_url(buffer.getvalue()))

    assert upright.size == (100, 200)
    top = upright.getpixel((50, 30))
    bottom = upright.getpixel((50, 170))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_it_rejects_bytes_that_are_not_an_image() -> None:
    with pytest.raises(ValueError, match="not a readable image"):
        image_data_url(b"definitely not an image")


def _create_batches(client: VLLMClient, *metadata: dict[str, str]) -> list[str]:
    """One batch per metadata, oldest first, over one empty input file."""
    file_id = client.batch_upload(b"", filename="in.jsonl")
    return [client.batch_create(file_id, metadata=m).id for m in metadata]


def _listings(server: FakeOpenAI) -> list[str]:
    return [r.path for r in server.requests if r.path.startswith("/v1/batches")]


def test_it_finds_the_newest_batch_with_the_metadata_page_after_page(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    ids = _create_batches(
        client,
        {"seke_run": "a", "seke_round": "1"},
        {"seke_run": "a", "seke_round": "2"},
        {"seke_run": "b", "seke_round": "1"},
        {"seke_run": "a", "seke_round": "1", "note": "sent again"},
        {"seke_run": "b", "seke_round": "2"},
    )
    fake_openai.batches.page_size = 2

    found = client.batch_find({"seke_run": "a", "seke_round": "1"})
    assert found is not None and found.id == ids[3]
    assert found.input_file_id and found.status == "in_progress"
    assert _listings(fake_openai) == ["/v1/batches?limit=100"]

    found = client.batch_find({"seke_run": "a", "seke_round": "2"})
    assert found is not None and found.id == ids[1]
    assert _listings(fake_openai)[1:] == [
        "/v1/batches?limit=100",
        f"/v1/batches?after={ids[3]}&limit=100",
    ]

    # The last page says there is no more; max_pages stops earlier.
    assert client.batch_find({"seke_run": "c"}) is None
    assert len(_listings(fake_openai)) == 3 + 3
    assert client.batch_find({"seke_run": "a", "seke_round": "2"}, max_pages=1) is None
    assert len(_listings(fake_openai)) == 3 + 3 + 1


def test_it_stops_looking_at_batches_created_before_the_given_time(
    client: VLLMClient, fake_openai: FakeOpenAI
) -> None:
    ids = _create_batches(
        client,
        {"seke_run": "a"},
        {"seke_run": "b"},
        {"seke_run": "c"},
        {"seke_run": "d"},
        {"seke_run": "e"},
    )
    for old in ids[:2]:
        fake_openai.batches.backdate(old, 7200)
    fake_openai.batches.page_size = 2
    cutoff = datetime.now(UTC) - timedelta(hours=1)

    # Newest first: (e, d), (c, b); b is older than the cutoff, so a is never read.
    assert client.batch_find({"seke_run": "a"}, created_after=cutoff) is None
    assert len(_listings(fake_openai)) == 2
    assert client.batch_find({"seke_run": "c"}, created_after=int(cutoff.timestamp())) is not None
    found = client.batch_find({"seke_run": "a"})
    assert found is not None and found.id == ids[0]
    assert len(_listings(fake_openai)) == 2 + 2 + 3


def test_it_says_when_the_endpoint_cannot_list_batches(sleeps: Sleeps) -> None:
    with (
        FakeOpenAI(batch=False) as server,
        _client(server, sleeps) as client,
        pytest.raises(VLLMError) as refused,
    ):
        client.batch_find({"seke_run": "a"})
    assert refused.value.status == 404 and not refused.value.retryable
    with pytest.raises(ValueError, match="max_pages"):
        client.batch_find({"seke_run": "a"}, max_pages=0)
