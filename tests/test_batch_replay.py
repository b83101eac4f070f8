"""SV-UAMC replayed from recorded replies, and the client's Batch API calls, against the
fake server: the replay makes the calls the synchronous path makes and, given the same
replies, the same answer; batch lines are priced at half the list price."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image, ImageDraw

from seke_app.engine.llm.backend import OpenAIBackend
from seke_app.engine.llm.batch import Call, ReplayMismatch, Reply, replay
from seke_app.engine.llm.client import (
    ClientConfig,
    VLLMClient,
    VLLMError,
    batch_price,
)
from seke_app.engine.llm.prices import model_price
from seke_app.engine.schema import answer_to_schema_json
from seke_app.engine.types import AnnotationRequest, Answer
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc
from seke_app.engine.vocab import FEID_AUS, Vocabulary
from tests.fake_openai import BatchPlan, FakeOpenAI

KEY = "sk-test-batch"


def _png() -> bytes:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((8, 4, 56, 60), outline="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _answer(expression: str) -> dict[str, Any]:
    answer = Answer(
        expression=expression,
        valence=0.5 if expression == "happiness" else 0.3,
        arousal=0.2 if expression == "happiness" else 0.7,
        aus={au: au in (6, 12) for au in FEID_AUS},
        evidence={"expression": "e", "va": "v", "aus": "a"},
    )
    return answer_to_schema_json(answer)


def split_responder(body: dict[str, Any], index: int) -> str:
    """Samples split 2/1 between happiness and surprise, so that SV-UAMC draws more;
    the verification confirms everything."""
    if body["response_format"]["json_schema"]["name"] != "seke_answer":
        verdicts = {g: {"verdict": "confirm"} for g in ("expression", "va", "aus")}
        return json.dumps({"verdicts": verdicts, "answer": _answer("happiness")})
    return json.dumps(_answer("surprise" if index == 2 else "happiness"))


def _backend(server: FakeOpenAI) -> OpenAIBackend:
    config = ClientConfig(
        base_url=server.base_url, api_key=KEY, model="gpt-4o", max_retries=0, timeout_s=5
    )
    return OpenAIBackend(VLLMClient(config), model="gpt-4o")


def _request() -> AnnotationRequest:
    return AnnotationRequest(image_bytes=_png(), vocabulary=Vocabulary(), image_id="img")


def _replayed(server: FakeOpenAI, params: UAMCParams) -> tuple[UAMCResult, list[Call]]:
    """Replay, sending each pending call's body to the server as a one-line batch."""
    backend = _backend(server)
    request = _request()
    replies: list[Reply] = []
    calls: list[Call] = []
    while isinstance(outcome := replay(backend, replies, request, params), Call):
        calls.append(outcome)
        line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}
        data = json.dumps(line | {"body": outcome.body}).encode() + b"\n"
        client = backend.client
        batch = client.batch_create(client.batch_upload(data, filename="in.jsonl"), metadata={})
        state = client.batch_retrieve(batch.id)
        assert state.final and state.status == "completed"
        assert state.output_file_id is not None
        row = json.loads(client.file_text(state.output_file_id))
        replies.append(Reply(outcome.kind, outcome.k, row["response"]["body"]))
    backend.close()
    return outcome, calls


def _without_cost(result: UAMCResult) -> dict[str, Any]:
    data = result.to_json()
    data.pop("usage")
    for sample in data["samples"]:
        sample.pop("usage")
    return data


def test_it_replays_the_synchronous_calls_and_answer_from_batch_replies() -> None:
    params = UAMCParams()
    with FakeOpenAI(responder=split_responder, api_key=KEY) as server:
        with _backend(server) as backend:
            direct = run_uamc(backend, _request(), params)
        sync_bodies = [r.body for r in server.requests]
        batched, calls = _replayed(server, params)
    # First samples, extra samples (the 2/1 split is unsure), then the verification.
    assert [(c.kind, c.k) for c in calls] == [("sample", 3), ("sample", 2), ("verify", 1)]
    assert [c.body for c in calls] == sync_bodies
    assert _without_cost(batched) == _without_cost(direct)
    assert batched.usage.cost_usd == pytest.approx(direct.usage.cost_usd / 2)
    assert batched.usage.prompt_tokens == direct.usage.prompt_tokens


def test_it_prices_batches_at_half_the_list_price() -> None:
    price = model_price("gpt-4o")
    assert price is not None
    assert batch_price("gpt-4o") == (price.input / 2, price.output / 2)
    assert batch_price("gpt-4o-2024-08-06") == batch_price("gpt-4o")
    assert batch_price("unknown-model") is None


def test_it_refuses_replies_that_do_not_answer_the_calls() -> None:
    with FakeOpenAI(responder=split_responder) as server:
        backend = _backend(server)
        first = replay(backend, [], _request(), UAMCParams())
        assert isinstance(first, Call)
        wrong = Reply("verify", 1, {"choices": []})
        with pytest.raises(ReplayMismatch, match="sample call of 3"):
            replay(backend, [wrong], _request(), UAMCParams())
        backend.close()


def test_it_refuses_a_reply_that_is_not_a_completion() -> None:
    with FakeOpenAI() as server:
        backend = _backend(server)
        with pytest.raises(VLLMError, match="no choices"):
            replay(
                backend,
                [
                    Reply(
                        "sample",
                        3,
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "created": 0,
                            "model": "gpt-4o",
                            "choices": [],
                        },
                    )
                ],
                _request(),
                UAMCParams(),
            )
        backend.close()


def test_the_fake_server_plans_in_progress_failed_and_expired_lines() -> None:
    with FakeOpenAI(api_key=KEY) as server:
        server.batches.script(
            BatchPlan(in_progress=2, fail_lines=frozenset({0}), expire_lines=frozenset({2}))
        )
        client = _backend(server).client
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        data = b"".join(
            json.dumps(
                {
                    "custom_id": f"c{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            ).encode()
            + b"\n"
            for i in range(3)
        )
        batch = client.batch_create(client.batch_upload(data, filename="in.jsonl"), metadata={})
        assert [client.batch_retrieve(batch.id).status for _ in range(2)] == ["in_progress"] * 2
        state = client.batch_retrieve(batch.id)
        assert (state.status, state.total, state.completed, state.failed) == ("expired", 3, 1, 2)
        assert state.output_file_id and state.error_file_id
        errors = [json.loads(x) for x in client.file_text(state.error_file_id).splitlines()]
        assert {e["custom_id"]: (e["error"] or {}).get("code") for e in errors} == {
            "c0": None,
            "c2": "batch_expired",
        }
        client.close()
