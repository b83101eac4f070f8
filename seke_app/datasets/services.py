"""Importing face images (and their known human labels) into a dataset.

``dataset_import`` imports a folder tree or a zip in the calling process (the
``import_faces`` command, the demo). An upload from the import page is kept in the
imports storage (``seke_app.media``: a folder of SEKE_DATA_DIR, or a bucket that a
worker on another machine reads too) and imported by a job on the "default" queue:
``dataset_import_create`` checks and keeps it and queues the job once the row is
committed, ``dataset_import_run`` is the job's one call, and
``dataset_import_cancel`` stops it between batches. Images go to the media storage.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.move import file_move_safe
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from seke_app.datasets.uploads import discard_folder, incoming_folder
from seke_app.engine.ingest import (
    CheckedImage,
    ImageLimits,
    Manifest,
    ManifestError,
    Rejected,
    RowLabels,
    Source,
    SourceEntry,
    check_image,
    is_safe_member,
    parse_manifest,
    read_manifest_file,
    size_over_limit,
)
from seke_app.engine.vocab import AU_VOCABULARIES, Vocabulary
from seke_app.media import (
    delete_folder,
    imports_storage,
    local_file,
    local_folder,
    save_bytes,
    save_file,
)
from seke_app.models import Dataset, FaceImage
from seke_app.models.datasets import DatasetImport, imports_dir
from seke_app.queue import get_queue

RUN_IMPORT = "seke_app.datasets.jobs.run_import"
log = logging.getLogger("seke.imports")

BATCH_SIZE = 200
# Called after each batch with the images checked so far, all there are to check,
# and the report as it stands.
Progress = Callable[[int, int, "ImportReport"], None]
Status = DatasetImport.Status


class ImportRefused(Exception):
    """The import as a whole cannot start (bad path, bad manifest, bad options)."""


class ImportCancelled(Exception):
    """The import's row was cancelled; raised by its progress callback."""


@dataclass
class ImportReport:
    dataset: str
    imported: int = 0
    duplicates: int = 0
    labelled: int = 0
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def reject(self, name: str, category: str, detail: str) -> None:
        self.rejected.append((name, category, detail))

    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(category for _, category, _ in self.rejected))

    def summary(self) -> str:
        lines = [
            f"dataset {self.dataset}: {self.imported} imported ({self.labelled} with labels),"
            f" {self.duplicates} already present, {len(self.rejected)} rejected"
        ]
        for reason, count in sorted(self.rejected_by_reason().items()):
            lines.append(f"  rejected, {reason}: {count}")
        return "\n".join(lines)

    def failed(self) -> bool:
        """True when no image was accepted: none imported, none found already present."""
        return self.imported + self.duplicates == 0

    def failure(self) -> str:
        """Why a failed import imported nothing."""
        n = len(self.rejected)
        if not n:
            return "nothing was imported: no image file (JPEG, PNG, WebP or BMP) was found"
        return f"nothing was imported: {n} file{'s' if n != 1 else ''} rejected, none accepted"


def image_limits() -> ImageLimits:
    return ImageLimits(max_bytes=settings.MAX_IMAGE_BYTES, max_pixels=settings.MAX_IMAGE_PIXELS)


def dataset_check(*, name: str, au_vocabulary: str | None = None) -> Dataset | None:
    """The existing dataset called ``name``, or None for a new one; ImportRefused if unfit."""
    if au_vocabulary is not None and au_vocabulary not in AU_VOCABULARIES:
        known = ", ".join(sorted(AU_VOCABULARIES))
        raise ImportRefused(f"unknown AU vocabulary {au_vocabulary!r}; known: {known}")
    dataset = Dataset.objects.filter(name=name).first()
    if dataset is None and slugify(name) != name:
        raise ImportRefused(
            f"dataset name {name!r} must be a slug (letters, digits, '-' and '_'),"
            f" e.g. {slugify(name) or 'my-dataset'!r}"
        )
    if dataset is not None and au_vocabulary not in (None, dataset.au_vocabulary):
        raise ImportRefused(
            f"dataset {name!r} uses the AU vocabulary {dataset.au_vocabulary!r},"
            f" not {au_vocabulary!r}"
        )
    return dataset


class DatasetExists(ImportRefused):
    """A dataset of that name exists already."""


def dataset_create(
    *,
    name: str,
    au_vocabulary: str | None = None,
    description: str = "",
    licence_note: str = "",
    user: User | None = None,
) -> Dataset:
    """A new, empty dataset, checked as an import's new dataset is (``dataset_check``).

    Its images come by import. The import page instead creates a dataset with the
    first image an import accepts; this is for a client that wants the dataset (and
    its vocabulary) fixed before uploading parts of it. ImportRefused for a bad name
    or vocabulary, DatasetExists for a name taken.
    """
    if not name:
        raise ImportRefused("give the dataset a name (letters, digits, '-' and '_')")
    if dataset_check(name=name, au_vocabulary=au_vocabulary) is not None:
        raise DatasetExists(f"a dataset called {name!r} exists already")
    try:
        with transaction.atomic():
            return Dataset.objects.create(
                name=name,
                au_vocabulary=au_vocabulary or "feid17",
                description=description,
                licence_note=licence_note,
                created_by=user,
            )
    except IntegrityError:
        # Created by another request since the check.
        raise DatasetExists(f"a dataset called {name!r} exists already") from None


@dataclass
class _Target:
    """The dataset an import writes to; a new one is created with its first image."""

    name: str
    au_vocabulary: str | None
    licence_note: str
    user: User | None
    dataset: Dataset | None

    def get_or_create(self) -> Dataset:
        if self.dataset is None:
            dataset, created = Dataset.objects.get_or_create(
                name=self.name,
                defaults={
                    "au_vocabulary": self.au_vocabulary or "feid17",
                    "licence_note": self.licence_note,
                    "created_by": self.user,
                },
            )
            if not created:
                # Another import created it since this one checked: check again.
                dataset_check(name=self.name, au_vocabulary=self.au_vocabulary)
            self.dataset = dataset
        return self.dataset


def dataset_import(
    *,
    path: Path,
    dataset_name: str,
    manifest_path: Path | None = None,
    au_vocabulary: str | None = None,
    licence_note: str = "",
    user: User | None = None,
    progress: Progress | None = None,
    label: str | None = None,
) -> ImportReport:
    """Import every valid image under ``path`` (a folder tree or a zip) into a dataset.

    Bad files and bad manifest rows are reported and skipped; a bad manifest,
    path or option refuses the whole import before anything is written. A new
    dataset is created with the first image accepted, so an import that accepts
    none (see ``ImportReport.failed``) leaves no trace. ``label`` names the source
    in messages (default: its path).
    """
    with _open_source(path, label) as source:
        manifest_text = _manifest_text(source, manifest_path)
        vocabulary = _vocabulary_for(dataset_name, au_vocabulary)
        manifest = _parse(manifest_text, vocabulary)
        target = _Target(
            name=dataset_name,
            au_vocabulary=au_vocabulary,
            licence_note=licence_note,
            user=user,
            dataset=dataset_check(name=dataset_name, au_vocabulary=au_vocabulary),
        )
        report = ImportReport(dataset=dataset_name, warnings=list(manifest.warnings))
        _import_entries(source, target, manifest, report, progress)
    return report


def _open_source(path: Path, label: str | None) -> Source:
    try:
        return Source(path, label=label)
    except ManifestError as exc:
        raise ImportRefused(str(exc)) from None


def _vocabulary_for(name: str, au_vocabulary: str | None) -> Vocabulary:
    if au_vocabulary is not None:
        if au_vocabulary not in AU_VOCABULARIES:
            known = ", ".join(sorted(AU_VOCABULARIES))
            raise ImportRefused(f"unknown AU vocabulary {au_vocabulary!r}; known: {known}")
        return Vocabulary.named(au_vocabulary)
    dataset = Dataset.objects.filter(name=name).first()
    return dataset.vocabulary() if dataset else Vocabulary.named("feid17")


def _manifest_text(source: Source, manifest_path: Path | None) -> str | None:
    if manifest_path is not None and not manifest_path.is_file():
        raise ImportRefused(f"manifest {manifest_path} does not exist")
    try:
        if manifest_path is None:
            return source.find_manifest()
        return read_manifest_file(manifest_path)
    except ManifestError as exc:
        raise ImportRefused(str(exc)) from None


def _parse(text: str | None, vocabulary: Vocabulary) -> Manifest:
    if text is None:
        return Manifest(rows={})
    try:
        return parse_manifest(text, vocabulary)
    except ManifestError as exc:
        raise ImportRefused(f"manifest refused: {exc}") from None


def _import_entries(
    source: Source,
    target: _Target,
    manifest: Manifest,
    report: ImportReport,
    progress: Progress | None,
) -> None:
    entries: list[SourceEntry] = []
    for entry in source.entries():
        if isinstance(entry, Rejected):
            report.reject(entry.name, entry.category, entry.detail)
        else:
            entries.append(entry)
    found = {entry.name for entry in entries}
    for name in sorted(set(manifest.rows) | set(manifest.rejected)):
        if name not in found and not name.startswith("manifest line"):
            report.reject(name, "not found", f"{name}: listed in the manifest but not found")
    for name, reason in manifest.rejected.items():
        if name in found or name.startswith("manifest line"):
            report.reject(name, "bad label", f"{name}: {reason}")
    unlisted = [
        e.name
        for e in entries
        if manifest.rows and e.name not in manifest.rows and e.name not in manifest.rejected
    ]
    if unlisted:
        report.warnings.append(
            f"{len(unlisted)} images are not in the manifest and are imported without labels"
        )
    todo = [e for e in entries if e.name not in manifest.rejected]
    if progress:
        progress(0, len(todo), report)
    for start in range(0, len(todo), BATCH_SIZE):
        _import_batch(source, target, manifest, todo[start : start + BATCH_SIZE], report)
        if progress:
            progress(min(start + BATCH_SIZE, len(todo)), len(todo), report)


def _import_batch(
    source: Source,
    target: _Target,
    manifest: Manifest,
    batch: list[SourceEntry],
    report: ImportReport,
) -> None:
    limits = image_limits()
    checked: dict[str, tuple[CheckedImage, SourceEntry]] = {}
    for entry in batch:
        try:
            if entry.size > limits.max_bytes:
                raise Rejected(
                    "too large",
                    f"the file is {size_over_limit(entry.size, limits.max_bytes)}"
                    " (SEKE_MAX_IMAGE_MB)",
                )
            image = check_image(source.read(entry.name, limits.max_bytes), limits)
        except Rejected as exc:
            report.reject(entry.name, exc.category, f"{entry.name}: {exc.detail}")
            continue
        if image.sha256 in checked:
            report.duplicates += 1
            continue
        checked[image.sha256] = (image, entry)
    existing: set[str] = set()
    if target.dataset is not None:
        existing = set(
            FaceImage.objects.filter(dataset=target.dataset, sha256__in=list(checked)).values_list(
                "sha256", flat=True
            )
        )
    report.duplicates += len(existing)
    new = {sha: pair for sha, pair in checked.items() if sha not in existing}
    if new:
        _store_batch(target, manifest, new, report)


def _store_batch(
    target: _Target,
    manifest: Manifest,
    new: dict[str, tuple[CheckedImage, SourceEntry]],
    report: ImportReport,
) -> None:
    written: list[str] = []
    rows = []
    licence_note = target.licence_note
    creates_dataset = target.dataset is None
    try:
        with transaction.atomic():
            dataset = target.get_or_create()
            for image, entry in new.values():
                relative, created = _store_file(image)
                if created:
                    written.append(relative)
                rows.append(
                    _face_row(
                        dataset, image, entry, relative, manifest.rows.get(entry.name), licence_note
                    )
                )
            FaceImage.objects.bulk_create(rows)
    except BaseException:
        # Files written for rows that never committed would be orphans: remove them.
        for name in written:
            default_storage.delete(name)
        if creates_dataset:
            target.dataset = None
        raise
    report.imported += len(rows)
    report.labelled += sum(1 for row in rows if row.has_known_labels())


def _face_row(
    dataset: Dataset,
    image: CheckedImage,
    entry: SourceEntry,
    relative: str,
    labels: RowLabels | None,
    licence_note: str,
) -> FaceImage:
    labels = labels or RowLabels()
    return FaceImage(
        dataset=dataset,
        sha256=image.sha256,
        file=relative,
        image_format=image.image_format,
        width=image.width,
        height=image.height,
        original_name=entry.name[:500],
        subject=labels.subject,
        split=labels.split,
        licence_note=licence_note,
        known_expression=labels.expression,
        known_valence=labels.valence,
        known_arousal=labels.arousal,
        known_aus={str(au): on for au, on in sorted(labels.aus.items())} if labels.aus else None,
    )


def _store_file(image: CheckedImage) -> tuple[str, bool]:
    """Save the bytes under their hash in the media storage, once, whole or not at all;
    return their name there and whether this call wrote them.

    A file of the right size under that name is the image; one of another size
    (damaged since, say) is replaced. Asking for the size costs what asking whether
    the file exists would (a stat, or a HEAD request to a bucket).
    """
    name = f"faces/{image.sha256[:2]}/{image.sha256}.{image.extension}"
    try:
        if default_storage.size(name) == len(image.data):
            return name, False
        default_storage.delete(name)
    except FileNotFoundError:
        pass
    # Another import may save the same image at the same moment; the storage then
    # keeps both, under different names.
    return save_bytes(default_storage, name, image.data), True


# ---------------------------------------------------------------------------
# Uploads from the import page: kept in the imports storage, imported by a job.


def upload_too_large(size: int) -> str | None:
    """Why an upload of ``size`` bytes is refused, or None when it is within SEKE_MAX_UPLOAD_MB."""
    limit = settings.MAX_UPLOAD_BYTES
    if size <= limit:
        return None
    return (
        f"The upload is {size_over_limit(size, limit)} (SEKE_MAX_UPLOAD_MB). Import a"
        " larger set on the server with python manage.py import_faces PATH --dataset NAME,"
        " or upload it in parts."
    )


def dataset_import_create(
    *,
    uploads: Sequence[UploadedFile[bytes]],
    dataset_name: str,
    au_vocabulary: str | None = None,
    licence_note: str = "",
    user: User | None = None,
    enqueue: bool = True,
) -> DatasetImport:
    """Keep an upload and queue its import once committed (``enqueue=False``: run it yourself).

    Refused with ImportRefused, keeping nothing: an upload over SEKE_MAX_UPLOAD_MB,
    a bad dataset name or vocabulary, a zip or manifest that cannot be read, a
    manifest without a "file" column. Files and label rows are checked by the job.
    """
    refusal = upload_too_large(sum(upload.size or 0 for upload in uploads))
    if refusal:
        raise ImportRefused(refusal)
    vocabulary = _vocabulary_for(dataset_name, au_vocabulary)
    dataset_check(name=dataset_name, au_vocabulary=au_vocabulary)
    if enqueue:
        # Checked before anything is kept: an import that cannot be queued is not created.
        get_queue("default")
    job = DatasetImport(
        dataset_name=dataset_name,
        au_vocabulary=au_vocabulary or "",
        licence_note=licence_note,
        created_by=user,
        upload_name=_upload_name(uploads)[:300],
        upload_size=sum(upload.size or 0 for upload in uploads),
    )
    # The files are gathered and checked on this machine's disk first, so that a
    # refused upload is never sent to a bucket.
    staging = incoming_folder()
    try:
        source = _keep_uploads(uploads, staging)
        job.upload_path = f"{job.folder_name()}/{source.relative_to(staging).as_posix()}"
        _check_manifest(source, _source_label(job), vocabulary)
        _publish(staging, source, job)
        with transaction.atomic():
            job.save()
            if enqueue:
                transaction.on_commit(lambda: job.enqueue("default", RUN_IMPORT))
    except BaseException:
        delete_folder(imports_storage(), job.folder_name())
        raise
    finally:
        discard_folder(staging)
    return job


def _upload_name(uploads: Sequence[UploadedFile[bytes]]) -> str:
    names = [Path(upload.name or "").name for upload in uploads]
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} files: {shown}"


def _source_label(job: DatasetImport) -> str:
    return job.upload_name if job.upload_is_zip() else "the uploaded files"


def _keep_uploads(uploads: Sequence[UploadedFile[bytes]], folder: Path) -> Path:
    """Move the uploads into ``folder``; return the zip or the folder of images to import."""
    folder.mkdir(parents=True)
    names = [Path(upload.name or "").name for upload in uploads]
    if len(uploads) == 1 and names[0].lower().endswith(".zip") and is_safe_member(names[0]):
        target = folder / names[0]
        _keep(uploads[0], target)
        return target
    images = folder / "images"
    images.mkdir()
    for upload, name in zip(uploads, names, strict=True):
        if is_safe_member(name):
            _keep(upload, images / name)
    return images


def _keep(upload: UploadedFile[bytes], target: Path) -> None:
    """Move an upload that is already a file (the usual case); write one held in memory."""
    path = getattr(upload, "temporary_file_path", None)
    if path is not None:
        file_move_safe(path(), str(target), allow_overwrite=True)
        return
    with target.open("wb") as handle:
        for chunk in upload.chunks():
            handle.write(chunk)


def _publish(staging: Path, source: Path, job: DatasetImport) -> None:
    """Save the kept upload to the imports storage, where the job finds it on any
    machine; a storage on this disk takes the files by a rename."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for file in files:
        name = f"{job.folder_name()}/{file.relative_to(staging).as_posix()}"
        save_file(imports_storage(), name, file)


def _check_manifest(source_path: Path, label: str, vocabulary: Vocabulary) -> None:
    """Refuse an unreadable source or manifest now, while the uploader waits for the page.

    Only the header is parsed here; rows are checked (and reported one by one) by
    the job, so the web process holds no more than the manifest's text.
    """
    with _open_source(source_path, label) as source:
        text = _manifest_text(source, None)
    if text is not None:
        _parse(text.partition("\n")[0], vocabulary)


class _JobProgress:
    """Writes an import's progress to its row; the conditional UPDATE is the cancel check."""

    def __init__(self, import_id: int) -> None:
        self.import_id = import_id

    def __call__(self, done: int, total: int, report: ImportReport) -> None:
        fields = _report_fields(report) | {"n_done": done, "n_total": total}
        rows = DatasetImport.objects.filter(id=self.import_id)
        if not rows.filter(status=Status.RUNNING).update(**fields):
            # Cancelled: the batches done so far stay imported, and the row counts them.
            rows.update(**fields)
            raise ImportCancelled


def _report_fields(report: ImportReport) -> dict[str, Any]:
    return {
        "n_imported": report.imported,
        "n_labelled": report.labelled,
        "n_duplicates": report.duplicates,
        "n_rejected": len(report.rejected),
        "rejected": [list(r) for r in report.rejected[: DatasetImport.REJECTIONS_KEPT]],
        "rejected_by_reason": report.rejected_by_reason(),
        "warnings": report.warnings,
    }


def dataset_import_run(*, import_id: int) -> None:
    """Import a kept upload; the job's one call. The upload is removed however it ends."""
    job = DatasetImport.objects.select_related("created_by").get(id=import_id)
    if not job.claim():
        if job.status == Status.CANCELLED:
            delete_folder(imports_storage(), job.folder_name())
        return
    log.info("import %s started", job.code)
    try:
        _run(job)
    finally:
        delete_folder(imports_storage(), job.folder_name())


def _local_upload(job: DatasetImport) -> AbstractContextManager[Path]:
    """The upload on this machine's disk (copied from a bucket for the import)."""
    copy = local_file if job.upload_is_zip() else local_folder
    return copy(imports_storage(), job.upload_path, scratch=imports_dir())


def _run(job: DatasetImport) -> None:
    try:
        with _local_upload(job) as path:
            report = dataset_import(
                path=path,
                dataset_name=job.dataset_name,
                au_vocabulary=job.au_vocabulary or None,
                licence_note=job.licence_note,
                user=job.created_by,
                progress=_JobProgress(job.id),
                label=_source_label(job),
            )
    except ImportCancelled:
        log.info("import %s cancelled", job.code)
        return
    except ImportRefused as exc:
        _finish(job, Status.FAILED, error=str(exc))
        return
    except Exception as exc:
        log.exception("import %s failed", job.code)
        _finish(job, Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        return
    status = Status.FAILED if report.failed() else Status.DONE
    error = report.failure() if report.failed() else ""
    _finish(job, status, error=error, **_report_fields(report))


def _finish(job: DatasetImport, status: str, *, error: str, **fields: Any) -> None:
    dataset = Dataset.objects.filter(name=job.dataset_name).first()
    finished = DatasetImport.objects.filter(id=job.id, status=Status.RUNNING).update(
        status=status, finished_at=timezone.now(), error=error, dataset=dataset, **fields
    )
    if not finished:
        # Cancelled after the last batch: the import is complete, and its row says so.
        DatasetImport.objects.filter(id=job.id).update(dataset=dataset, **fields)


def dataset_import_cancel(*, job: DatasetImport) -> None:
    """Stop a queued or running import; images imported before the cancel stay."""
    if job.cancel(statuses=(Status.QUEUED,)):
        delete_folder(imports_storage(), job.folder_name())
        return
    # A running job notices at its next batch, and removes the upload itself.
    if not job.cancel(statuses=(Status.RUNNING,)):
        raise ImportRefused(
            f"an import that is {job.get_status_display().lower()} cannot be cancelled"
        )
