"""``manage.py import_faces PATH --dataset NAME [--manifest CSV]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from seke_app.datasets.services import ImportRefused, ImportReport, dataset_import
from seke_app.engine.vocab import AU_VOCABULARIES


class Command(BaseCommand):
    help = (
        "Import face images from a folder tree or a zip file into a dataset, with the human"
        " labels of an optional manifest CSV (file, expression, valence, arousal, au_N,"
        " subject, split). Re-importing the same images changes nothing. Fails, creating"
        " nothing, when no image is accepted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="a folder of images or a zip file")
        parser.add_argument("--dataset", required=True, help="dataset name (a slug)")
        parser.add_argument(
            "--manifest",
            type=Path,
            help="CSV of labels; default: manifest.csv at the top of PATH, if present",
        )
        parser.add_argument(
            "--au-vocabulary",
            choices=sorted(AU_VOCABULARIES),
            help="AU vocabulary of a new dataset (default feid17; ckplus for CK+'s AUs)",
        )
        parser.add_argument("--licence", default="", help="licence note stored with each image")
        parser.add_argument(
            "--show-rejected", type=int, default=20, help="how many rejections to list"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bar: tqdm[Any] | None = None

        def progress(done: int, total: int, report: ImportReport) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, unit="img", desc="importing", disable=None)
            bar.n = done
            bar.refresh()

        try:
            report = dataset_import(
                path=options["path"],
                dataset_name=options["dataset"],
                manifest_path=options["manifest"],
                au_vocabulary=options["au_vocabulary"],
                licence_note=options["licence"],
                progress=progress,
            )
        except ImportRefused as exc:
            raise CommandError(str(exc)) from None
        finally:
            if bar is not None:
                bar.close()
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        limit = options["show_rejected"]
        for _, _, detail in report.rejected[:limit]:
            self.stderr.write(f"rejected: {detail}")
        if len(report.rejected) > limit:
            self.stderr.write(f"... and {len(report.rejected) - limit} more rejections")
        if report.failed():
            raise CommandError(f"{report.failure()}\n{report.summary()}")
        self.stdout.write(self.style.SUCCESS(report.summary()))
