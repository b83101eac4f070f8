"""``manage.py export_feab --dataset NAME [--test-fraction 0.2] [--seed N] --out PATH``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from seke_app.exports.services import ExportOptions
from seke_app.management.commands._export import add_common_arguments, common_options, run_export


class Command(BaseCommand):
    help = (
        "Export a FEAB benchmark: a held-out split of the curated dataset (subject-disjoint"
        " when subjects are known, stratified by expression otherwise) with questions and"
        " answer keys."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--test-fraction", type=float, default=0.2)
        add_common_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        export_options = ExportOptions(
            test_fraction=options["test_fraction"], **common_options(options)
        )
        run_export(self, kind="feab", options=options, export_options=export_options)
