"""Batch runs: SV-UAMC's rounds sent through the Batch API of the fake server.

A round is every open image's next call; a poll collects a stopped batch, records
the replies on the items and starts the next round. Failed and expired lines go
out again in the next round until the image's limit; cancelling the run cancels
its open batch; a run whose worker stopped with a batch in progress picks it up,
and so does one whose worker stopped before it stored the id of a batch it created.
"""

from __future__ import annotations

import io
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.urls import reverse
from rq.registry import ScheduledJobRegistry

from seke_app.engine.llm.client import BatchState, ClientConfig, VLLMClient, VLLMError
from seke_app.engine.llm.prices import DEFAULT_PRICES
from seke_app.engine.schema import answer_to_schema_json
from seke_app.engine.types import Answer
from seke_app.engine.uamc import UAMCParams
from seke_app.engine.vocab import FEID_AUS
from seke_app.models import Annotation, AnnotationSample, GenerationRun, RunBatch, RunItem
from seke_app.queue import get_queue
from seke_app.runs.batches import run_batch_step
from seke_app.runs.probes import probe_create, probe_run
from seke_app.runs.services import (
    RunRefused,
    run_create,
    run_resume,
    run_retry_failed,
)
from tests.api_client import ApiClient
from tests.conftest import client_for
from tests.factories import make_dataset
from tests.fake_openai import BatchPlan, FakeOpenAI
from tests.workers import emptied_queue, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)

_own_queue = emptied_queue("generation")


def work() -> None:
    work_in_process("generation")


def use_fake(settings: Any, server: FakeOpenAI, *, poll: int = 0) -> None:
    server.point(settings, max_retries=0)
    settings.BATCH_POLL_SECONDS = poll


def _answer(expression: str) -> dict[str, Any]:
    happy = expression == "happiness"
    return answer_to_schema_json(
        Answer(
            expression=expression,
            valence=0.5 if happy else 0.3,
            arousal=0.2 if happy else 0.7,
            aus={au: au in ((6, 12) if happy else (1, 2, 5, 26)) for au in FEID_AUS},
            evidence={"expression": "e", "va": "v", "aus": "a"},
        )
    )


def split_responder(body: dict[str, Any], index: int) -> str:
    """The first samples split 2/1, so that SV-UAMC asks for extra samples; those
    agree with the plurality; the verification confirms."""
    if body["response_format"]["json_schema"]["name"] != "seke_answer":
        verdicts = {g: {"verdict": "confirm"} for g in ("expression", "va", "aus")}
        return json.dumps({"verdicts": verdicts, "answer": _answer("happiness")})
    return json.dumps(_answer("surprise" if index == 2 else "happiness"))


def batch_run(tmp_path: Path, n: int, **options: Any) -> GenerationRun:
    return run_create(
        dataset=make_dataset(tmp_path, n=n, name=options.pop("name", "drawn")),
        backend="openai",
        model_name="gpt-4o",
        params=options.pop("params", UAMCParams()),
        concurrency=1,
        batch=options.pop("batch", True),
        **options,
    )


def _list_cost(server: FakeOpenAI) -> float:
    billed = server.billed
    return DEFAULT_PRICES["gpt-4o"].cost(billed.prompt_tokens, billed.completion_tokens)


def test_it_sends_each_round_as_a_batch_and_writes_the_annotations(
    tmp_path: Path, settings: Any
) -> None:
    with FakeOpenAI(responder=split_responder) as server:
        use_fake(settings, server)
        run = batch_run(tmp_path, 3)
        work()
        run.refresh_from_db()
        assert run.status == GenerationRun.Status.COMPLETED
        assert (run.n_done, run.n_failed) == (3, 0)
        rounds = list(run.batches.order_by("number"))
        assert [r.asked for r in rounds] == [{"first": 3}, {"more": 3}, {"verify": 3}]
        assert [r.asked_text() for r in rounds][1:] == ["extra samples 3", "verification 3"]
        assert all(r.status == "completed" and r.n_completed == 3 for r in rounds)
        assert all(r.collected_at is not None and r.batch_id for r in rounds)
        assert server.batches.lines_answered == 9 and server.request_count == 0
        annotation = Annotation.objects.filter(run=run).first()
        assert annotation is not None
        assert annotation.n_samples == 6 and annotation.expression == "happiness"
        assert AnnotationSample.objects.filter(annotation=annotation).count() == 6
        # Billed at half the list price, recorded to the micro-dollar per line.
        assert float(run.cost_usd) == pytest.approx(_list_cost(server) / 2, abs=1e-5)
        assert (run.requests, run.prompt_tokens) == (9, server.billed.prompt_tokens)


def test_it_writes_the_annotations_a_synchronous_run_writes_from_the_same_replies(
    tmp_path: Path, settings: Any
) -> None:
    with FakeOpenAI(responder=split_responder) as server:
        use_fake(settings, server)
        sync = batch_run(tmp_path, 3, batch=False)
        work()
        batched = run_create(
            dataset=sync.dataset,
            backend="openai",
            model_name="gpt-4o",
            params=UAMCParams(),
            concurrency=1,
            batch=True,
        )
        work()
    skip = {"id", "code", "run", "created_at", "cost_usd"}
    fields = [f.name for f in Annotation._meta.concrete_fields if f.name not in skip]

    def rows(run: GenerationRun) -> list[tuple[Any, ...]]:
        found = Annotation.objects.filter(run=run).order_by("image_id")
        return [tuple(getattr(a, f) for f in fields) for a in found]

    assert len(rows(sync)) == 3
    assert rows(batched) == rows(sync)
    sync.refresh_from_db()
    batched.refresh_from_db()
    assert batched.cost_usd == pytest.approx(sync.cost_usd / 2, abs=Decimal("0.00001"))


def test_it_sends_failed_and_expired_lines_again_then_fails_the_image_with_the_reason(
    tmp_path: Path, settings: Any
) -> None:
    settings.BATCH_LINE_ATTEMPTS = 2
    with FakeOpenAI() as server:
        use_fake(settings, server)
        # Round 1: the first image's line fails, the second's expires. Round 2: the
        # first image's line fails again, its second failure: the image fails.
        server.batches.script(
            BatchPlan(fail_lines=frozenset({0}), expire_lines=frozenset({1})),
            BatchPlan(fail_lines=frozenset({0})),
        )
        run = batch_run(tmp_path, 3)
        work()
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED
    assert (run.n_done, run.n_failed) == (2, 1)
    first = run.batches.get(number=1)
    assert (first.status, first.n_completed, first.n_failed, first.n_expired) == (
        "expired",
        1,
        1,
        1,
    )
    assert run.batches.get(number=2).asked == {"first": 2, "verify": 1}
    failed = RunItem.objects.get(run=run, status=RunItem.Status.FAILED)
    assert failed.batch_failures == 2
    assert "failed 2 times" in failed.error and "HTTP 500" in failed.error
    expired = RunItem.objects.filter(run=run, batch_failures=1).get()
    assert expired.status == RunItem.Status.DONE
    # Retried, the failed image starts afresh and is annotated.
    with FakeOpenAI() as server:
        use_fake(settings, server)
        assert run_retry_failed(run=run) == 1
        work()
    run.refresh_from_db()
    assert (run.status, run.n_done, run.n_failed) == (GenerationRun.Status.COMPLETED, 3, 0)


def test_it_stops_between_rounds_at_the_cost_cap(tmp_path: Path, settings: Any) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server)
        run = batch_run(tmp_path, 2, budget_usd=Decimal("0.0001"))
        work()
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.BUDGET_EXHAUSTED
    assert run.batches.count() == 1 and run.n_done == 0 and run.cost_usd > 0


def test_a_round_the_endpoint_refuses_fails_the_run_with_the_reason(
    tmp_path: Path, settings: Any
) -> None:
    with FakeOpenAI(api_key="sk-another-key") as server:
        use_fake(settings, server)
        run = batch_run(tmp_path, 1)
        work()
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.FAILED
    assert "round 1 could not be sent" in run.error and "401" in run.error
    batch = run.batches.get()
    assert batch.status == RunBatch.Status.FAILED and "refused the credentials" in batch.error


def test_it_refuses_a_batch_run_where_the_endpoint_check_found_no_batch_api(
    tmp_path: Path, settings: Any
) -> None:
    with FakeOpenAI(batch=False) as server:
        use_fake(settings, server)
        settings.SEKE_MODEL = "gpt-4o"
        probe_run(probe_id=probe_create(enqueue=False).id)
        with pytest.raises(RunRefused, match="no Batch API when gpt-4o was checked"):
            batch_run(tmp_path, 1)
        assert not GenerationRun.objects.exists()
        # Without the Batch API, the same run is made synchronously.
        batch_run(tmp_path, 1, batch=False, name="synchronous")


def test_a_batch_that_fails_as_a_whole_fails_its_images_with_the_reason(
    tmp_path: Path, settings: Any
) -> None:
    settings.BATCH_LINE_ATTEMPTS = 1
    with FakeOpenAI() as server:
        use_fake(settings, server)
        server.batches.script(BatchPlan(fail_batch="line 1: unknown model"))
        run = batch_run(tmp_path, 2)
        work()
    run.refresh_from_db()
    assert (run.status, run.n_failed, run.n_done) == (GenerationRun.Status.COMPLETED, 2, 0)
    batch = run.batches.get()
    assert batch.status == "failed" and "unknown model" in batch.error
    assert all("unknown model" in item.error for item in run.items.all())
    assert run.cost_usd == 0


def test_it_picks_up_a_batch_in_progress_after_its_worker_stopped(
    tmp_path: Path, settings: Any
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server, poll=60)
        server.batches.script(BatchPlan(in_progress=2))
        run = batch_run(tmp_path, 2)
        # The round is sent and its poll scheduled a minute ahead, in Redis.
        work()
        queue = get_queue("generation")
        assert ScheduledJobRegistry(queue=queue).count == 1
        batch = run.batches.get()
        assert batch.batch_id and batch.collected_at is None
        # The worker and Redis are gone: the scheduled poll with them. The batch id
        # is in the database, so resuming the run polls the same batch.
        scheduled = ScheduledJobRegistry(queue=queue)
        for job_id in scheduled.get_job_ids():
            scheduled.remove(job_id)
        settings.BATCH_POLL_SECONDS = 0
        run.refresh_from_db()
        assert run.status == GenerationRun.Status.RUNNING
        run_resume(run=run)
        work()
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED and run.n_done == 2
    assert run.batches.count() == 2
    assert run.batches.get(number=1).batch_id == batch.batch_id
    # The batch was never sent twice.
    assert len(server.batches.ids()) == 2


class WorkerKilled(Exception):
    """Stands for the worker dying at the point where it is raised."""


def killed_after_creating_round(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """The job that sends round ``number`` dies as soon as the endpoint has created
    its batch: the round is recorded, the batch exists, its id is not stored."""
    create = VLLMClient.batch_create

    def create_then_die(
        client: VLLMClient, input_file_id: str, *, metadata: dict[str, str]
    ) -> BatchState:
        state = create(client, input_file_id, metadata=metadata)
        if metadata["seke_round"] == str(number):
            raise WorkerKilled(state.id)
        return state

    monkeypatch.setattr(VLLMClient, "batch_create", create_then_die)


def test_a_batch_created_but_not_recorded_is_found_again_not_paid_twice(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    with FakeOpenAI(responder=split_responder) as server:
        use_fake(settings, server)
        run = batch_run(tmp_path, 2)
        killed_after_creating_round(monkeypatch, 2)
        work()
        run.refresh_from_db()
        lost = run.batches.get(number=2)
        assert run.status == GenerationRun.Status.RUNNING
        assert lost.batch_id == "" and lost.collected_at is None
        assert len(server.batches.ids()) == 2
        monkeypatch.undo()
        use_fake(settings, server)
        # Someone else's batch, created since, is newer; the endpoint lists one a page.
        config = ClientConfig(base_url=server.base_url, api_key="sk-other", model="gpt-4o")
        with VLLMClient(config) as other:
            upload = other.batch_upload(b"", filename="other.jsonl")
            other.batch_create(upload, metadata={"seke_run": "another", "seke_round": "2"})
        server.batches.page_size = 1
        with caplog.at_level(logging.WARNING, logger="seke.runs"):
            run_resume(run=run)
            work()
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED and (run.n_done, run.n_failed) == (2, 0)
    lost.refresh_from_db()
    assert lost.batch_id == server.batches.ids()[1] and lost.status == "completed"
    assert lost.input_file_id and lost.n_completed == 2
    assert "found its batch batch_fake2 again by its metadata" in caplog.text
    rounds = list(run.batches.order_by("number"))
    assert [r.asked for r in rounds] == [{"first": 2}, {"more": 2}, {"verify": 2}]
    # One batch per round: the lost one was read, not sent again.
    assert [i for i in server.batches.ids() if i != "batch_fake3"] == [r.batch_id for r in rounds]
    assert server.batches.lines_answered == 6 and run.requests == 6
    assert float(run.cost_usd) == pytest.approx(_list_cost(server) / 2, abs=1e-5)


@pytest.mark.parametrize("created", [True, False], ids=["created", "not-created"])
def test_a_batch_creation_that_got_no_answer_is_looked_up_before_it_is_sent_again(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, created: bool
) -> None:
    create = VLLMClient.batch_create
    asked: list[str] = []

    def unanswered_once(
        client: VLLMClient, input_file_id: str, *, metadata: dict[str, str]
    ) -> BatchState:
        asked.append(metadata["seke_round"])
        if len(asked) > 1:
            return create(client, input_file_id, metadata=metadata)
        if created:  # The endpoint made the batch; its answer was lost on the way.
            create(client, input_file_id, metadata=metadata)
        raise VLLMError(
            "no response within 2 s; gave up after 1 attempt(s)", retryable=True, status=None
        )

    with FakeOpenAI(responder=split_responder) as server:
        use_fake(settings, server)
        monkeypatch.setattr(VLLMClient, "batch_create", unanswered_once)
        run = batch_run(tmp_path, 2)
        work()
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED and (run.n_done, run.n_failed) == (2, 0)
    rounds = list(run.batches.order_by("number"))
    sent = [r for r in rounds if r.batch_id]
    # Every batch the endpoint made is one of the run's rounds: none paid for twice.
    assert server.batches.ids() == [r.batch_id for r in sent]
    assert [r.asked for r in sent] == [{"first": 2}, {"more": 2}, {"verify": 2}]
    if created:
        assert len(rounds) == 3 and rounds[0].batch_id == "batch_fake1"
    else:
        assert len(rounds) == 4 and rounds[0].status == RunBatch.Status.FAILED
        assert "not sent" in rounds[0].error
    assert server.batches.lines_answered == 6 and run.requests == 6


def test_a_round_whose_batch_the_endpoint_does_not_have_is_sent_again(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server)
        run = batch_run(tmp_path, 2)
        # The job dies after recording round 1, before the endpoint created anything.
        upload = VLLMClient.batch_upload

        def die(client: VLLMClient, lines: bytes, *, filename: str) -> str:
            raise WorkerKilled(filename)

        monkeypatch.setattr(VLLMClient, "batch_upload", die)
        work()
        monkeypatch.setattr(VLLMClient, "batch_upload", upload)
        assert run.batches.get().batch_id == "" and server.batches.ids() == []
        run_resume(run=run)
        work()
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED and run.n_done == 2
    lost, *sent = run.batches.order_by("number")
    assert lost.status == RunBatch.Status.FAILED and lost.collected_at is not None
    assert "not sent" in lost.error and "no batch for it" in lost.error
    assert [r.asked for r in sent] == [{"first": 2}, {"verify": 2}]
    assert server.batches.ids() == [r.batch_id for r in sent]


def test_a_round_without_a_batch_id_waits_while_the_endpoint_cannot_be_reached(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server, poll=60)
        run = batch_run(tmp_path, 1)
        killed_after_creating_round(monkeypatch, 1)
        work()
    # The server is gone: whether the batch exists cannot be known, so the round
    # stays open and is looked for again at the next poll.
    run_batch_step(run_id=run.id)
    batch = run.batches.get()
    assert batch.batch_id == "" and batch.collected_at is None
    assert "cannot be looked for yet" in batch.error and "could not connect" in batch.error
    assert ScheduledJobRegistry(queue=get_queue("generation")).count == 1
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.RUNNING


def test_cancelling_the_run_cancels_its_open_batch(
    tmp_path: Path, settings: Any, admin_user: User
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server, poll=60)
        server.batches.script(BatchPlan(in_progress=5))
        run = batch_run(tmp_path, 2)
        work()
        batch = run.batches.get()
        url = reverse("run_cancel", args=[run.code])
        page = client_for(admin_user).post(url, follow=True).content.decode()
        assert "its open batch is cancelled" in page
        assert server.batches.cancelled == [batch.batch_id]
        batch.refresh_from_db()
        assert batch.status == RunBatch.Status.CANCELLING
        # The next poll sees it cancelled, collects nothing and starts no round.
        settings.BATCH_POLL_SECONDS = 0
        run_batch_step(run_id=run.id)
    batch.refresh_from_db()
    run.refresh_from_db()
    assert batch.status == RunBatch.Status.CANCELLED and batch.collected_at is not None
    assert run.status == GenerationRun.Status.CANCELLED and run.batches.count() == 1
    assert server.batches.lines_answered == 0


def test_it_refuses_a_batch_run_of_the_offline_annotator(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, n=1)
    with pytest.raises(RunRefused, match="Batch API is OpenAI's"):
        run_create(dataset=dataset, backend="offline", params=UAMCParams(), batch=True)
    assert not GenerationRun.objects.exists()


FORM = {
    "strategy": "uamc",
    "k0": 3,
    "kmax": 10,
    "step": 2,
    "temperature": 1.0,
    "verify": "on",
    "review_threshold": 0.7,
    "concurrency": 1,
    "batch": "on",
}


def test_the_form_starts_a_batch_run_and_refuses_one_offline(
    tmp_path: Path, settings: Any, admin_user: User
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server)
        dataset = make_dataset(tmp_path, n=2)
        page = client_for(admin_user)
        refused = page.post(
            reverse("run_new"), FORM | {"dataset": dataset.code, "backend": "offline"}
        )
        assert "Batch API is OpenAI" in refused.content.decode()
        assert not GenerationRun.objects.exists()
        started = page.post(
            reverse("run_new"), FORM | {"dataset": dataset.code, "backend": "openai"}
        )
        assert started.status_code == 302
        assert GenerationRun.objects.get().batch


def test_the_form_offers_no_batch_without_an_api_key(settings: Any, admin_user: User) -> None:
    settings.OPENAI_API_KEY = ""
    html = client_for(admin_user).get(reverse("run_new")).content.decode()
    assert 'name="batch"' in html and "disabled" in html.split('name="batch"')[1].split(">")[0]
    assert "Needs OPENAI_API_KEY" in html


def test_the_run_page_shows_each_round(
    tmp_path: Path, settings: Any, admin_user: User, annotator: User
) -> None:
    with FakeOpenAI(responder=split_responder) as server:
        use_fake(settings, server)
        server.batches.script(BatchPlan(), BatchPlan(expire_lines=frozenset({0})))
        run = batch_run(tmp_path, 2)
        work()
    url = reverse("run_progress", args=[run.code])
    assert client_for(annotator).get(url).status_code == 403
    html = client_for(admin_user).get(reverse("run_detail", args=[run.code])).content.decode()
    table = html.split('id="batch-rounds"')[1].split("</table>")[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 4
    assert "first samples 2" in rows[0] and "Completed" in rows[0]
    assert "extra samples 2" in rows[1] and "Expired" in rows[1]
    cells = [c.split("</td>")[0].strip() for c in rows[1].split("<td>")[1:]]
    assert cells[4:8] == ["2", "1", "0", "1"]
    assert "extra samples 1" in rows[2] and "verification 1" in rows[2]


def test_the_api_starts_a_batch_run_and_shows_its_rounds(
    tmp_path: Path, settings: Any, admin_user: User
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server)
        dataset = make_dataset(tmp_path, n=2)
        api = ApiClient(admin_user)
        body = {"dataset": str(dataset.code), "backend": "openai", "batch": True}
        created = api.post("/api/v1/runs", body)
        assert created.status_code == 201 and created.json()["batch"] is True
        work()
        detail = api.get(created.json()["url"]).json()
    assert detail["status"] == "completed"
    assert [r["asked"] for r in detail["rounds"]] == [{"first": 2}, {"verify": 2}]
    assert all(r["batch_id"] and r["collected_at"] for r in detail["rounds"])


def test_the_command_starts_a_batch_run_and_refuses_one_inline(
    tmp_path: Path, settings: Any
) -> None:
    with FakeOpenAI() as server:
        use_fake(settings, server)
        dataset = make_dataset(tmp_path, n=1)
        with pytest.raises(CommandError, match="drop --inline"):
            call_command("run_generation", "--dataset", dataset.name, "--batch", "--inline")
        args = ["--dataset", dataset.name, "--backend", "openai", "--model", "gpt-4o", "--batch"]
        call_command("run_generation", *args, stdout=io.StringIO())
        work()
    run = GenerationRun.objects.get()
    assert run.batch and run.status == GenerationRun.Status.COMPLETED and run.n_done == 1
