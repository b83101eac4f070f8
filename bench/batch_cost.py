"""Cost of a batch run against the same run made synchronously, on the same replies.

Usage (from the repository root)::

    python bench/batch_cost.py [--images 50] [--size 128]

Issue 20's target: a batch run records 50 % of the cost of the same run made
synchronously, with identical annotations for identical replies. Both runs
annotate the same drawn faces with the default SV-UAMC parameters on the
project's fake OpenAI server (``tests/fake_openai.py``), whose replies here
depend only on the request (the image, the number of answers asked, the choice's
index, sample or verification), so that both runs get the same replies: on some
faces the samples disagree and extra samples are drawn, and some verifications
revise.
The synchronous run goes through chat completions, the batch run through the
fake's files and batches endpoints, a round at a time; one burst worker
(``manage.py rqworker generation --burst``) does each, with
``SEKE_BATCH_POLL_SECONDS=0``. Annotations are compared field by field, leaving
out only their ids, run, time and cost.

Storage is throwaway (``bench/_django_env.py``). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import _django_env as env

EXPRESSIONS = ("happiness", "surprise", "sadness", "anger")
SKIPPED = {"id", "code", "run", "created_at", "cost_usd"}


def _image_url(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        for part in message.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                return str(part["image_url"]["url"])
    return ""


def responder(body: dict[str, Any], index: int) -> str:
    """A reply that depends on the request alone (see the module's docstring)."""
    from seke_app.engine.schema import answer_to_schema_json
    from seke_app.engine.types import Answer
    from seke_app.engine.vocab import FEID_AUS

    schema = body["response_format"]["json_schema"]["name"]
    key = f"{_image_url(body)}|{body.get('n', 1)}|{index}|{schema}".encode()
    roll = hashlib.sha256(key).digest()
    image_roll = hashlib.sha256(_image_url(body).encode()).digest()[0]
    # A third of the faces split their samples; the others are unanimous.
    expression = EXPRESSIONS[image_roll % 2]
    if image_roll % 3 == 0 and roll[0] % 3 == 0:
        expression = EXPRESSIONS[2 + roll[1] % 2]
    happy = expression == "happiness"
    answer = answer_to_schema_json(
        Answer(
            expression=expression,
            valence=round(0.5 - roll[2] / 1000, 3) if happy else round(-0.3 + roll[2] / 1000, 3),
            arousal=round(0.2 + roll[3] / 1000, 3),
            aus={au: au in ((6, 12) if happy else (1, 2, 5, 26)) for au in FEID_AUS},
            evidence={"expression": "drawn", "va": "drawn", "aus": "drawn"},
        )
    )
    if schema == "seke_answer":
        return json.dumps(answer)
    verdict = "revise" if roll[4] % 5 == 0 else "confirm"
    verdicts = {"expression": {"verdict": verdict}, "va": {"verdict": "confirm"}}
    return json.dumps({"verdicts": verdicts | {"aus": {"verdict": "confirm"}}, "answer": answer})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=128, help="side of the drawn faces, px")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI(responder=responder) as server:
        endpoint = {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": server.base_url,
            "SEKE_OPENAI_RPM": "0",
            "SEKE_OPENAI_TPM": "0",
            "SEKE_BATCH_POLL_SECONDS": "0",
        }
        bench = env.setup("batch", extra_env=endpoint)
        try:
            measure(bench, args, server)
        finally:
            env.teardown(bench)


def _run(bench: env.BenchEnv, dataset_id: int, *, batch: bool, timeout: float) -> Any:
    from seke_app.engine.uamc import UAMCParams
    from seke_app.models import Dataset, GenerationRun
    from seke_app.runs.services import run_create

    run = run_create(
        dataset=Dataset.objects.get(id=dataset_id),
        backend="openai",
        model_name="gpt-4o",
        params=UAMCParams(),
        concurrency=4,
        batch=batch,
    )
    env.wait_workers(env.start_workers(bench, 1), timeout=timeout)
    run.refresh_from_db()
    if run.status != GenerationRun.Status.COMPLETED:
        raise env.BenchSetupError(f"the run ended as {run.status!r}: {run.error}")
    return run


def _annotations(run: Any) -> list[tuple[Any, ...]]:
    from seke_app.models import Annotation

    fields = [f.name for f in Annotation._meta.concrete_fields if f.name not in SKIPPED]
    rows = Annotation.objects.filter(run=run).order_by("image_id")
    return [tuple(getattr(a, f) for f in fields) for a in rows]


def measure(bench: env.BenchEnv, args: argparse.Namespace, server: Any) -> None:
    print(f"storage: {bench.describe()}")
    print(f"machine: {env.machine_load()}")
    dataset_id = env.import_drawn_dataset(bench, "batch", args.images, args.size)
    sync = _run(bench, dataset_id, batch=False, timeout=args.timeout)
    batched = _run(bench, dataset_id, batch=True, timeout=args.timeout)
    same = _annotations(sync) == _annotations(batched)
    print(f"{args.images} drawn faces, default SV-UAMC parameters, gpt-4o list prices")
    print(f"{'run':<6} {'requests':>8} {'in tokens':>10} {'out tokens':>10} {'cost USD':>10}")
    for name, run in (("sync", sync), ("batch", batched)):
        print(
            f"{name:<6} {run.requests:>8} {run.prompt_tokens:>10} {run.completion_tokens:>10}"
            f" {run.cost_usd:>10.6f}"
        )
    print(f"batch / sync cost: {float(batched.cost_usd) / float(sync.cost_usd):.4f}")
    print(f"annotations identical: {'yes' if same else 'NO'} ({sync.n_done} and {batched.n_done})")
    print(f"flagged: sync {sync.n_flagged}, batch {batched.n_flagged}")
    for round_ in batched.batches.order_by("number"):
        print(
            f"round {round_.number}: {round_.asked_text()} ({round_.n_completed} of"
            f" {round_.n_lines} answered)"
        )
    print(f"fake server: {server.billed.requests} completions billed")


if __name__ == "__main__":
    main()
