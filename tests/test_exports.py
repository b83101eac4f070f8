"""Exports as jobs: files and manifests, provenance filters, cancellation, commands, pages."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.urls import reverse
from playwright.sync_api import expect

import seke_app
from seke_app.exports import writers as export_writers
from seke_app.exports.services import (
    ExportOptions,
    ExportRefused,
    export_cancel,
    export_create,
    export_run,
)
from seke_app.models import Dataset, FaceImage
from seke_app.models.exports import Export, exports_dir
from seke_app.queue import get_queue
from tests.browser import BrowserPage
from tests.conftest import PASSWORD, client_for
from tests.factories import record_decision
from tests.test_curation import annotate, make_images, make_run
from tests.workers import emptied_queue, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)

EXPRESSIONS = ("happiness", "sadness", "fear", "anger", "surprise", "neutral")


_own_queue = emptied_queue("exports")


def work() -> None:
    work_in_process("exports")


@pytest.fixture
def labelled(annotator: User) -> Dataset:
    """Twelve faces of four subjects: every one machine-labelled, some imported, one reviewed."""
    dataset, images = make_images(
        12,
        write_files=True,
        subject=lambda i: f"s{i % 4}",
        known_expression=lambda i: EXPRESSIONS[i % 6] if i % 3 == 0 else None,
    )
    run = make_run(dataset)
    for i, image in enumerate(images):
        annotate(image, run, expression=EXPRESSIONS[i % 6], confidence=0.52 + i * 0.04)
    flagged = annotate(images[1], make_run(dataset), expression="contempt", flagged=True)
    record_decision(
        flagged, annotator, "correct", expression="contempt", aus={"12": True, "14": True}
    )
    return dataset


def read_zip(export: Export) -> zipfile.ZipFile:
    export.refresh_from_db()
    assert export.status == "done", export.error
    path = export.absolute_path()
    assert path is not None and path.is_file() and path.stat().st_size == export.file_size
    return zipfile.ZipFile(path)


def jsonl(archive: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in archive.read(name).decode().splitlines()]


def test_it_exports_feid_in_every_format_with_manifest_and_card(labelled: Dataset) -> None:
    options = ExportOptions(formats=("llava", "openai", "sharegpt"), seed=3)
    export = export_create(dataset=labelled, kind="feid", options=options)
    assert export.status == "queued"
    work()
    archive = read_zip(export)
    names = set(archive.namelist())
    assert names == {
        "feid_llava.jsonl",
        "feid_openai.jsonl",
        "feid_openai_labels.jsonl",
        "feid_sharegpt.jsonl",
        "dataset_info.json",
        "README.md",
        "SHA256SUMS",
        "manifest.json",
    }
    llava = jsonl(archive, "feid_llava.jsonl")
    assert len(llava) == 12 == export.n_written and export.n_done == 12 == export.n_total
    reviewed = next(line for line in llava if line["labels"]["expression"] == "contempt")
    assert reviewed["provenance"]["expression"]["reviewer"] == "ann"
    assert reviewed["labels"]["aus"] == {"AU12": True, "AU14": True}
    assert [line["id"] for line in jsonl(archive, "feid_openai_labels.jsonl")] == [
        line["id"] for line in llava
    ]
    assert reviewed["image"].startswith("faces/")

    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["seke_version"] == seke_app.__version__
    assert manifest["counts"]["records"] == 12
    assert manifest["counts"]["provenance"]["expression"] == {
        "human": 1,
        "dataset": 4,
        "machine": 7,
    }
    assert manifest["filters"]["formats"] == ["llava", "openai", "sharegpt"]
    assert [p["number"] for p in manifest["prompt_versions"]] == [
        labelled.runs.first().prompt_version.number  # type: ignore[union-attr]
    ]
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == names - {"manifest.json"}
    for name, entry in listed.items():
        data = archive.read(name)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    card = archive.read("README.md").decode()
    assert "## Provenance" in card and "## Machine confidence" in card and "12 images." in card
    # The working files are gone; only the archive is left.
    assert [p.name for p in (exports_dir() / str(export.code)).iterdir()] == [export.file_name()]


def test_it_copies_images_and_embeds_them_as_data_urls(labelled: Dataset) -> None:
    options = ExportOptions(formats=("llava", "openai"), images="copy", openai_images="data_url")
    export = export_create(dataset=labelled, kind="feid", options=options)
    work()
    archive = read_zip(export)
    llava = jsonl(archive, "feid_llava.jsonl")
    openai = jsonl(archive, "feid_openai.jsonl")
    for line, chat in zip(llava, openai, strict=True):
        copied = archive.read(line["image"])
        image = FaceImage.objects.get(code=line["id"])
        assert copied == (Path(settings.MEDIA_ROOT) / image.file.name).read_bytes()
        url = chat["messages"][1]["content"][1]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert base64.b64decode(url.split(",", 1)[1]) == copied
    sums = archive.read("SHA256SUMS").decode()
    assert sum(1 for line in sums.splitlines() if "  images/" in line) == 12


def test_it_admits_only_the_provenance_and_confidence_asked_for(labelled: Dataset) -> None:
    options = ExportOptions(
        sources={
            "expression": ("human", "dataset", "machine"),
            "va": ("dataset",),
            "aus": ("human",),
        },
        min_confidence=0.7,
    )
    export = export_create(dataset=labelled, kind="feid", options=options)
    work()
    lines = jsonl(read_zip(export), "feid_llava.jsonl")
    for line in lines:
        sources = {g: p["source"] for g, p in line["provenance"].items()}
        assert sources.get("aus") in (None, "human") and "va" not in sources
        expression = line["provenance"].get("expression")
        if expression and expression["source"] == "machine":
            assert expression["confidence"] >= 0.7
    assert sum("aus" in line["labels"] for line in lines) == 1
    # Images 2 and 4 have only machine expressions under 0.7 and nothing else admitted.
    assert export.n_skipped == 2 and export.n_written == 10


def test_it_cancels_a_running_export_and_leaves_no_file(
    labelled: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = export_create(dataset=labelled, kind="feid", options=ExportOptions(), enqueue=False)
    monkeypatch.setattr(export_writers, "PROGRESS_EVERY", 2)
    real_records = export_writers.curated_records

    def cancel_midway(**kwargs: Any) -> Iterator[Any]:
        for index, chunk in enumerate(real_records(**{**kwargs, "chunk_size": 3})):
            if index == 1:
                export_cancel(export=export)
            yield chunk

    monkeypatch.setattr(export_writers, "curated_records", cancel_midway)
    export_run(export_id=export.id)
    export.refresh_from_db()
    assert export.status == "cancelled" and export.cancelled_at is not None
    assert 0 < export.n_done < 12 and not export.file_path
    assert not (exports_dir() / str(export.code)).exists()
    with pytest.raises(ExportRefused, match="cannot be cancelled"):
        export_cancel(export=export)


def test_it_does_not_start_an_export_cancelled_in_the_queue(labelled: Dataset) -> None:
    export = export_create(dataset=labelled, kind="feid", options=ExportOptions())
    export_cancel(export=export)
    work()
    export.refresh_from_db()
    assert export.status == "cancelled" and export.started_at is None and export.n_done == 0


def test_it_fails_with_the_reason_when_an_image_to_copy_is_missing(labelled: Dataset) -> None:
    FaceImage.objects.filter(dataset=labelled).update(file="faces/gone.png")
    export = export_create(
        dataset=labelled, kind="feid", options=ExportOptions(images="copy"), enqueue=False
    )
    export_run(export_id=export.id)
    export.refresh_from_db()
    assert export.status == "failed" and "FileNotFoundError" in export.error
    assert not (exports_dir() / str(export.code)).exists()


def test_it_refuses_options_that_cannot_work(labelled: Dataset) -> None:
    bad = [
        ExportOptions(formats=("alpaca",)),
        ExportOptions(grains=()),
        ExportOptions(sources={"expression": (), "va": ("human",), "aus": ("human",)}),
        ExportOptions(min_confidence=1.5),
        ExportOptions(images="copy", archive=False),
        ExportOptions(formats=("openai",), archive=False),
        ExportOptions(holdout="00000000-0000-0000-0000-000000000000"),
    ]
    for options in bad:
        with pytest.raises(ExportRefused):
            export_create(dataset=labelled, kind="feid", options=options)
    with pytest.raises(ExportRefused, match="needs an archive"):
        export_create(dataset=labelled, kind="feab", options=ExportOptions(archive=False))
    with pytest.raises(ExportRefused, match="unknown export options"):
        ExportOptions.from_json({"colour": "red"})
    assert not Export.objects.exists()


def test_it_writes_one_bare_file_without_an_archive(labelled: Dataset) -> None:
    options = ExportOptions(formats=("sharegpt",), archive=False, image_root="/srv/faces/")
    export = export_create(dataset=labelled, kind="feid", options=options)
    work()
    export.refresh_from_db()
    path = export.absolute_path()
    assert path is not None and path.suffix == ".jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 12 and lines[0]["images"][0].startswith("/srv/faces/faces/")


def test_it_exports_a_subject_disjoint_benchmark_and_scores_it(
    labelled: Dataset, tmp_path: Path
) -> None:
    export = export_create(
        dataset=labelled, kind="feab", options=ExportOptions(test_fraction=0.25, seed=5)
    )
    work()
    archive = read_zip(export)
    split = json.loads(archive.read("split.json"))
    assert split["method"] == "subject-disjoint" and split["n_test"] == 3
    test_images = archive.read("test_images.txt").decode().split()
    train_images = archive.read("train_images.txt").decode().split()
    subjects = {str(c): s for c, s in FaceImage.objects.values_list("code", "subject")}
    test_subjects = {subjects[c] for c in test_images}
    assert not test_subjects & {subjects[c] for c in train_images}
    assert export.n_total == 24 and export.n_done == 24 and export.n_written == 3
    assert export.n_skipped == 0
    counts = json.loads(archive.read("manifest.json"))["counts"]
    assert counts["images"] == 12 and counts["records"] == 3
    questions = jsonl(archive, "feab_questions.jsonl")
    answers = jsonl(archive, "feab_answers.jsonl")
    assert len(questions) == len(answers) == 9
    # A perfect model: answers taken from the keys, as structured JSON.
    predictions = tmp_path / "perfect.jsonl"
    predictions.write_text(
        "".join(json.dumps({"id": a["id"], "prediction": a["answer"]}) + "\n" for a in answers)
    )
    path = export.absolute_path()
    call_command("feab_evaluate", benchmark=path, predictions=predictions, out_dir=tmp_path)
    report = json.loads((tmp_path / "feab_report.json").read_text())
    assert report["expression"]["accuracy"] == 1.0 and report["aus"]["mean_f1"] == 1.0

    # A FEID export can leave the benchmark's images out.
    feid = export_create(
        dataset=labelled, kind="feid", options=ExportOptions(holdout=str(export.code))
    )
    work()
    ids = {line["id"] for line in jsonl(read_zip(feid), "feid_llava.jsonl")}
    assert ids == set(train_images)


def test_it_exports_label_studio_tasks_with_their_config(labelled: Dataset) -> None:
    options = ExportOptions(image_root="/data/local-files/?d=")
    export = export_create(dataset=labelled, kind="labelstudio", options=options)
    work()
    archive = read_zip(export)
    tasks = json.loads(archive.read("tasks.json"))
    assert len(tasks) == 12
    assert all(t["data"]["image"].startswith("/data/local-files/?d=faces/") for t in tasks)
    assert '<Choices name="aus"' in archive.read("label_config.xml").decode()


def test_it_runs_the_commands_inline_and_copies_the_file(labelled: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "feid.zip"
    stdout = io.StringIO()
    call_command(
        "export_feid",
        dataset="drawn",
        formats=["llava", "sharegpt"],
        admit=["aus=human"],
        inline=True,
        out=out,
        stdout=stdout,
    )
    assert "12 records from 12 images read" in stdout.getvalue()
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["filters"]["sources"]["aus"] == ["human"]
    call_command("export_feab", dataset="drawn", inline=True, out=tmp_path, stdout=stdout)
    call_command(
        "export_labelstudio",
        dataset="drawn",
        inline=True,
        no_archive=True,
        out=tmp_path,
        stdout=stdout,
    )
    assert len(list(tmp_path.glob("drawn-feab-*.zip"))) == 1
    assert len(list(tmp_path.glob("drawn-labelstudio-*.json"))) == 1
    with pytest.raises(CommandError, match="no dataset called"):
        call_command("export_feid", dataset="nope", inline=True)
    with pytest.raises(CommandError, match="expected GRAIN=SOURCE"):
        call_command("export_feid", dataset="drawn", admit=["colour=red"], inline=True)


def test_it_waits_for_a_worker_process_from_the_command(
    labelled: Dataset, tmp_path: Path, start_worker: Callable[..., Any]
) -> None:
    get_queue("exports").empty()
    worker = start_worker(("exports",))
    out = tmp_path / "from-worker.zip"
    call_command("export_feid", dataset="drawn", out=out, stdout=io.StringIO())
    assert worker.poll() is None, worker.output()
    with zipfile.ZipFile(out) as archive:
        assert len(jsonl(archive, "feid_llava.jsonl")) == 12


# --- Pages -----------------------------------------------------------------------------


@pytest.fixture
def done_export(labelled: Dataset) -> Export:
    export = export_create(dataset=labelled, kind="feid", options=ExportOptions(), enqueue=False)
    export_run(export_id=export.id)
    export.refresh_from_db()
    return export


def pages(export: Export) -> dict[str, str]:
    return {
        "export_list": reverse("export_list"),
        "export_rows": reverse("export_rows"),
        "export_new": reverse("export_new", args=[export.dataset.code]),
        "export_detail": reverse("export_detail", args=[export.code]),
        "export_progress": reverse("export_progress", args=[export.code]),
        "export_download": reverse("export_download", args=[export.code]),
    }


@pytest.mark.parametrize("role", ["anonymous", "outsider", "annotator", "admin"])
def test_it_shows_export_pages_to_admins_only(
    role: str, done_export: Export, outsider: User, annotator: User, admin_user: User
) -> None:
    user = {"anonymous": None, "outsider": outsider, "annotator": annotator, "admin": admin_user}
    client = client_for(user[role])
    for name, url in pages(done_export).items():
        response = client.get(url)
        expected = {"anonymous": 302, "outsider": 403, "annotator": 403, "admin": 200}[role]
        assert response.status_code == expected, (role, name)
        if role == "anonymous":
            assert response["Location"].startswith(reverse("login"))
    cancel = reverse("export_cancel", args=[done_export.code])
    expected_post = {"anonymous": 302, "outsider": 403, "annotator": 403, "admin": 302}[role]
    assert client.post(cancel).status_code == expected_post
    if role == "admin":
        assert client.get(cancel).status_code == 405


def test_it_streams_the_finished_file_as_a_download(done_export: Export, admin_user: User) -> None:
    response = client_for(admin_user).get(reverse("export_download", args=[done_export.code]))
    assert response["Content-Disposition"].startswith("attachment;")
    assert done_export.file_name() in response["Content-Disposition"]
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert zipfile.ZipFile(io.BytesIO(body)).read("manifest.json")


def test_it_starts_polls_and_cancels_an_export_from_the_pages(
    labelled: Dataset, admin_user: User
) -> None:
    client = client_for(admin_user)
    listing = client.get(reverse("export_list")).content.decode()
    assert reverse("export_new", args=[labelled.code]) in listing
    response = client.post(
        reverse("export_new", args=[labelled.code]),
        {
            "kind": "feid",
            "formats": ["llava"],
            "grains": ["expression", "va", "aus"],
            "expression_sources": ["human", "dataset", "machine"],
            "va_sources": ["human", "dataset", "machine"],
            "aus_sources": ["human"],
            "min_confidence": "0",
            "images": "reference",
            "openai_images": "url",
            "seed": "0",
            "test_fraction": "0.2",
            "archive": "on",
        },
    )
    export = Export.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "export_detail", args=[export.code]
    )
    assert export.options["sources"]["aus"] == ["human"] and export.created_by == admin_user
    progress = client.get(reverse("export_progress", args=[export.code])).content.decode()
    assert 'hx-trigger="every 1s"' in progress and "Cancel" in progress
    rows = client.get(reverse("export_rows")).content.decode()
    assert 'hx-get="/exports/rows"' in rows
    cancelled = client.post(reverse("export_cancel", args=[export.code]), follow=True)
    assert "Export cancelled." in cancelled.content.decode()
    export.refresh_from_db()
    assert export.status == "cancelled"
    finished = client.get(reverse("export_progress", args=[export.code])).content.decode()
    assert "hx-trigger" not in finished
    refused = client.post(
        reverse("export_new", args=[labelled.code]),
        {
            "kind": "feab",
            "grains": ["expression"],
            "expression_sources": ["human"],
            "min_confidence": "0",
            "images": "copy",
            "openai_images": "url",
            "seed": "0",
            "test_fraction": "0.2",
        },
    )
    assert re.search(r"needs an archive", refused.content.decode())
    assert Export.objects.count() == 1


def test_it_offers_the_download_link_once_done(done_export: Export, admin_user: User) -> None:
    page = client_for(admin_user).get(reverse("export_detail", args=[done_export.code]))
    text = page.content.decode()
    assert reverse("export_download", args=[done_export.code]) in text
    assert "hx-trigger" not in text and "100.0%" in text


# --- In the browser --------------------------------------------------------------------


@pytest.mark.browser
def test_it_exports_from_the_browser_to_the_downloaded_file(
    labelled: Dataset,
    admin_user: User,
    tmp_path: Path,
    live_server: Any,
    browser_page: BrowserPage,
    start_worker: Callable[..., Any],
) -> None:
    worker = start_worker(("exports",))
    page = browser_page.page
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Exports").click()
    page.get_by_role("link", name="Export drawn…").click()
    page.get_by_label("Kind").select_option("feid")
    page.get_by_label("ShareGPT (LLaMA-Factory)").check()
    page.get_by_role("button", name="Start the export").click()
    expect(page).to_have_url(re.compile(r"/exports/[0-9a-f-]{36}/$"))
    # The progress section polls until the worker is done, then offers the file.
    download_link = page.locator("#export-download")
    expect(download_link).to_be_visible(timeout=60_000)
    expect(page.locator("#export-status")).to_have_text("Done")
    with page.expect_download() as info:
        download_link.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert worker.poll() is None, worker.output()
    with zipfile.ZipFile(saved) as archive:
        assert len(jsonl(archive, "feid_llava.jsonl")) == 12
        assert len(jsonl(archive, "feid_sharegpt.jsonl")) == 12
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["export"] == str(Export.objects.get().code)
