"""What the export commands share: the option flags, and running or waiting for the job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from seke_app.engine.formats.records import GRAINS, SOURCES
from seke_app.exports.services import (
    ExportOptions,
    ExportRefused,
    export_create,
    export_file,
    export_run,
)
from seke_app.media import download, exports_storage, local_path
from seke_app.models import Dataset
from seke_app.models.exports import Export
from seke_app.queue import QueueUnavailable

# How long a queued export may wait before the command says that a worker is needed.
WORKER_HINT_SECONDS = 10


def add_common_arguments(parser: CommandParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name")
    parser.add_argument(
        "--grains", default=",".join(GRAINS), help=f"comma-separated, of {', '.join(GRAINS)}"
    )
    parser.add_argument(
        "--admit",
        action="append",
        default=[],
        metavar="GRAIN=SOURCES",
        help=f"provenance admitted for a grain, e.g. aus=human; sources: {', '.join(SOURCES)}",
    )
    parser.add_argument("--min-confidence", type=float, default=0.0)
    parser.add_argument("--split", default="", help="only images of this dataset split")
    parser.add_argument("--copy-images", action="store_true", help="copy images into the zip")
    parser.add_argument("--image-root", default="", help="prefix of referenced image paths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-archive", action="store_true", help="write one bare data file")
    parser.add_argument("--out", type=Path, help="copy the finished file here (file or folder)")
    parser.add_argument(
        "--inline",
        action="store_true",
        help="run in this process instead of queueing a job for an rqworker on 'exports'",
    )


def _sources(admit: list[str]) -> dict[str, tuple[str, ...]]:
    sources = {grain: SOURCES for grain in GRAINS}
    for entry in admit:
        grain, _, names = entry.partition("=")
        if grain not in GRAINS or not names:
            raise CommandError(f"--admit {entry!r}: expected GRAIN=SOURCE[,SOURCE]")
        sources[grain] = tuple(n.strip() for n in names.split(",") if n.strip())
    return sources


def common_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "grains": tuple(g.strip() for g in options["grains"].split(",") if g.strip()),
        "sources": _sources(options["admit"]),
        "min_confidence": options["min_confidence"],
        "split": options["split"],
        "images": "copy" if options["copy_images"] else "reference",
        "image_root": options["image_root"],
        "seed": options["seed"],
        "archive": not options["no_archive"],
    }


def run_export(
    command: BaseCommand, *, kind: str, options: dict[str, Any], export_options: ExportOptions
) -> Export:
    """Create the export, run it here or wait for a worker, and copy the file to --out."""
    dataset = Dataset.objects.filter(name=options["dataset"]).first()
    if dataset is None:
        raise CommandError(f"no dataset called {options['dataset']!r}")
    inline = options["inline"]
    try:
        export = export_create(
            dataset=dataset, kind=kind, options=export_options, enqueue=not inline
        )
    except (ExportRefused, QueueUnavailable) as exc:
        raise CommandError(str(exc)) from None
    command.stdout.write(f"export {export.code} of {dataset.name} ({export.get_kind_display()})")
    if inline:
        export_run(export_id=export.id)
    else:
        _wait(command, export)
    export.refresh_from_db()
    if export.status != Export.Status.DONE:
        raise CommandError(
            f"the export ended {export.get_status_display().lower()}: {export.error}"
        )
    name = export_file(export)
    storage = exports_storage()
    where = local_path(storage, name) or f"{name} in the exports storage"
    command.stdout.write(
        f"{export.n_written} records from {export.n_done} images read; file {where}"
    )
    if options.get("out"):
        out: Path = options["out"]
        target = out / export.file_name() if out.is_dir() else out
        download(storage, name, target)
        command.stdout.write(f"copied to {target}")
    return export


def _wait(command: BaseCommand, export: Export) -> None:
    started = time.monotonic()
    hinted = False
    with tqdm(total=None, unit="img", desc="exporting", disable=None) as bar:
        while True:
            export.refresh_from_db()
            bar.total = export.n_total or None
            bar.n = export.n_done
            bar.set_postfix(status=export.status, written=export.n_written)
            if export.is_finished():
                return
            waited = time.monotonic() - started
            if (
                export.status == Export.Status.QUEUED
                and waited > WORKER_HINT_SECONDS
                and not hinted
            ):
                command.stderr.write(
                    "still queued: is a worker running? (python manage.py rqworker exports)"
                )
                hinted = True
            time.sleep(0.5)
