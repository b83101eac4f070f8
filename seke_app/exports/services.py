"""Exports of the curated dataset: create, run as a job, cancel, find the file.

An export is an ``Export`` row and one job on the "exports" queue (enqueued once
the row is committed). The job claims the row with a conditional UPDATE, streams
the curated records into files (``export_writers``), records progress every
``PROGRESS_EVERY`` images with an UPDATE that is also the cancellation check,
and ends with the file's path on the row, or the error that stopped it.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from seke_app.exports.options import ExportOptions, ExportRefused
from seke_app.exports.writers import PROGRESS_EVERY, ExportCancelled, Progress, write_export
from seke_app.media import exports_storage
from seke_app.models import Dataset
from seke_app.models.exports import Export
from seke_app.queue import get_queue
from seke_app.webhooks import events as webhook_events

RUN_EXPORT = "seke_app.exports.jobs.run_export"
log = logging.getLogger("seke.exports")

__all__ = [
    "PROGRESS_EVERY",
    "ExportOptions",
    "ExportRefused",
    "export_cancel",
    "export_create",
    "export_file",
    "export_run",
]

Status = Export.Status


def _check_holdout(dataset: Dataset, kind: str, options: ExportOptions) -> None:
    if not options.holdout:
        return
    if kind != Export.Kind.FEID:
        raise ExportRefused("only a FEID export can leave out a benchmark's images")
    found = Export.objects.filter(
        code=options.holdout, dataset=dataset, kind=Export.Kind.FEAB, status=Status.DONE
    ).exists()
    if not found:
        raise ExportRefused("the holdout must be a finished FEAB export of the same dataset")


def export_create(
    *,
    dataset: Dataset,
    kind: str,
    options: ExportOptions,
    user: AbstractBaseUser | None = None,
    enqueue: bool = True,
) -> Export:
    """Create an export and queue its job once committed (``enqueue=False``: run it yourself)."""
    if kind not in Export.Kind.values:
        raise ExportRefused(f"unknown export kind {kind!r}")
    problems = options.problems(kind)
    if problems:
        raise ExportRefused("; ".join(problems))
    _check_holdout(dataset, kind, options)
    if enqueue:
        # Checked before anything is written: an export that cannot be queued is not created.
        get_queue("exports")
    with transaction.atomic():
        export = Export.objects.create(
            dataset=dataset,
            kind=kind,
            options=options.to_json(),
            created_by=user,  # type: ignore[misc]
        )
        if enqueue:
            transaction.on_commit(lambda: export.enqueue("exports", RUN_EXPORT))
    return export


def export_run(*, export_id: int) -> None:
    """Write the export's file; the job's one call."""
    export = Export.objects.select_related("dataset").get(id=export_id)
    if not export.claim():
        return
    log.info("export %s started", export.code)
    try:
        options = ExportOptions.from_json(export.options)
        name = write_export(export, options, Progress(export.id))
    except ExportCancelled:
        log.info("export %s cancelled", export.code)
        return
    except Exception as exc:
        log.exception("export %s failed", export.code)
        with transaction.atomic():
            failed = Export.objects.filter(id=export_id, status=Status.RUNNING).update(
                status=Status.FAILED,
                finished_at=timezone.now(),
                error=f"{type(exc).__name__}: {exc}",
            )
            if failed:
                webhook_events.export_finished(export_id)
        return
    size = exports_storage().size(name)
    with transaction.atomic():
        finished = Export.objects.filter(id=export_id, status=Status.RUNNING).update(
            status=Status.DONE, finished_at=timezone.now(), file_path=name, file_size=size
        )
        if finished:
            webhook_events.export_finished(export_id)
    if not finished:
        # Cancelled in the last moment: the file is not to be offered.
        exports_storage().delete(name)


def export_cancel(*, export: Export) -> None:
    """Stop a queued or running export; a running job notices at its next progress write."""
    if not export.cancel():
        raise ExportRefused(
            f"an export that is {export.get_status_display().lower()} cannot be cancelled"
        )


def export_file(export: Export) -> str:
    """The name of an export's finished file in the exports storage
    (``seke_app.media.exports_storage``), or ExportRefused saying why there is none."""
    if export.status != Status.DONE or not export.file_path:
        raise ExportRefused("the export has no file yet")
    if not exports_storage().exists(export.file_path):
        raise ExportRefused("the export's file is gone from the exports storage")
    return export.file_path
