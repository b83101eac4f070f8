"""A cascade run: SV-UAMC on a cheap model, the images it leaves unsure again on a
strong one, whose answer decides (``engine.cascade``).

The fake server plays both models (``by_model``). The cheap model is unsure, by
its own choice, on every other image it is shown (its samples disagree); the
strong model answers "surprise" unanimously. What each model received is read
back from the server's requests.
"""

from __future__ import annotations

import io
import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from seke_app.engine.cascade import accepted
from seke_app.engine.knowledge import PROTOTYPES, VA_PRIORS
from seke_app.engine.llm.prices import DEFAULT_PRICES
from seke_app.engine.schema import VERIFICATION_SCHEMA_NAME, answer_to_schema_json
from seke_app.engine.types import Answer
from seke_app.engine.uamc import UAMCParams
from seke_app.engine.vocab import Vocabulary
from seke_app.models import Annotation, AnnotationSample, GenerationRun
from seke_app.runs.services import RunRefused, run_create
from tests.api_client import ApiClient
from tests.factories import make_dataset
from tests.fake_openai import Billed, FakeOpenAI, by_model, image_url
from tests.workers import emptied_queue, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
VOCABULARY = Vocabulary()
UNSURE_SPLIT = ("happiness", "sadness", "anger")

_own_queue = emptied_queue("generation")


def face(expression: str) -> dict[str, Any]:
    """An answer typical of ``expression``: its VA prior and its prototype AUs."""
    prior = VA_PRIORS[expression]
    prototype = set(PROTOTYPES[expression])
    answer = Answer(
        expression=expression,
        valence=prior.valence,
        arousal=prior.arousal,
        aus={au: au in prototype for au in VOCABULARY.aus},
        evidence={"expression": f"Looks like {expression}.", "va": "Typical.", "aus": "Seen."},
    )
    return answer_to_schema_json(answer)


def verifying(body: dict[str, Any]) -> bool:
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
    return bool(schema == VERIFICATION_SCHEMA_NAME)


def confirmed(answer: dict[str, Any]) -> str:
    verdicts = {grain: {"verdict": "confirm"} for grain in ("aus", "expression", "va")}
    return json.dumps({"verdicts": verdicts, "answer": answer})


class CheapModel:
    """Unsure on every other image it is shown first (its samples split three ways),
    sure of "happiness" on the others."""

    def __init__(self) -> None:
        self.unsure: set[str] = set()
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any], index: int) -> str:
        url = image_url(body)
        with self._lock:
            if url not in self.seen:
                self.seen.append(url)
                if len(self.seen) % 2 == 0:
                    self.unsure.add(url)
        if verifying(body):
            return confirmed(face("happiness"))
        if url in self.unsure:
            return json.dumps(face(UNSURE_SPLIT[index % len(UNSURE_SPLIT)]))
        return json.dumps(face("happiness"))


def revising_cheap_model(body: dict[str, Any], index: int) -> str:
    """Unanimous on every image, but its verification says it revises the AUs (to
    the same AUs): a reason that holds the image for review whatever its confidence."""
    if verifying(body):
        verdicts = {grain: {"verdict": "confirm"} for grain in ("expression", "va")}
        verdicts["aus"] = {"verdict": "revise"}
        return json.dumps({"verdicts": verdicts, "answer": face("happiness")})
    return json.dumps(face("happiness"))


def strong_model(body: dict[str, Any], index: int) -> str:
    if verifying(body):
        return confirmed(face("surprise"))
    return json.dumps(face("surprise"))


def unsure_strong_model(body: dict[str, Any], index: int) -> str:
    if verifying(body):
        return confirmed(face("fear"))
    return json.dumps(face(("fear", "surprise", "disgust")[index % 3]))


def use_fake(settings: Any, server: FakeOpenAI) -> None:
    server.point(settings)


def cascade_run(tmp_path: Path, n: int, **options: Any) -> GenerationRun:
    return run_create(
        dataset=make_dataset(tmp_path, n=n),
        backend="openai",
        model_name=CHEAP,
        strong_model=options.pop("strong_model", STRONG),
        params=UAMCParams(),
        concurrency=1,
        **options,
    )


def urls_sent_to(server: FakeOpenAI, model: str) -> set[str]:
    return {image_url(r.body) for r in server.requests if r.body.get("model") == model}


def price(billed: Billed, model: str) -> float:
    return DEFAULT_PRICES[model].cost(billed.prompt_tokens, billed.completion_tokens)


def test_it_escalates_exactly_the_images_the_cheap_model_leaves_unsure(
    tmp_path: Path, settings: Any
) -> None:
    cheap = CheapModel()
    with FakeOpenAI(responder=by_model({CHEAP: cheap, STRONG: strong_model})) as server:
        use_fake(settings, server)
        run = cascade_run(tmp_path, 6)
        work_in_process("generation")
    assert not server.errors
    run.refresh_from_db()
    assert run.status == "completed" and run.n_done == 6
    # Every image went to the cheap model; only those it was unsure of to the strong one.
    assert urls_sent_to(server, CHEAP) == set(cheap.seen) and len(cheap.seen) == 6
    assert len(cheap.unsure) == 3
    assert urls_sent_to(server, STRONG) == cheap.unsure
    assert run.n_escalated == 3
    annotations = list(Annotation.objects.filter(run=run))
    threshold = run.review_threshold
    for annotation in annotations:
        cheap_accepted = annotation.cheap_confidence is not None and accepted(
            annotation.cheap_confidence, bool(annotation.cheap_result.get("held")), threshold
        )
        if annotation.stage == "strong":
            # The cheap stage was below the threshold; the strong answer is the one kept.
            assert not cheap_accepted
            assert annotation.cheap_result["expression"] in UNSURE_SPLIT
            assert annotation.expression == "surprise"
            assert annotation.is_confident(threshold)
        else:
            assert annotation.stage == "cheap" and annotation.cheap_result == {}
            assert annotation.cheap_confidence == annotation.confidence
            assert cheap_accepted and annotation.expression == "happiness"
    assert sum(a.stage == "strong" for a in annotations) == 3
    assert (run.n_accepted, run.n_flagged) == (6, 0)


def test_the_strong_model_decides_review_when_it_is_unsure_too(
    tmp_path: Path, settings: Any
) -> None:
    cheap = CheapModel()
    with FakeOpenAI(responder=by_model({CHEAP: cheap, STRONG: unsure_strong_model})) as server:
        use_fake(settings, server)
        run = cascade_run(tmp_path, 4)
        work_in_process("generation")
    run.refresh_from_db()
    assert run.n_escalated == 2 == len(cheap.unsure)
    flagged = Annotation.objects.filter(run=run, stage="strong")
    assert all(not a.is_confident(run.review_threshold) for a in flagged)
    assert {a.expression for a in flagged} <= {"fear", "surprise", "disgust"}
    assert (run.n_accepted, run.n_flagged) == (2, 2)


def test_an_image_held_by_the_cheap_model_is_escalated_whatever_its_confidence(
    tmp_path: Path, settings: Any
) -> None:
    responder = by_model({CHEAP: revising_cheap_model, STRONG: strong_model})
    with FakeOpenAI(responder=responder) as server:
        use_fake(settings, server)
        run = cascade_run(tmp_path, 3)
        work_in_process("generation")
    run.refresh_from_db()
    assert run.n_escalated == 3 and len(urls_sent_to(server, STRONG)) == 3
    for annotation in Annotation.objects.filter(run=run):
        assert annotation.cheap_result["held"] is True
        assert annotation.cheap_confidence is not None
        assert annotation.cheap_confidence >= run.review_threshold
        assert annotation.stage == "strong" and annotation.is_confident(run.review_threshold)
    assert (run.n_accepted, run.n_flagged) == (3, 0)


def test_it_records_each_stages_usage_exactly(tmp_path: Path, settings: Any) -> None:
    cheap = CheapModel()
    with FakeOpenAI(responder=by_model({CHEAP: cheap, STRONG: strong_model})) as server:
        use_fake(settings, server)
        run = cascade_run(tmp_path, 4)
        work_in_process("generation")
    run.refresh_from_db()
    billed_cheap, billed_strong = server.billed_for(CHEAP), server.billed_for(STRONG)
    assert billed_strong.requests > 0
    assert (run.strong_requests, run.strong_prompt_tokens, run.strong_completion_tokens) == (
        billed_strong.requests,
        billed_strong.prompt_tokens,
        billed_strong.completion_tokens,
    )
    assert run.requests == billed_cheap.requests + billed_strong.requests
    # Each stage priced at its own model's price, to the micro-dollar per call.
    tolerance = 1e-6 * server.billed.requests
    assert float(run.strong_cost_usd) == pytest.approx(price(billed_strong, STRONG), abs=tolerance)
    cheap_cost = run.cost_usd - run.strong_cost_usd
    assert float(cheap_cost) == pytest.approx(price(billed_cheap, CHEAP), abs=tolerance)
    # The annotations carry both stages; their samples are marked by stage.
    annotations = Annotation.objects.filter(run=run)
    assert sum(a.requests for a in annotations) == run.requests
    for annotation in annotations.filter(stage="strong"):
        samples = AnnotationSample.objects.filter(annotation=annotation)
        stages = {s.stage for s in samples}
        assert stages == {"cheap", "strong"}
        micro = Decimal("0.00001")
        assert sum(s.cost_usd for s in samples) == pytest.approx(annotation.cost_usd, abs=micro)
        cheap_part = sum((s.cost_usd for s in samples if s.stage == "cheap"), Decimal(0))
        cheap_cost = Decimal(annotation.cheap_result["cost_usd"])
        assert cheap_part == pytest.approx(cheap_cost, abs=micro)


def test_a_run_of_one_model_calls_no_other(tmp_path: Path, settings: Any) -> None:
    cheap = CheapModel()
    with FakeOpenAI(responder=by_model({CHEAP: cheap})) as server:
        use_fake(settings, server)
        run = cascade_run(tmp_path, 4, strong_model="")
        work_in_process("generation")
    run.refresh_from_db()
    assert not server.errors and run.n_done == 4
    assert urls_sent_to(server, STRONG) == set()
    assert (run.n_escalated, run.strong_requests) == (0, 0)
    assert set(Annotation.objects.filter(run=run).values_list("stage", flat=True)) == {""}
    assert run.n_flagged == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "offline", "model_name": ""}, "needs the OpenAI-compatible backend"),
        ({"strong_model": CHEAP}, "a cascade escalates to another model"),
        ({"strong_model": "m" * 101}, "at most 100 characters"),
    ],
)
def test_it_refuses_a_cascade_that_cannot_work(
    tmp_path: Path, settings: Any, options: dict[str, Any], message: str
) -> None:
    settings.OPENAI_API_KEY = "sk-test-key"
    dataset = make_dataset(tmp_path, n=2)
    values: dict[str, Any] = {"backend": "openai", "model_name": CHEAP, "strong_model": STRONG}
    with pytest.raises(RunRefused, match=message):
        run_create(dataset=dataset, params=UAMCParams(), **(values | options))
    assert not GenerationRun.objects.exists()


def test_the_rule_is_the_review_rule() -> None:
    # Escalation and auto-acceptance read one rule: held, or under the threshold.
    assert accepted(0.7, False, 0.7) and not accepted(0.69, False, 0.7)
    assert not accepted(0.99, True, 0.7)


def test_the_command_starts_a_cascade_and_reports_its_stages(tmp_path: Path, settings: Any) -> None:
    cheap = CheapModel()
    dataset = make_dataset(tmp_path, n=4)
    out = io.StringIO()
    with FakeOpenAI(responder=by_model({CHEAP: cheap, STRONG: strong_model})) as server:
        use_fake(settings, server)
        call_command(
            "run_generation",
            *("--dataset", dataset.name, "--backend", "openai", "--model", CHEAP),
            *("--strong-model", STRONG, "--concurrency", "1", "--inline"),
            stdout=out,
        )
    run = GenerationRun.objects.get()
    assert (run.model_name, run.strong_model, run.n_escalated) == (CHEAP, STRONG, 2)
    assert f"cascade: 2 of 4 escalated to {STRONG}" in out.getvalue()
    assert f"{STRONG} ${run.strong_cost_usd:.4f}" in out.getvalue()


def test_the_command_refuses_a_cascade_on_the_offline_annotator(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, n=2)
    with pytest.raises(CommandError, match="needs the OpenAI-compatible backend"):
        call_command("run_generation", "--dataset", dataset.name, "--strong-model", STRONG)
    assert not GenerationRun.objects.exists()


def test_the_api_starts_a_cascade_and_shows_its_stages(
    tmp_path: Path, settings: Any, admin_user: User
) -> None:
    cheap = CheapModel()
    dataset = make_dataset(tmp_path, n=4)
    api = ApiClient(admin_user)
    with FakeOpenAI(responder=by_model({CHEAP: cheap, STRONG: strong_model})) as server:
        use_fake(settings, server)
        body = {"dataset": str(dataset.code), "backend": "openai", "model_name": CHEAP}
        started = api.post("/api/v1/runs", body | {"strong_model": STRONG, "concurrency": 1})
        assert started.status_code == 201, started.json()
        work_in_process("generation")
    run = GenerationRun.objects.get()
    shown = api.get(started.json()["url"]).json()
    assert (shown["strong_model"], shown["n_escalated"]) == (STRONG, 2)
    assert shown["strong_requests"] == server.billed_for(STRONG).requests
    assert Decimal(shown["strong_cost_usd"]) == run.strong_cost_usd > 0
    page = api.get(started.json()["annotations_url"], samples="true").json()["results"]
    escalated = [a for a in page if a["stage"] == "strong"]
    assert len(escalated) == 2 and all(a["expression"] == "surprise" for a in escalated)
    assert all(a["cheap_result"]["expression"] in UNSURE_SPLIT for a in escalated)
    assert {s["stage"] for s in escalated[0]["samples"]} == {"cheap", "strong"}
