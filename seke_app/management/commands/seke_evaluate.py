"""``manage.py seke_evaluate --images PATH --manifest CSV --backend offline|openai --strategy ...``.

Runs the engine on a labelled folder without touching the review workflow or the
database, and writes a JSON and a Markdown report. ``--given va`` (any of
``expression``, ``va``, ``aus``, comma-separated or repeated) hands those grains
of each image's labels to the backend as known labels and scores only the other
grains: a completion benchmark (``engine/evaluate.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from seke_app.engine.evaluate import check_given, evaluate, read_manifest
from seke_app.engine.knowledge import knowledge_text
from seke_app.engine.types import GRAINS
from seke_app.engine.uamc import UAMCParams
from seke_app.engine.vocab import AU_VOCABULARIES, Vocabulary
from seke_app.management.commands._uamc import add_uamc_arguments
from seke_app.models import GenerationRun, PromptVersion
from seke_app.runs.backends import BackendUnavailable, backend_for


def _grains(groups: list[list[str] | str]) -> list[str]:
    """The parsed ``--given`` groups (or plain names from ``call_command``) as one list."""
    return [g for group in groups for g in ([group] if isinstance(group, str) else group)]


class Command(BaseCommand):
    help = (
        "Evaluate SEKE's engine on a labelled image folder: accuracy, macro-F1, VA CCC/RMSE,"
        " AU F1, cost, and how well the confidence separates right from wrong answers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--images",
            type=Path,
            required=True,
            help="folder the manifest's file paths are relative to",
        )
        parser.add_argument("--manifest", type=Path, required=True)
        parser.add_argument(
            "--backend",
            choices=GenerationRun.Backend.values,
            default=GenerationRun.Backend.OFFLINE,
        )
        parser.add_argument("--model", default="")
        add_uamc_arguments(parser)
        parser.add_argument("--au-vocabulary", choices=sorted(AU_VOCABULARIES), default="feid17")
        parser.add_argument(
            "--given",
            action="extend",
            nargs="+",
            default=[],
            metavar="GRAIN",
            type=lambda text: [g.strip() for g in text.split(",") if g.strip()],
            help=f"grains of the labels handed to the backend as known ({', '.join(GRAINS)}); "
            "they are not scored",
        )
        parser.add_argument("--limit", type=int, default=0, help="only the first N images")
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument(
            "--out",
            type=Path,
            default=Path("evaluation"),
            help="report path without suffix: writes OUT.json and OUT.md",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            params = UAMCParams.from_options(options)
            given = check_given(_grains(options["given"]))
            items = read_manifest(options["manifest"], options["images"])
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from None
        if options["limit"]:
            items = items[: options["limit"]]
        backend_name = options["backend"]
        version = PromptVersion(number=0, knowledge_text=knowledge_text(), exemplars=[])
        try:
            backend = backend_for(
                backend_name,
                options["model"] or (settings.SEKE_MODEL if backend_name == "openai" else ""),
                version,
                concurrency=options["concurrency"],
            )
        except BackendUnavailable as exc:
            raise CommandError(str(exc)) from None
        vocabulary = Vocabulary.named(options["au_vocabulary"])
        with backend, tqdm(total=len(items), unit="img", desc="evaluating", disable=None) as bar:
            report = evaluate(
                backend,
                items,
                params,
                vocabulary,
                given=given,
                progress=lambda done, total: bar.update(done - bar.n),
            )
        out: Path = options["out"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=2))
        out.with_suffix(".md").write_text(report.to_markdown())
        self.stdout.write(report.to_markdown())
        self.stdout.write(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
