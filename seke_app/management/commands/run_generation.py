"""``manage.py run_generation --dataset NAME [--backend ...] [parameters] [--wait | --inline]``.

``--wait`` follows the run while workers process it; when no worker listens on
the generation queue it says so within ``NO_WORKER_GRACE_S`` seconds, with the
command that starts one. ``--inline`` processes the run in this command's own
process instead, with no worker and no job in the queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from tqdm import tqdm

from seke_app.engine.uamc import UAMCParams
from seke_app.management.commands._uamc import add_uamc_arguments
from seke_app.models import Dataset, GenerationRun
from seke_app.queue import QueueUnavailable
from seke_app.runs.services import (
    ImageFilter,
    RunRefused,
    generation_workers,
    run_cancel,
    run_create,
    run_process_chunk,
)

# How long --wait gives a worker to show up before saying that none listens (a
# worker started together with the command registers within a second or two).
NO_WORKER_GRACE_S = 3.0
NO_WORKER = (
    "No worker listens on the generation queue, so the run waits there. Start one in"
    " another terminal with `python manage.py rqworker generation` (it picks the run"
    " up), or press Ctrl-C and run this command again with --inline to annotate in"
    " this process."
)


class Command(BaseCommand):
    help = "Start a generation run over a dataset (the same service the runs page uses)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", required=True)
        parser.add_argument(
            "--name",
            default="",
            help="what sets this run apart (optional); runs are also numbered per dataset",
        )
        parser.add_argument("--backend", choices=GenerationRun.Backend.values, default="offline")
        parser.add_argument("--model", default="", help="default: SEKE_MODEL or the offline CNN")
        parser.add_argument(
            "--strong-model",
            default="",
            help="a cascade (openai backend): the images --model leaves unsure are annotated"
            " again by this model, whose answer decides",
        )
        add_uamc_arguments(parser)
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument(
            "--double-review",
            type=float,
            default=0.0,
            help="share of flagged images reviewed twice, independently (0-1)",
        )
        parser.add_argument(
            "--audit-share",
            type=float,
            default=0.05,
            help="share of all images labelled blind by reviewers, drawn at random"
            " (0-1; at least 50 images where the run has them; 0: no audit)",
        )
        parser.add_argument("--budget", help="cost cap in USD; the run stops cleanly there")
        parser.add_argument("--split", default="")
        parser.add_argument(
            "--only-unconfident",
            action="store_true",
            help="only images without an auto-accepted or human label",
        )
        parser.add_argument(
            "--batch",
            action="store_true",
            help="send each round of calls as one OpenAI Batch API job (half price, answered"
            " within 24 h; openai backend only, needs a worker)",
        )
        parser.add_argument("--wait", action="store_true", help="show progress until it ends")
        parser.add_argument(
            "--inline",
            action="store_true",
            help="annotate in this process, with no worker (implies --wait)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch"] and options["inline"]:
            raise CommandError(
                "a batch run waits for its batches in the workers' queue: drop --inline"
            )
        dataset = Dataset.objects.filter(name=options["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset called {options['dataset']!r}")
        try:
            params = UAMCParams.from_options(options)
            budget = Decimal(options["budget"]) if options["budget"] else None
            run = self._create(dataset, params, budget, options)
        except (ValueError, InvalidOperation, RunRefused, QueueUnavailable) as exc:
            raise CommandError(str(exc)) from None
        if options["inline"]:
            self.stdout.write(f"run {run.label} ({run.code}): {run.n_total} images, annotated here")
            self._inline(run)
            return
        models = run.model_name + (f", escalating to {run.strong_model}" if run.is_cascade else "")
        self.stdout.write(f"run {run.label} ({run.code}): {run.n_total} images queued ({models})")
        if options["wait"]:
            self._wait(run, hint=True)

    def _create(
        self, dataset: Dataset, params: UAMCParams, budget: Decimal | None, options: dict[str, Any]
    ) -> GenerationRun:
        return run_create(
            dataset=dataset,
            backend=options["backend"],
            model_name=options["model"],
            strong_model=options["strong_model"],
            params=params,
            budget_usd=budget,
            concurrency=options["concurrency"],
            double_review_share=options["double_review"],
            audit_share=options["audit_share"],
            image_filter=ImageFilter(
                split=options["split"], only_unconfident=options["only_unconfident"]
            ),
            name=options["name"],
            enqueue=not options["inline"],
            batch=options["batch"],
        )

    def _inline(self, run: GenerationRun) -> None:
        """Process the run in a thread of this process while the main thread shows progress."""
        failure: list[BaseException] = []

        def process() -> None:
            try:
                run_process_chunk(run_id=run.id, item_ids=[])
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)
            finally:
                connection.close()

        worker = threading.Thread(target=process, name="seke-inline-run")
        worker.start()
        try:
            self._wait(run, hint=False, until=lambda: not worker.is_alive())
        except KeyboardInterrupt:
            # Images in flight finish and are kept; nothing new starts.
            run_cancel(run=run)
            self.stderr.write("cancelled: the images in flight finish, then the command ends")
            worker.join()
            raise
        worker.join()
        if failure:
            raise CommandError(f"the run stopped: {failure[0]!r}")

    def _wait(
        self,
        run: GenerationRun,
        *,
        hint: bool,
        until: Callable[[], bool] | None = None,
    ) -> None:
        started = time.monotonic()
        with tqdm(total=run.n_total, unit="img", desc="annotating", disable=None) as bar:
            while True:
                run.refresh_from_db()
                bar.n = run.n_done + run.n_failed
                bar.set_postfix(flagged=run.n_flagged, failed=run.n_failed, status=run.status)
                if run.is_finished() or (until is not None and until()):
                    break
                if hint and time.monotonic() - started >= NO_WORKER_GRACE_S:
                    hint = False
                    if run.status == GenerationRun.Status.QUEUED:
                        self._say_if_no_worker()
                time.sleep(0.2 if hint else 1)
        run.refresh_from_db()
        self.stdout.write(
            f"run {run.code} {run.get_status_display().lower()}: {run.n_done} done"
            f" ({run.n_accepted} auto-accepted, {run.n_flagged} flagged), {run.n_failed} failed,"
            f" cost {'unknown' if run.known_cost is None else f'${run.known_cost:.4f}'}"
        )
        if run.is_cascade:
            self.stdout.write(
                f"cascade: {run.n_escalated} of {run.n_done} escalated to {run.strong_model};"
                f" cost {run.model_name} ${run.cheap_cost_usd:.4f},"
                f" {run.strong_model} ${run.strong_cost_usd:.4f}"
            )
        if run.error:
            self.stderr.write(run.error)

    def _say_if_no_worker(self) -> None:
        try:
            workers = generation_workers()
        except QueueUnavailable as exc:
            self.stderr.write(f"cannot tell whether a worker listens: {exc}")
            return
        if workers == 0:
            self.stderr.write(NO_WORKER)
