"""Writing one export: the curated records streamed into FEID, FEAB or Label Studio files.

Memory stays flat whatever the dataset's size: records are read a chunk at a
time (``curation.curated_records``), each is written as soon as it is read, and
the dataset card keeps counters only. The FEAB split is the exception that needs
one small entry per image (code, subject, expression) to draw the split.
"""

from __future__ import annotations

import base64
import contextlib
import json
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.files.storage import default_storage
from django.utils import timezone

import seke_app
from seke_app.engine.formats import feab, feid, labelstudio
from seke_app.engine.formats.card import CardStats, card_markdown
from seke_app.engine.formats.records import CuratedRecord
from seke_app.exports.curation import candidate_images, curated_records
from seke_app.exports.files import ExportFiles, JsonArrayFile
from seke_app.exports.options import ExportOptions
from seke_app.insights.certificates import run_quality
from seke_app.media import exports_storage, media_location, save_bytes, save_file
from seke_app.models import Dataset, GenerationRun, PromptVersion
from seke_app.models.exports import Export, exports_dir

PROGRESS_EVERY = 500
# Why an image is left out, besides the label filter's reasons (``LabelFilter.refusal``).
REJECTED = "rejected by a reviewer"
HELD_OUT = "in the benchmark held out"
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}


class ExportCancelled(Exception):
    """Raised inside a running export once its row says it was cancelled."""


class Progress:
    """Counts images as they are read; every ``every`` images writes the counters.

    The write only touches a running export, so it doubles as the cancellation
    check: when it changes no row, the export was cancelled.
    """

    def __init__(self, export_id: int, every: int | None = None) -> None:
        self.export_id = export_id
        self.every = every or PROGRESS_EVERY
        self.done = self.written = self.skipped = 0
        # The skipped images by why they were left out, in words.
        self.reasons: Counter[str] = Counter()
        self._saved = 0

    def skip(self, reason: str) -> None:
        """One image read and left out, for ``reason``."""
        self.reasons[reason] += 1
        self.advance(False)

    def restart_skips(self) -> None:
        """Forget the skips so far: a second pass meets the same images again."""
        self.skipped = 0
        self.reasons.clear()

    def advance(self, written: bool | None) -> None:
        """One image read: written, skipped (no admitted label), or neither (None)."""
        self.done += 1
        self.written += written is True
        self.skipped += written is False
        if self.done - self._saved >= self.every:
            self.save()

    def save(self) -> None:
        self._saved = self.done
        updated = Export.objects.filter(id=self.export_id, status=Export.Status.RUNNING).update(
            n_done=self.done,
            n_written=self.written,
            n_skipped=self.skipped,
            skipped_by_reason=dict(self.reasons.most_common()),
        )
        if not updated:
            raise ExportCancelled()


@dataclass
class _Writer:
    """What every kind of export shares: the records, their images, the statistics."""

    export: Export
    options: ExportOptions
    files: ExportFiles
    progress: Progress
    stats: CardStats = field(default_factory=CardStats)
    exclude: frozenset[str] = frozenset()
    n_images: int = 0
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> Dataset:
        return self.export.dataset

    def admitted(
        self, mark: Callable[[CuratedRecord], bool | None] | None = None
    ) -> Iterator[CuratedRecord]:
        """The records the options admit; progress counts each image once it is handled.

        ``mark`` says how a yielded record counts (written by default).
        """
        label_filter = self.options.label_filter()
        for chunk in curated_records(dataset=self.dataset, split=self.options.split):
            for record in chunk:
                if record is None:
                    self.progress.skip(REJECTED)
                    continue
                if record.image in self.exclude:
                    self.progress.skip(HELD_OUT)
                    continue
                kept = label_filter.apply(record)
                if kept is None:
                    self.progress.skip(label_filter.refusal(record))
                    continue
                yield kept
                self.progress.advance(mark(kept) if mark else True)

    def image_ref(self, record: CuratedRecord) -> str:
        """Where a line points for the image: its copy in the archive, or its stored path."""
        if self.options.images == "copy":
            name = f"images/{Path(record.file).name}"
            self.files.add_image(name, default_storage.open(record.file, "rb"))
            return name
        return self.options.image_root + record.file

    def data_url(self, record: CuratedRecord) -> str:
        with default_storage.open(record.file, "rb") as handle:
            data = handle.read()
        mime = MIME_TYPES.get(record.image_format.upper(), "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _write_feid(w: _Writer) -> None:
    options = w.options
    outputs = {fmt: w.files.data_file(f"feid_{fmt}.jsonl") for fmt in options.formats}
    labels = w.files.data_file("feid_openai_labels.jsonl") if "openai" in outputs else None
    for record in w.admitted():
        ref = w.image_ref(record)
        for fmt, out in outputs.items():
            url = (
                w.data_url(record)
                if fmt == "openai" and options.openai_images == "data_url"
                else ref
            )
            out.write_line(feid.line(fmt, record, url, options.seed))
        if labels is not None:
            labels.write_line(feid.labels_line(record))
        w.stats.add(record)
    if "sharegpt" in outputs and options.archive:
        info = feid.llama_factory_dataset_info("feid_sharegpt.jsonl", w.dataset.name)
        w.files.add_text("dataset_info.json", json.dumps(info, indent=2) + "\n")
    w.manifest_extra["formats"] = list(options.formats)


def _write_feab(w: _Writer) -> None:
    options = w.options
    items = [
        feab.SplitItem(image=r.image, subject=r.subject, expression=r.expression)
        for r in w.admitted(mark=lambda _: None)
    ]
    split = feab.benchmark_split(items, test_fraction=options.test_fraction, seed=options.seed)
    n_items = len(items)
    del items
    # The second pass meets the same images without labels again; count them once.
    w.progress.restart_skips()
    question_file = w.files.data_file("feab_questions.jsonl")
    answer_file = w.files.data_file("feab_answers.jsonl")
    test_list = w.files.data_file("test_images.txt")
    train_list = w.files.data_file("train_images.txt")
    for record in w.admitted(mark=lambda r: True if r.image in split.test else None):
        if record.image not in split.test:
            train_list.write(f"{record.image}\n".encode())
            continue
        test_list.write(f"{record.image}\n".encode())
        for line in feab.questions(record, w.image_ref(record)):
            question_file.write_line(line)
        for line in feab.answer_keys(record):
            answer_file.write_line(line)
        w.stats.add(record)
    summary = split.to_json(n_items, options.test_fraction, options.seed)
    w.files.add_text("split.json", json.dumps(summary, indent=2) + "\n")
    w.manifest_extra["split"] = summary
    w.notes.append(
        f"Benchmark split: {summary['method']}, {summary['n_test']} test images of"
        f" {n_items} (the rest are listed in train_images.txt). Statistics below are of"
        " the test images."
    )


def _write_labelstudio(w: _Writer) -> None:
    name = "tasks.json"
    tasks = JsonArrayFile(w.files.data_file(name))
    for record in w.admitted():
        tasks.append(labelstudio.task(record, w.image_ref(record)))
        w.stats.add(record)
    tasks.close()
    if w.options.archive:
        config = labelstudio.label_config(w.dataset.vocabulary().aus)
        w.files.add_text("label_config.xml", config)


WRITERS: dict[str, Callable[[_Writer], None]] = {
    Export.Kind.FEID: _write_feid,
    Export.Kind.FEAB: _write_feab,
    Export.Kind.LABELSTUDIO: _write_labelstudio,
}


def _holdout_images(options: ExportOptions) -> frozenset[str]:
    if not options.holdout:
        return frozenset()
    benchmark = Export.objects.get(code=options.holdout)
    storage = exports_storage()
    if not benchmark.file_path or not storage.exists(benchmark.file_path):
        raise FileNotFoundError(f"the file of FEAB export {options.holdout} is gone")
    with storage.open(benchmark.file_path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        return frozenset(archive.read("test_images.txt").decode().split())


def _file_name(export: Export, options: ExportOptions) -> str:
    stamp = timezone.localtime(export.created_at).strftime("%Y%m%d-%H%M%S")
    base = f"{export.dataset.name}-{export.kind}-{stamp}"
    if options.archive:
        return f"{base}.zip"
    if export.kind == Export.Kind.LABELSTUDIO:
        return f"{base}.json"
    return f"{base}-{options.formats[0]}.jsonl"


def _prompt_versions(numbers: list[int]) -> list[dict[str, Any]]:
    rows = PromptVersion.objects.filter(number__in=numbers).order_by("number")
    return [{"number": p.number, "name": p.name, "fingerprint": p.fingerprint} for p in rows]


def _images_note(options: ExportOptions) -> str:
    if options.images == "copy":
        return "copied into images/ in this archive"
    root = options.image_root or media_location()
    return f"referenced, not included: paths are relative to {root}"


def _manifest(w: _Writer) -> dict[str, Any]:
    dataset, stats = w.dataset, w.stats.to_json()
    return {
        "seke_version": seke_app.__version__,
        "kind": w.export.kind,
        "export": str(w.export.code),
        "created_at": timezone.now().isoformat(),
        "dataset": {
            "name": dataset.name,
            "code": str(dataset.code),
            "au_vocabulary": dataset.au_vocabulary,
            "licence_note": dataset.licence_note,
        },
        "filters": w.options.to_json(),
        "counts": {
            "images": w.n_images,
            "records": stats["n_records"],
            "skipped_without_admitted_label": w.progress.skipped,
            "skipped_by_reason": dict(w.progress.reasons.most_common()),
            "grains": stats["grains"],
            "provenance": stats["provenance"],
        },
        "prompt_versions": _prompt_versions(stats["prompt_versions"]),
        "images": _images_note(w.options),
        **w.manifest_extra,
    }


def _left_out_note(w: _Writer) -> str | None:
    """The card's sentence on the images left out and why (None when none was)."""
    if not w.progress.skipped:
        return None
    reasons = "; ".join(f"{reason}: {n}" for reason, n in w.progress.reasons.most_common())
    return f"{w.progress.skipped} of {w.n_images} images were left out. Why: {reasons}."


def _card(w: _Writer, manifest: dict[str, Any]) -> str:
    summary = {
        "Dataset": w.dataset.name,
        "Export": f"{w.export.get_kind_display()} ({w.export.code})",
        "SEKE version": manifest["seke_version"],
        "Images": manifest["images"],
        "Grains": ", ".join(w.options.grains),
        "Admitted provenance": "; ".join(
            f"{g}: {', '.join(w.options.sources.get(g, ()))}" for g in w.options.grains
        ),
        "Minimum machine confidence": w.options.min_confidence,
        "Split filter": w.options.split or "all images",
        "Licence": w.dataset.licence_note or "see the source dataset's terms",
    }
    title = f"{w.dataset.name}: {w.export.get_kind_display()}"
    runs = GenerationRun.objects.filter(code__in=list(w.stats.machine_runs)).select_related(
        "dataset", "prompt_version"
    )
    quality = [run_quality(run) for run in runs.order_by("created_at", "id")]
    left_out = _left_out_note(w)
    notes = [*w.notes, left_out] if left_out else w.notes
    return card_markdown(w.stats, title=title, summary=summary, notes=notes, quality=quality)


def write_export(export: Export, options: ExportOptions, progress: Progress) -> str:
    """Write the whole export, save it to the exports storage and return its name there;
    raises ExportCancelled when cancelled.

    The files are written in a work folder on this machine's disk, removed at the
    end whatever the end; until then a file under ``Export.work_name`` in the
    storage tells every machine that the job is at work.
    """
    storage = exports_storage()
    folder = exports_dir() / str(export.code)
    # Undone in reverse order, from wherever the export stops.
    cleanup = contextlib.ExitStack()
    try:
        # Left empty unless the exports storage is this folder and the file is in it.
        cleanup.callback(_remove_if_empty, folder)
        files = ExportFiles(folder / ".work", archive=options.archive)
        cleanup.callback(files.discard)
        cleanup.callback(storage.delete, save_bytes(storage, f"{export.work_name()}/job", b""))
        n_images = candidate_images(dataset=export.dataset, split=options.split).count()
        passes = 2 if export.kind == Export.Kind.FEAB else 1
        Export.objects.filter(id=export.id).update(n_total=n_images * passes)
        writer = _Writer(
            export, options, files, progress, exclude=_holdout_images(options), n_images=n_images
        )
        WRITERS[export.kind](writer)
        progress.save()
        manifest = _manifest(writer)
        if options.archive:
            files.add_text("README.md", _card(writer, manifest))
        finished = files.finish(manifest)
        return save_file(storage, f"{export.code}/{_file_name(export, options)}", finished)
    finally:
        cleanup.close()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
