"""Label Studio interoperability: export tasks, label them there, import them back."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from seke_app.datasets.labelstudio import LabelStudioRefused, labelstudio_import
from seke_app.exports.curation import curated_labels
from seke_app.exports.services import ExportOptions, export_create, export_run
from seke_app.models import Dataset, FaceImage
from seke_app.models.exports import Export
from tests.test_curation import annotate, make_images, make_run

pytestmark = pytest.mark.django_db

AUS_OFF = {"1": False, "2": False, "4": False, "12": False}


@pytest.fixture
def dataset() -> Dataset:
    """Four faces: two with imported labels, all four with accepted machine labels."""
    dataset, images = make_images(
        4,
        known_expression=lambda i: "sadness" if i < 2 else None,
        known_valence=lambda i: -0.4 if i < 2 else None,
        known_arousal=lambda i: -0.2 if i < 2 else None,
    )
    run = make_run(dataset)
    for image in images:
        annotate(image, run, aus={**AUS_OFF, "12": True})
    return dataset


def exported_tasks(dataset: Dataset) -> list[dict[str, Any]]:
    export = export_create(
        dataset=dataset, kind="labelstudio", options=ExportOptions(archive=False), enqueue=False
    )
    export_run(export_id=export.id)
    export.refresh_from_db()
    assert export.status == Export.Status.DONE, export.error
    path = export.absolute_path()
    assert path is not None and path.suffix == ".json"
    tasks: list[dict[str, Any]] = json.loads(path.read_text())
    return tasks


def submit(task: dict[str, Any], created_at: str, **changes: Any) -> None:
    """What Label Studio records when a person submits the task, predictions accepted."""
    results = [r for a in task["annotations"] + task["predictions"] for r in a["result"]]
    for item in results:
        if item["from_name"] in changes:
            key = "number" if item["type"] == "number" else "choices"
            item["value"] = {key: changes[item["from_name"]]}
    task["annotations"] = [
        {
            "id": 1,
            "result": results,
            "was_cancelled": False,
            "created_at": created_at,
            "completed_by": 7,
        }
    ]


def write(tmp_path: Path, tasks: list[dict[str, Any]]) -> Path:
    path = tmp_path / "label-studio-export.json"
    path.write_text(json.dumps(tasks))
    return path


def test_it_round_trips_labels_through_label_studio_unchanged(
    dataset: Dataset, tmp_path: Path
) -> None:
    tasks = exported_tasks(dataset)
    assert len(tasks) == 4
    before = {r.image: r.labels_json() for r in curated_labels(dataset=dataset)}
    for task in tasks:
        submit(task, "2025-01-01T00:00:00Z")
    report = labelstudio_import(dataset=dataset, path=write(tmp_path, tasks))
    assert report.tasks == 4 and not report.unmatched and not report.problems
    after = {r.image: r.labels_json() for r in curated_labels(dataset=dataset)}
    assert after == before
    # Every grain is now an imported human label.
    assert {p.source for r in curated_labels(dataset=dataset) for p in r.provenance.values()} == {
        "dataset"
    }
    image = FaceImage.objects.get(original_name="3.png")
    # Only the AUs that were coded come back, the absent ones as absent.
    assert image.known_aus == {**AUS_OFF, "12": True}


def test_it_imports_corrections_made_in_label_studio(dataset: Dataset, tmp_path: Path) -> None:
    tasks = exported_tasks(dataset)
    first = next(t for t in tasks if t["data"]["name"] == "0.png")
    submit(first, "2025-01-02T00:00:00Z", expression=["fear"], valence=0.25, aus=["AU1", "AU2"])
    report = labelstudio_import(dataset=dataset, path=write(tmp_path, [first]))
    assert report.updated == 1
    image = FaceImage.objects.get(original_name="0.png")
    assert image.known_expression == "fear" and image.known_valence == 0.25
    assert image.known_arousal == -0.2
    assert {au for au, on in (image.known_aus or {}).items() if on} == {"1", "2"}


def test_it_matches_foreign_tasks_by_file_name_and_reports_the_rest(
    dataset: Dataset, tmp_path: Path
) -> None:
    tasks = [
        {
            "data": {"image": "/data/upload/1/2.png"},
            "annotations": [
                {
                    "result": [
                        {
                            "from_name": "expression",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": ["Anger"]},
                        }
                    ]
                }
            ],
        },
        {"data": {"image": "/data/upload/1/unknown.png"}, "annotations": []},
        {"data": {"image": "/data/upload/1/3.png"}, "annotations": [{"was_cancelled": True}]},
    ]
    report = labelstudio_import(dataset=dataset, path=write(tmp_path, tasks))
    assert report.updated == 1 and report.unmatched == ["unknown.png"]
    assert report.without_annotation == 1
    assert FaceImage.objects.get(original_name="2.png").known_expression == "anger"


def test_it_refuses_files_that_are_not_label_studio_json(dataset: Dataset, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(LabelStudioRefused, match="not a JSON file"):
        labelstudio_import(dataset=dataset, path=bad)
    bad.write_text("[1, 2]")
    with pytest.raises(LabelStudioRefused, match="not a list of Label Studio tasks"):
        labelstudio_import(dataset=dataset, path=bad)


def test_it_imports_from_the_command(dataset: Dataset, tmp_path: Path) -> None:
    tasks = exported_tasks(dataset)
    for task in tasks:
        submit(task, "2025-01-01T00:00:00Z", expression=["surprise"])
    stdout = io.StringIO()
    call_command(
        "import_labelstudio", str(write(tmp_path, tasks)), dataset=dataset.name, stdout=stdout
    )
    assert "4 images updated" in stdout.getvalue()
    assert set(FaceImage.objects.values_list("known_expression", flat=True)) == {"surprise"}
    with pytest.raises(CommandError, match="no dataset called"):
        call_command("import_labelstudio", str(tmp_path / "x.json"), dataset="nope")
