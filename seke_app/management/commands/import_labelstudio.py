"""``manage.py import_labelstudio FILE --dataset NAME``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from seke_app.datasets.labelstudio import LabelStudioRefused, labelstudio_import
from seke_app.models import Dataset


class Command(BaseCommand):
    help = (
        "Read a Label Studio JSON export: each task's latest annotation becomes the human"
        " labels of the matching image (by SEKE image code, else by file name)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="Label Studio JSON export (a list of tasks)")
        parser.add_argument("--dataset", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = Dataset.objects.filter(name=options["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset called {options['dataset']!r}")
        try:
            report = labelstudio_import(dataset=dataset, path=options["file"])
        except LabelStudioRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(report.summary())
