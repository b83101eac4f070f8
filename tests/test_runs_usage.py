"""A run records every model call's usage as it returns, so that it matches what the
endpoint billed: also for images that fail after some calls, are taken over, or
finish after their lease passed. The fake server counts what it billed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from seke_app.engine.llm.prices import DEFAULT_PRICES
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Annotation, GenerationRun, RunItem
from seke_app.runs import services as runs
from seke_app.runs.services import run_create
from tests.factories import make_dataset
from tests.fake_openai import FakeOpenAI, Fault
from tests.workers import emptied_queue, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)

# One request answered normally: places the faults after it.
OK = Fault("hang", hang_s=0)
# K0 three samples in one request, unanimous on the fake server, then the verification.
UAMC = UAMCParams()


_own_queue = emptied_queue("generation")


def work() -> None:
    work_in_process("generation")


def use_fake(settings: Any, server: FakeOpenAI) -> None:
    server.point(settings)


def openai_run(tmp_path: Path, n: int, **options: Any) -> GenerationRun:
    return run_create(
        dataset=make_dataset(tmp_path, n=n),
        backend="openai",
        model_name="gpt-4o",
        params=options.pop("params", UAMC),
        concurrency=1,
        **options,
    )


def assert_billed(run: GenerationRun, server: FakeOpenAI) -> None:
    """The run's usage is exactly what the server billed, and priced as GPT-4o."""
    run.refresh_from_db()
    billed = server.billed
    assert (run.requests, run.prompt_tokens, run.completion_tokens) == (
        billed.requests,
        billed.prompt_tokens,
        billed.completion_tokens,
    )
    cost = DEFAULT_PRICES["gpt-4o"].cost(billed.prompt_tokens, billed.completion_tokens)
    # Each call's cost is stored to the micro-dollar, so the sum may be off by that much.
    assert float(run.cost_usd) == pytest.approx(cost, abs=1e-6 * billed.requests)


def test_it_records_the_calls_of_an_image_that_fails_later(tmp_path: Path, settings: Any) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server)
        # The first image's samples are answered, its verification fails twice (the
        # retry too); the second image is answered normally.
        server.script(OK, "500", "500")
        run = openai_run(tmp_path, 2)
        work()
    run.refresh_from_db()
    assert (run.n_done, run.n_failed) == (1, 1)
    assert server.billed.requests == 3
    assert_billed(run, server)
    annotation = Annotation.objects.get(run=run)
    # The annotation keeps its own image's usage; the run has the failed image's too.
    assert run.requests == annotation.requests + 1


def test_it_records_what_a_split_call_spent_before_it_failed(tmp_path: Path, settings: Any) -> None:
    # An endpoint that ignores n: three samples cost three requests, and the third
    # fails after the first two were billed.
    with FakeOpenAI(ignore_n=True) as server:
        use_fake(settings, server)
        server.script(OK, OK, "500", "500")
        run = openai_run(tmp_path, 1)
        work()
    run.refresh_from_db()
    assert run.n_failed == 1 and run.n_done == 0
    assert server.billed.requests == 2
    assert_billed(run, server)


def test_it_records_the_calls_of_an_image_another_worker_took_over(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.RUN_LEASE_SECONDS = 5
    real_renew = runs.lease_renew
    renewals = 0

    def renew_after_a_takeover(item_id: int, worker: str) -> bool:
        # Between the image's two calls, another worker takes the image over (and
        # then dies, leaving a lease that runs out).
        nonlocal renewals
        renewals += 1
        if renewals == 2:
            RunItem.objects.filter(id=item_id).update(worker="elsewhere:1")
        return real_renew(item_id, worker)

    monkeypatch.setattr(runs, "lease_renew", renew_after_a_takeover)
    with FakeOpenAI() as server:
        use_fake(settings, server)
        run = openai_run(tmp_path, 1)
        work()
    run.refresh_from_db()
    assert run.status == "completed" and run.n_done == 1
    assert Annotation.objects.filter(run=run).count() == 1
    # The first worker stopped before the verification; the image was then done
    # again in full: 1 + 2 requests.
    assert server.billed.requests == 3
    assert_billed(run, server)


def test_it_records_the_calls_of_a_worker_that_finishes_after_its_lease(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.RUN_LEASE_SECONDS = 5
    real_store = runs.result_store
    stores = 0

    def store_too_late(run: GenerationRun, item_id: int, *args: Any) -> None:
        # The first result comes back after another worker took the image over.
        nonlocal stores
        stores += 1
        if stores == 1:
            RunItem.objects.filter(id=item_id).update(worker="elsewhere:1")
        real_store(run, item_id, *args)

    monkeypatch.setattr(runs, "result_store", store_too_late)
    with FakeOpenAI() as server:
        use_fake(settings, server)
        run = openai_run(tmp_path, 1)
        work()
    run.refresh_from_db()
    assert stores == 2 and run.n_done == 1
    assert Annotation.objects.filter(run=run).count() == 1
    assert server.billed.requests == 4
    assert_billed(run, server)


def test_it_stops_at_the_cost_cap_counting_an_image_that_failed(
    tmp_path: Path, settings: Any
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server)
        server.script(OK, "500", "500")
        run = openai_run(tmp_path, 3, budget_usd=Decimal("0.000001"))
        work()
    run.refresh_from_db()
    assert run.status == "budget_exhausted"
    assert (run.n_done, run.n_failed) == (0, 1)
    assert RunItem.objects.filter(run=run, status="pending").count() == 2
    assert run.cost_usd >= run.budget_usd
    assert_billed(run, server)
