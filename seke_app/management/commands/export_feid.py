"""``manage.py export_feid --dataset NAME [--format llava|openai|sharegpt] --out PATH``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from seke_app.engine.formats.feid import FORMATS
from seke_app.exports.services import ExportOptions
from seke_app.management.commands._export import add_common_arguments, common_options, run_export


class Command(BaseCommand):
    help = (
        "Export a dataset's curated labels as FEID instruction-tuning data (the same service"
        " the export page uses): LLaVA conversations, OpenAI chat fine-tuning or ShareGPT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--format",
            action="append",
            choices=FORMATS,
            dest="formats",
            help="repeat for several; default llava",
        )
        parser.add_argument(
            "--openai-images",
            choices=("url", "data_url"),
            default="url",
            help="OpenAI image parts: the path/URL, or the image embedded as a data URL",
        )
        parser.add_argument(
            "--holdout", default="", help="code of a finished FEAB export whose images to leave out"
        )
        add_common_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        export_options = ExportOptions(
            formats=tuple(options["formats"] or ("llava",)),
            openai_images=options["openai_images"],
            holdout=options["holdout"],
            **common_options(options),
        )
        run_export(self, kind="feid", options=options, export_options=export_options)
