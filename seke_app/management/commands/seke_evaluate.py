"""``manage.py seke_evaluate --images PATH --manifest CSV --backend local|openai --strategy ...``.

Runs the engine on a labelled folder without touching the review workflow or the
database, and writes a JSON and a Markdown report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from seke_app.engine.evaluate import evaluate, read_manifest
from seke_app.engine.knowledge import knowledge_text
from seke_app.engine.uamc import STRATEGIES, UAMCParams
from seke_app.engine.vocab import AU_VOCABULARIES, Vocabulary
from seke_app.models import PromptVersion
from seke_app.services.backends import BackendUnavailable, backend_for

BACKENDS = {"local": "offline", "offline": "offline", "openai": "openai"}


class Command(BaseCommand):
    help = (
        "Evaluate SEKE's engine on a labelled image folder: accuracy, macro-F1, VA CCC/RMSE,"
        " AU F1, cost, and how well the confidence separates right from wrong answers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = UAMCParams()
        parser.add_argument(
            "--images",
            type=Path,
            required=True,
            help="folder the manifest's file paths are relative to",
        )
        parser.add_argument("--manifest", type=Path, required=True)
        parser.add_argument("--backend", choices=sorted(BACKENDS), default="local")
        parser.add_argument("--model", default="")
        parser.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy)
        parser.add_argument("--k0", type=int, default=defaults.k0)
        parser.add_argument("--kmax", type=int, default=defaults.kmax)
        parser.add_argument("--step", type=int, default=defaults.step)
        parser.add_argument("--temperature", type=float, default=defaults.temperature)
        parser.add_argument("--review-threshold", type=float, default=defaults.review_threshold)
        parser.add_argument(
            "--no-futility",
            action="store_true",
            help="keep sampling up to kmax even when the next round cannot settle a split",
        )
        parser.add_argument("--no-verify", action="store_true")
        parser.add_argument("--au-vocabulary", choices=sorted(AU_VOCABULARIES), default="feid17")
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
            params = UAMCParams(
                strategy=options["strategy"],
                k0=options["k0"],
                kmax=options["kmax"],
                step=options["step"],
                temperature=options["temperature"],
                review_threshold=options["review_threshold"],
                verify=not options["no_verify"],
                futility=not options["no_futility"],
            )
            items = read_manifest(options["manifest"], options["images"])
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from None
        if options["limit"]:
            items = items[: options["limit"]]
        backend_name = BACKENDS[options["backend"]]
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
        with tqdm(total=len(items), unit="img", desc="evaluating", disable=None) as bar:
            report = evaluate(
                backend,
                items,
                params,
                vocabulary,
                progress=lambda done, total: bar.update(done - bar.n),
            )
        out: Path = options["out"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=2))
        out.with_suffix(".md").write_text(report.to_markdown())
        self.stdout.write(report.to_markdown())
        self.stdout.write(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
