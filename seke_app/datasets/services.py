"""Importing face images (and their known human labels) into a dataset."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

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
    parse_manifest,
)
from seke_app.engine.vocab import AU_VOCABULARIES, Vocabulary
from seke_app.models import Dataset, FaceImage

BATCH_SIZE = 200
Progress = Callable[[int, int], None]


class ImportRefused(Exception):
    """The import as a whole cannot start (bad path, bad manifest, bad options)."""


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


def image_limits() -> ImageLimits:
    return ImageLimits(max_bytes=settings.MAX_IMAGE_BYTES, max_pixels=settings.MAX_IMAGE_PIXELS)


def dataset_get_or_create(
    *,
    name: str,
    au_vocabulary: str | None = None,
    licence_note: str = "",
    user: AbstractBaseUser | None = None,
) -> Dataset:
    """The dataset called ``name``; created with the given AU vocabulary if new."""
    if au_vocabulary is not None and au_vocabulary not in AU_VOCABULARIES:
        known = ", ".join(sorted(AU_VOCABULARIES))
        raise ImportRefused(f"unknown AU vocabulary {au_vocabulary!r}; known: {known}")
    dataset = Dataset.objects.filter(name=name).first()
    if dataset is None:
        from django.utils.text import slugify

        if slugify(name) != name:
            raise ImportRefused(
                f"dataset name {name!r} must be a slug (letters, digits, '-' and '_'),"
                f" e.g. {slugify(name) or 'my-dataset'!r}"
            )
        return Dataset.objects.create(
            name=name,
            au_vocabulary=au_vocabulary or "feid17",
            licence_note=licence_note,
            created_by=user,  # type: ignore[misc]
        )
    if au_vocabulary is not None and au_vocabulary != dataset.au_vocabulary:
        raise ImportRefused(
            f"dataset {name!r} uses the AU vocabulary {dataset.au_vocabulary!r},"
            f" not {au_vocabulary!r}"
        )
    return dataset


def dataset_import(
    *,
    path: Path,
    dataset_name: str,
    manifest_path: Path | None = None,
    au_vocabulary: str | None = None,
    licence_note: str = "",
    user: AbstractBaseUser | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Import every valid image under ``path`` (a folder tree or a zip) into a dataset.

    Bad files and bad manifest rows are reported and skipped; a bad manifest
    header or path refuses the whole import before anything is written.
    """
    try:
        source = Source(path)
    except ManifestError as exc:
        raise ImportRefused(str(exc)) from None
    with source:
        manifest_text = _manifest_text(source, manifest_path)
        # The dataset is created only once the manifest is known to be usable.
        vocabulary = _vocabulary_for(dataset_name, au_vocabulary)
        manifest = _parse(manifest_text, vocabulary)
        dataset = dataset_get_or_create(
            name=dataset_name, au_vocabulary=au_vocabulary, licence_note=licence_note, user=user
        )
        report = ImportReport(dataset=dataset.name, warnings=list(manifest.warnings))
        _import_entries(source, dataset, manifest, report, licence_note, progress)
    return report


def _vocabulary_for(name: str, au_vocabulary: str | None) -> Vocabulary:
    if au_vocabulary is not None:
        if au_vocabulary not in AU_VOCABULARIES:
            known = ", ".join(sorted(AU_VOCABULARIES))
            raise ImportRefused(f"unknown AU vocabulary {au_vocabulary!r}; known: {known}")
        return Vocabulary.named(au_vocabulary)
    dataset = Dataset.objects.filter(name=name).first()
    return dataset.vocabulary() if dataset else Vocabulary.named("feid17")


def _manifest_text(source: Source, manifest_path: Path | None) -> str | None:
    if manifest_path is None:
        return source.find_manifest()
    if not manifest_path.is_file():
        raise ImportRefused(f"manifest {manifest_path} does not exist")
    try:
        return manifest_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ImportRefused(f"manifest {manifest_path} is not UTF-8 text") from None


def _parse(text: str | None, vocabulary: Vocabulary) -> Manifest:
    if text is None:
        return Manifest(rows={})
    try:
        return parse_manifest(text, vocabulary)
    except ManifestError as exc:
        raise ImportRefused(f"manifest refused: {exc}") from None


def _import_entries(
    source: Source,
    dataset: Dataset,
    manifest: Manifest,
    report: ImportReport,
    licence_note: str,
    progress: Progress | None,
) -> None:
    entries: list[SourceEntry] = []
    for entry in source.entries():
        if isinstance(entry, Rejected):
            report.reject(entry.detail.split(":")[0], entry.category, entry.detail)
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
    for start in range(0, len(todo), BATCH_SIZE):
        _import_batch(
            source, dataset, manifest, todo[start : start + BATCH_SIZE], report, licence_note
        )
        if progress:
            progress(min(start + BATCH_SIZE, len(todo)), len(todo))


def _import_batch(
    source: Source,
    dataset: Dataset,
    manifest: Manifest,
    batch: list[SourceEntry],
    report: ImportReport,
    licence_note: str,
) -> None:
    limits = image_limits()
    checked: dict[str, tuple[CheckedImage, SourceEntry]] = {}
    for entry in batch:
        try:
            if entry.size > limits.max_bytes:
                raise Rejected(
                    "too large",
                    f"the file is {entry.size / 1e6:.1f} MB, over the limit of"
                    f" {limits.max_bytes / 1e6:.1f} MB",
                )
            image = check_image(source.read(entry.name, limits.max_bytes), limits)
        except Rejected as exc:
            report.reject(entry.name, exc.category, f"{entry.name}: {exc.detail}")
            continue
        if image.sha256 in checked:
            report.duplicates += 1
            continue
        checked[image.sha256] = (image, entry)
    existing = set(
        FaceImage.objects.filter(dataset=dataset, sha256__in=list(checked)).values_list(
            "sha256", flat=True
        )
    )
    report.duplicates += len(existing)
    new = {sha: pair for sha, pair in checked.items() if sha not in existing}
    _store_batch(dataset, manifest, new, report, licence_note)


def _store_batch(
    dataset: Dataset,
    manifest: Manifest,
    new: dict[str, tuple[CheckedImage, SourceEntry]],
    report: ImportReport,
    licence_note: str,
) -> None:
    written: list[Path] = []
    rows = []
    try:
        with transaction.atomic():
            for image, entry in new.values():
                relative, created = _store_file(image)
                if created:
                    written.append(Path(settings.MEDIA_ROOT) / relative)
                rows.append(
                    _face_row(
                        dataset, image, entry, relative, manifest.rows.get(entry.name), licence_note
                    )
                )
            FaceImage.objects.bulk_create(rows)
    except BaseException:
        # Files written for rows that never committed would be orphans: remove them.
        for file in written:
            file.unlink(missing_ok=True)
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
    """Write the bytes under their hash, once; return the media-relative path."""
    relative = f"faces/{image.sha256[:2]}/{image.sha256}.{image.extension}"
    target = Path(settings.MEDIA_ROOT) / relative
    if target.exists():
        return relative, False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temporary name and renamed, so a crash never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(image.data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return relative, True
