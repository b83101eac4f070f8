"""``manage.py export_labelstudio --dataset NAME [--image-root PREFIX] --out PATH``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from seke_app.exports.services import ExportOptions
from seke_app.management.commands._export import add_common_arguments, common_options, run_export


class Command(BaseCommand):
    help = (
        "Export a dataset's curated labels as Label Studio tasks (human labels as"
        " annotations, accepted machine labels as predictions) with the labeling config."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_common_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        export_options = ExportOptions(**common_options(options))
        run_export(self, kind="labelstudio", options=options, export_options=export_options)
