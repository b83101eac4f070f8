"""``manage.py run_generation --dataset NAME [--backend ...] [parameters] [--wait]``."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from seke_app.engine.uamc import UAMCParams
from seke_app.management.commands._uamc import add_uamc_arguments
from seke_app.models import Dataset, GenerationRun
from seke_app.queue import QueueUnavailable
from seke_app.runs.services import ImageFilter, RunRefused, run_create


class Command(BaseCommand):
    help = "Start a generation run over a dataset (the same service the runs page uses)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--backend", choices=GenerationRun.Backend.values, default="offline")
        parser.add_argument("--model", default="", help="default: SEKE_MODEL or the offline CNN")
        add_uamc_arguments(parser)
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument(
            "--double-review",
            type=float,
            default=0.0,
            help="share of flagged images reviewed twice, independently (0-1)",
        )
        parser.add_argument("--budget", help="cost cap in USD; the run stops cleanly there")
        parser.add_argument("--split", default="")
        parser.add_argument(
            "--only-unconfident",
            action="store_true",
            help="only images without an auto-accepted or human label",
        )
        parser.add_argument("--wait", action="store_true", help="show progress until it ends")

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = Dataset.objects.filter(name=options["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset called {options['dataset']!r}")
        try:
            params = UAMCParams.from_options(options)
            budget = Decimal(options["budget"]) if options["budget"] else None
            run = run_create(
                dataset=dataset,
                backend=options["backend"],
                model_name=options["model"],
                params=params,
                budget_usd=budget,
                concurrency=options["concurrency"],
                double_review_share=options["double_review"],
                image_filter=ImageFilter(
                    split=options["split"], only_unconfident=options["only_unconfident"]
                ),
            )
        except (ValueError, InvalidOperation, RunRefused, QueueUnavailable) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"run {run.code}: {run.n_total} images queued ({run.model_name})")
        if options["wait"]:
            self._wait(run)

    def _wait(self, run: GenerationRun) -> None:
        with tqdm(total=run.n_total, unit="img", desc="annotating", disable=None) as bar:
            while True:
                run.refresh_from_db()
                bar.n = run.n_done + run.n_failed
                bar.set_postfix(flagged=run.n_flagged, failed=run.n_failed, status=run.status)
                if run.is_finished():
                    break
                time.sleep(1)
        self.stdout.write(
            f"run {run.code} {run.get_status_display().lower()}: {run.n_done} done"
            f" ({run.n_accepted} auto-accepted, {run.n_flagged} flagged), {run.n_failed} failed,"
            f" cost ${run.cost_usd:.4f}"
        )
        if run.error:
            self.stderr.write(run.error)
