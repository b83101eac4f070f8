"""Label Studio JSON back into SEKE: annotations become the images' human labels.

A task is matched to an image of the dataset by ``data.seke_image`` (the image
code SEKE's own Label Studio export writes), else by the file name at the end
of ``data.image`` against the images' original names. The latest annotation of
each task that was not cancelled sets the image's imported human labels
(``FaceImage.known_*``) for the grains it holds; other grains are left alone.
Predictions are machine output and are not read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction

from seke_app.engine.formats.labelstudio import ImportedLabels, labels_from_task
from seke_app.models import Dataset, FaceImage

BATCH_SIZE = 500


class LabelStudioRefused(Exception):
    """The file is not Label Studio JSON SEKE can read; the message says why."""


@dataclass
class LabelStudioReport:
    tasks: int = 0
    updated: int = 0
    unchanged: int = 0
    without_annotation: int = 0
    unmatched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.tasks} tasks: {self.updated} images updated, {self.unchanged} unchanged,"
            f" {self.without_annotation} without a usable annotation,"
            f" {len(self.unmatched)} not matched to an image of the dataset."
        ]
        lines += [f"not matched: {name}" for name in self.unmatched[:20]]
        lines += self.problems[:20]
        return "\n".join(lines)


def _read_tasks(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelStudioRefused(f"{path.name} is not a JSON file: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise LabelStudioRefused(f"{path.name} is not a list of Label Studio tasks")
    return data


def _apply(image: FaceImage, labels: ImportedLabels) -> bool:
    """Set the image's known labels from the task; True when anything changed."""
    before = (image.known_expression, image.known_valence, image.known_arousal, image.known_aus)
    if "expression" in labels.grains():
        image.known_expression = labels.expression
    if "va" in labels.grains():
        image.known_valence, image.known_arousal = labels.valence, labels.arousal
    if labels.aus is not None:
        image.known_aus = {str(au): on for au, on in sorted(labels.aus.items())}
    after = (image.known_expression, image.known_valence, image.known_arousal, image.known_aus)
    return before != after


def _match(dataset: Dataset, entries: list[ImportedLabels]) -> dict[int, FaceImage]:
    """The dataset's images for a batch of tasks, by position in the batch."""
    codes = [e.image for e in entries if e.image]
    names = [e.name for e in entries if not e.image]
    images = dataset.images.filter(code__in=codes) | dataset.images.filter(original_name__in=names)
    by_code = {str(i.code): i for i in images}
    by_name = {i.original_name: i for i in images}
    matched = {}
    for index, entry in enumerate(entries):
        image = by_code.get(entry.image or "") or by_name.get(entry.name)
        if image is not None:
            matched[index] = image
    return matched


def _import_batch(
    dataset: Dataset, entries: list[ImportedLabels], report: LabelStudioReport
) -> None:
    matched = _match(dataset, entries)
    changed = []
    for index, entry in enumerate(entries):
        image = matched.get(index)
        report.problems += [f"{entry.name}: {p}" for p in entry.problems]
        if image is None:
            report.unmatched.append(entry.name or entry.image_url)
        elif not entry.grains():
            report.without_annotation += 1
        elif _apply(image, entry):
            changed.append(image)
        else:
            report.unchanged += 1
    fields = ["known_expression", "known_valence", "known_arousal", "known_aus"]
    FaceImage.objects.bulk_update(changed, fields)
    report.updated += len(changed)


def labelstudio_import(*, dataset: Dataset, path: Path) -> LabelStudioReport:
    """Read a Label Studio JSON export and set the matched images' human labels."""
    tasks = _read_tasks(path)
    aus = dataset.vocabulary().aus
    report = LabelStudioReport(tasks=len(tasks))
    with transaction.atomic():
        for start in range(0, len(tasks), BATCH_SIZE):
            batch = [labels_from_task(t, aus) for t in tasks[start : start + BATCH_SIZE]]
            _import_batch(dataset, batch, report)
    return report
