"""Prices: the dated table, batch prices, overrides, image tokens, and unknown costs
shown as unknown (never $0) on the pages, in the API and in webhooks."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.feedback.services import gold_check_create, prompt_version_create
from review.models import GoldCheck
from review.tasks.services import Decision, decision_record, task_claim_next
from seke_app.engine.llm.prices import (
    DEFAULT_PRICES,
    PRICES_AS_OF,
    ModelPrice,
    image_tokens,
    model_price,
    parse_prices,
)
from seke_app.engine.uamc import UAMCParams
from seke_app.insights.comparisons import Side, compare
from seke_app.models import GenerationRun
from seke_app.queue import get_queue
from seke_app.runs.backends import backend_for, model_priced
from seke_app.runs.prompts import prompt_version_active
from seke_app.runs.services import RunRefused, run_create
from seke_app.webhooks import events
from tests.api_client import ApiClient
from tests.conftest import client_for
from tests.factories import make_dataset, scripted_images
from tests.fake_openai import FakeOpenAI
from tests.fake_openai import image_tokens as fake_image_tokens
from tests.test_dashboards import annotation_row, make_run
from tests.workers import work_in_process

LIST_PRICES = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o4-mini": (1.10, 4.40),
}


def test_the_table_is_dated_and_holds_the_list_prices_with_half_price_batches() -> None:
    assert date.fromisoformat(PRICES_AS_OF)
    assert set(DEFAULT_PRICES) == set(LIST_PRICES)
    for model, (rate_in, rate_out) in LIST_PRICES.items():
        price = DEFAULT_PRICES[model]
        assert (price.input, price.output) == (rate_in, rate_out)
        assert (price.batch_input, price.batch_output) == (rate_in / 2, rate_out / 2)


def test_a_price_costs_tokens_at_list_or_batch_rates() -> None:
    price = ModelPrice(2.0, 8.0, 1.0, 4.0)
    assert price.cost(1_000_000, 500_000) == pytest.approx(6.0)
    assert price.cost(1_000_000, 500_000, batch=True) == pytest.approx(3.0)


def test_overrides_correct_and_extend_the_table() -> None:
    dear = ModelPrice.listed(5.0, 20.0)
    overrides = {"gpt-4o": dear, "llava:13b": ModelPrice.listed(0.0, 0.0)}
    assert model_price("gpt-4o-2024-11-20", overrides) == dear
    assert model_price("llava:13b", overrides) == ModelPrice(0.0, 0.0, 0.0, 0.0)
    assert model_price("llava:13b") is None


def test_it_parses_price_overrides_with_batch_prices_defaulting_to_half() -> None:
    parsed = parse_prices(
        '{"azure-4o": {"input": 2.5, "output": 10},'
        ' "cheap": {"input": 1, "output": 2, "batch_input": 0.9, "batch_output": 1.9}}'
    )
    assert parsed == {
        "azure-4o": ModelPrice(2.5, 10.0, 1.25, 5.0),
        "cheap": ModelPrice(1, 2, 0.9, 1.9),
    }
    assert parse_prices("{}") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpt-4o=2.5", "is not JSON"),
        ('[{"input": 1}]', "must be a JSON object"),
        ('{"m": 2.5}', "m: the price must be an object"),
        ('{"m": {"input": 1}}', "m: output missing"),
        ('{"m": {"input": 1, "output": 2, "cached": 0.5}}', "m: unknown field(s) cached"),
        ('{"m": {"input": "1", "output": 2}}', "input must be a number"),
        ('{"m": {"input": 1, "output": -2}}', "output must be a finite, non-negative price"),
        ('{"m": {"input": true, "output": 2}}', "input must be a number"),
        ('{" ": {"input": 1, "output": 2}}', "empty model name"),
    ],
)
def test_it_refuses_bad_price_overrides_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_prices(text)


@pytest.mark.parametrize(
    ("size", "detail", "model", "tokens"),
    [
        ((4096, 4096), "low", "gpt-4o", 85),
        ((512, 512), "high", "gpt-4o", 85 + 170),
        ((1024, 1024), "high", "gpt-4o", 85 + 170 * 4),  # 768 x 768: 2 x 2 tiles
        ((2048, 4096), "high", "gpt-4.1", 85 + 170 * 6),  # 768 x 1536: 2 x 3 tiles
        ((300, 200), "auto", "gpt-4o-2024-08-06", 85 + 170),
        ((512, 512), "high", "gpt-4o-mini", 2833 + 5667),
        ((64, 64), "low", "gpt-4o-mini", 2833),
    ],
)
def test_it_counts_image_tokens_by_the_tile_rule(
    size: tuple[int, int], detail: str, model: str, tokens: int
) -> None:
    assert image_tokens(*size, detail=detail, model=model) == tokens


def test_its_image_tokens_agree_with_the_fake_servers_count_for_gpt_4o() -> None:
    for width, height in [(48, 48), (512, 300), (1000, 3000), (5000, 800), (769, 769)]:
        for detail in ("low", "high"):
            assert image_tokens(width, height, detail=detail, model="gpt-4o") == (
                fake_image_tokens(width, height, detail)
            )


def test_it_makes_no_image_estimate_for_a_model_whose_rule_it_does_not_know() -> None:
    assert image_tokens(512, 512, detail="high", model="llava:13b") is None
    assert image_tokens(512, 512, detail="high", model="o4-mini") is None
    with pytest.raises(ValueError, match="detail must be"):
        image_tokens(512, 512, detail="medium", model="gpt-4o")


# -- runs whose model has no price --------------------------------------------------


@pytest.fixture
def openai_settings(settings: Any) -> Any:
    settings.OPENAI_API_KEY = "sk-test-prices"
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.SEKE_PRICES = {"my-deployment": ModelPrice.listed(1.0, 4.0)}
    return settings


@pytest.mark.django_db
def test_it_knows_which_runs_are_priced(openai_settings: Any) -> None:
    assert model_priced("offline", "seke-offline-cnn") is True
    assert model_priced("openai", "gpt-4o-2024-08-06") is True
    assert model_priced("openai", "my-deployment") is True
    assert model_priced("openai", "llava:13b") is False


@pytest.mark.django_db
def test_the_client_gets_the_overrides_from_the_settings(openai_settings: Any) -> None:
    version = _version()
    with backend_for("openai", "my-deployment", version, check_only=True) as backend:
        assert backend.client.priced is True  # type: ignore[attr-defined]
    with backend_for("openai", "llava:13b", version, check_only=True) as backend:
        assert backend.client.priced is False  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_a_run_on_an_unpriced_model_is_marked_and_refuses_a_cost_cap(
    tmp_path: Path, openai_settings: Any
) -> None:
    dataset = make_dataset(tmp_path, n=2)
    common: dict[str, Any] = {"dataset": dataset, "backend": "openai", "params": UAMCParams()}
    with pytest.raises(RunRefused, match="has no known price"):
        run_create(model_name="llava:13b", budget_usd=Decimal("5"), enqueue=False, **common)
    assert not GenerationRun.objects.exists()

    unpriced = run_create(model_name="llava:13b", enqueue=False, **common)
    priced = run_create(
        model_name="my-deployment", budget_usd=Decimal("5"), enqueue=False, **common
    )

    assert unpriced.priced is False and unpriced.known_cost is None
    assert priced.priced is True and priced.known_cost == Decimal(0)


def _version() -> Any:
    return prompt_version_active()


def _finished_run(tmp_path: Path, *, priced: bool) -> GenerationRun:
    return GenerationRun.objects.create(
        dataset=make_dataset(tmp_path, n=1, name="priced" if priced else "unpriced"),
        backend="openai",
        model_name="gpt-4o" if priced else "llava:13b",
        prompt_version=_version(),
        status=GenerationRun.Status.COMPLETED,
        requests=4,
        prompt_tokens=4000,
        completion_tokens=800,
        cost_usd=Decimal("0.018") if priced else Decimal(0),
        priced=priced,
    )


@pytest.mark.django_db
def test_pages_show_an_unknown_cost_as_unknown(tmp_path: Path, admin_user: User) -> None:
    unpriced = _finished_run(tmp_path, priced=False)
    priced = _finished_run(tmp_path, priced=True)
    client = client_for(admin_user)

    rows = client.get(reverse("run_list")).content.decode()
    assert rows.count(">unknown<") == 1
    assert "$0.0180" in rows and "$0.0000" not in rows

    for name in ("run_detail", "run_dashboard"):
        page = client.get(reverse(name, args=[unpriced.code])).content.decode()
        cost = re.search(r'id="run-cost">(.*?)</d[di]v?>', page, re.S)
        assert cost is not None, name
        assert "unknown" in cost.group(1) and "$" not in cost.group(1), name
        known = client.get(reverse(name, args=[priced.code])).content.decode()
        assert "$0.0180" in known, name


@pytest.mark.django_db
def test_the_api_and_webhooks_give_null_for_an_unknown_cost(
    tmp_path: Path, admin_user: User
) -> None:
    unpriced = _finished_run(tmp_path, priced=False)
    priced = _finished_run(tmp_path, priced=True)
    api = ApiClient(admin_user)

    assert api.get(f"/api/v1/runs/{unpriced.code}").json()["cost_usd"] is None
    assert Decimal(api.get(f"/api/v1/runs/{priced.code}").json()["cost_usd"]) == Decimal("0.018")
    unknown, known = events.run_finished(unpriced), events.run_finished(priced)
    assert unknown is not None and known is not None
    assert unknown.data["cost_usd"] is None
    assert Decimal(known.data["cost_usd"]) == Decimal("0.018")


@pytest.mark.django_db
def test_a_comparison_with_an_unpriced_run_gives_its_cost_as_unknown(admin_user: User) -> None:
    images = scripted_images(3)
    rows = [annotation_row(i, expression="happiness", cost_usd=Decimal("0.002")) for i in images]
    priced, unpriced = make_run(rows), make_run(rows)
    GenerationRun.objects.filter(id=unpriced.id).update(priced=False)
    unpriced.refresh_from_db()

    result = compare(a=Side.of_run(priced), b=Side.of_run(unpriced))

    assert result.a.cost_known and result.a.cost_per_annotation == pytest.approx(0.002)
    assert not result.b.cost_known and result.b.cost_per_annotation is None
    page = client_for(admin_user).get(
        reverse("compare"), {"a": str(priced.code), "b": str(unpriced.code)}
    )
    table = page.content.decode()
    assert "<td>$0.0060</td><td>unknown</td>" in table


@pytest.mark.django_db(transaction=True)
def test_a_gold_check_on_an_unpriced_model_gives_its_cost_as_unknown(
    tmp_path: Path, settings: Any, admin_user: User, annotator: User
) -> None:
    for name in ("generation", "default"):
        get_queue(name).empty()
    dataset = make_dataset(tmp_path, n=2)
    run_create(dataset=dataset, backend="offline", params=UAMCParams(review_threshold=1.0))
    work_in_process("generation")
    while (task := task_claim_next(user=annotator)) is not None:
        decision = Decision(action="correct", expression="happiness", valence=0.6, arousal=0.2)
        decision_record(task=task, user=annotator, decision=decision)
    parent = prompt_version_active()
    version = prompt_version_create(
        parent=parent,
        name="child",
        knowledge_text=parent.knowledge_text,
        rule_notes="Look at the mouth.",
        exemplars=[],
        calibration={},
        user=admin_user,
    )
    with FakeOpenAI() as server:
        settings.OPENAI_API_KEY = "sk-test-prices"
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_RPM = settings.OPENAI_TPM = 0
        check = gold_check_create(
            version=version,
            backend="openai",
            model_name="llava:13b",
            include_imported=False,
            user=admin_user,
        )
        work_in_process("default")
    check.refresh_from_db()
    assert check.status == GoldCheck.Status.DONE, check.error
    for side in ("parent", "version"):
        assert check.report[side]["cost_per_image"] is None
        assert check.report[side]["cost_usd"] is None
    page = client_for(admin_user).get(reverse("review:version_detail", args=[version.code]))
    assert "<td>cost per image (USD)</td><td>unknown</td><td>unknown</td>" in page.content.decode()
