"""``manage.py feab_evaluate --benchmark DIR|ZIP --predictions FILE [--out-dir DIR]``."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from seke_app.engine.formats import evaluator

ANSWERS = "feab_answers.jsonl"


def _json_lines(lines: Iterator[str], source: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{source}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise CommandError(f"{source}, line {number}: not a JSON object")
        yield value


def _answer_keys(benchmark: Path) -> list[dict[str, Any]]:
    if benchmark.is_dir():
        path = benchmark / ANSWERS
        if not path.is_file():
            raise CommandError(f"{benchmark} holds no {ANSWERS}")
        with path.open(encoding="utf-8") as handle:
            return list(_json_lines(handle, str(path)))
    if zipfile.is_zipfile(benchmark):
        with zipfile.ZipFile(benchmark) as archive:
            try:
                text = archive.read(ANSWERS).decode()
            except KeyError:
                raise CommandError(f"{benchmark} holds no {ANSWERS}") from None
        return list(_json_lines(iter(text.splitlines()), f"{benchmark}:{ANSWERS}"))
    raise CommandError(f"{benchmark} is neither a folder nor a zip archive")


def _predictions(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CommandError(f"no predictions file {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        entries = json.loads(text)
    else:
        entries = list(_json_lines(iter(text.splitlines()), str(path)))
    return evaluator.predictions_by_id(entries)


class Command(BaseCommand):
    help = (
        "Score a model's answers to a FEAB benchmark: expression accuracy, macro-F1 and"
        " per-class recall, AU F1 per AU and mean, VA CCC and RMSE. Predictions are JSON"
        ' Lines of {"id": "<image>/<grain>" or "<image>", "prediction": text or object}.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--benchmark", type=Path, required=True, help="FEAB folder or zip")
        parser.add_argument("--predictions", type=Path, required=True)
        parser.add_argument(
            "--out-dir", type=Path, help="where to write the reports; default: next to predictions"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        keys = _answer_keys(options["benchmark"])
        predictions = _predictions(options["predictions"])
        report = evaluator.score(keys, predictions)
        report["benchmark"] = str(options["benchmark"])
        report["predictions"] = str(options["predictions"])
        out_dir = options["out_dir"] or options["predictions"].resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "feab_report.json").write_text(json.dumps(report, indent=2) + "\n")
        markdown = evaluator.markdown(report)
        (out_dir / "feab_report.md").write_text(markdown + "\n")
        self.stdout.write(markdown)
        self.stdout.write(
            f"\nwritten: {out_dir / 'feab_report.json'}, {out_dir / 'feab_report.md'}"
        )
