"""Uploads from the import page: a size limit enforced unread, a background job, its pages."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http.multipartparser import MultiPartParser
from django.test import Client
from django.urls import reverse

from seke_app.datasets import services
from seke_app.datasets.services import (
    ImportRefused,
    dataset_import_cancel,
    dataset_import_create,
    dataset_import_run,
)
from seke_app.models import Dataset, FaceImage
from seke_app.models.datasets import DatasetImport, imports_dir
from tests.browser import BrowserPage
from tests.conftest import PASSWORD, client_for, draw_face
from tests.uploads import faces_zip, left_in_imports, zip_bytes
from tests.workers import emptied_queue, work_in_process

pytestmark = pytest.mark.django_db(transaction=True)

Status = DatasetImport.Status


_own_queue = emptied_queue("default")


def work() -> None:
    work_in_process("default")


def upload(client: Client, data: bytes, name: str = "faces.zip", **fields: str) -> Any:
    files = SimpleUploadedFile(name, data, "application/zip")
    return client.post(reverse("dataset_upload"), {"dataset": "uploaded", "files": files, **fields})


# --- The upload ---------------------------------------------------------------------------


def test_it_imports_an_upload_as_a_background_job(admin_user: User) -> None:
    client = client_for(admin_user)
    response = upload(client, faces_zip(3, manifest="file,expression\n0.png,fear\n"))
    job = DatasetImport.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("import_detail", args=[job.code])
    # Nothing is imported inside the request: the upload waits in the data directory.
    assert job.status == Status.QUEUED and job.job_id and job.created_by == admin_user
    assert not FaceImage.objects.exists() and not Dataset.objects.exists()
    assert job.source_path() == imports_dir() / str(job.code) / "faces.zip"
    assert job.source_path().is_file() and job.upload_name == "faces.zip"
    page = client.get(reverse("import_detail", args=[job.code])).content.decode()
    assert 'hx-trigger="every 1s"' in page and "rqworker default" in page
    work()
    job.refresh_from_db()
    assert job.status == Status.DONE, job.error
    assert (job.n_imported, job.n_labelled, job.n_rejected, job.n_done, job.n_total) == (
        3,
        1,
        1,
        4,
        4,
    )
    assert job.rejected == [["broken.png", "not an image", "broken.png: not a readable image file"]]
    assert job.dataset == Dataset.objects.get(name="uploaded")
    assert FaceImage.objects.get(original_name="0.png").known_expression == "fear"
    assert left_in_imports() == []
    done = client.get(reverse("import_progress", args=[job.code])).content.decode()
    assert "hx-trigger" not in done and "100.0%" in done
    assert "broken.png" in done and "not a readable image file" in done
    assert reverse("dataset_detail", args=[job.dataset.code]) in done


def test_it_imports_several_image_files_and_a_manifest(admin_user: User) -> None:
    files = [
        SimpleUploadedFile("one.png", draw_face(seed=1), "image/png"),
        SimpleUploadedFile("two.png", b"broken", "image/png"),
        SimpleUploadedFile("manifest.csv", b"file,expression\none.png,fear\n", "text/csv"),
    ]
    client = client_for(admin_user)
    client.post(reverse("dataset_upload"), {"dataset": "several", "files": files})
    job = DatasetImport.objects.get()
    assert job.upload_name == "3 files: one.png, two.png, manifest.csv"
    work()
    job.refresh_from_db()
    assert (job.status, job.n_imported, job.n_rejected) == (Status.DONE, 1, 1)
    assert FaceImage.objects.get().known_expression == "fear"


def test_it_writes_uploads_to_the_data_directory_not_to_memory(
    admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers: list[str] = []
    original = services._keep_uploads

    def spy(uploads: Any, folder: Path) -> Path:
        handlers.extend(type(u).__name__ for u in uploads)
        for each in uploads:
            assert Path(each.temporary_file_path()).parent.parent == imports_dir() / "incoming"
        return original(uploads, folder)

    monkeypatch.setattr(services, "_keep_uploads", spy)
    upload(client_for(admin_user), faces_zip(1))
    assert handlers == ["StoredUpload"]
    # The request's own folder is gone: the zip was moved into the job's.
    assert not any((imports_dir() / "incoming").iterdir())


def test_it_refuses_an_upload_over_the_limit_before_reading_it(
    admin_user: User, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MAX_UPLOAD_BYTES = 1024 * 1024  # SEKE_MAX_UPLOAD_MB=1
    parsed: list[int] = []
    parse = MultiPartParser.parse

    def spy(self: MultiPartParser) -> Any:
        parsed.append(1)
        return parse(self)

    monkeypatch.setattr(MultiPartParser, "parse", spy)
    big = zip_bytes({"noise.png": random.Random(0).randbytes(1200 * 1024)})
    response = upload(client_for(admin_user), big)
    assert response.status_code == 413
    text = response.content.decode()
    assert re.search(
        r"The upload is 1\.\d+ MiB, over the limit of 1 MiB \(SEKE_MAX_UPLOAD_MB\)", text
    )
    assert "import_faces" in text
    assert parsed == []
    assert not DatasetImport.objects.exists() and not Dataset.objects.exists()
    assert left_in_imports() == []


def test_it_refuses_a_non_utf8_manifest_on_the_page_and_keeps_nothing(admin_user: User) -> None:
    latin1 = "file,subject\n0.png,Jos\u00e9\n".encode("latin-1")
    response = upload(client_for(admin_user), faces_zip(1, manifest=latin1))
    assert response.status_code == 200
    text = response.content.decode()
    assert "manifest.csv in faces.zip is not UTF-8 text" in text and "line 2" in text
    assert not DatasetImport.objects.exists() and not Dataset.objects.exists()
    assert left_in_imports() == []


def test_it_refuses_a_manifest_without_a_file_column_on_the_page(admin_user: User) -> None:
    response = upload(client_for(admin_user), faces_zip(1, manifest="image,expression\n"))
    assert "no &#x27;file&#x27; column" in response.content.decode()
    assert not DatasetImport.objects.exists() and left_in_imports() == []


def test_it_refuses_an_upload_when_the_queue_is_down(
    admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seke_app.queue import QueueUnavailable

    def down(name: str = "default") -> Any:
        raise QueueUnavailable("Redis at REDIS_URL does not answer: refused")

    monkeypatch.setattr(services, "get_queue", down)
    response = upload(client_for(admin_user), faces_zip(1))
    assert "Redis at REDIS_URL does not answer" in response.content.decode()
    assert not DatasetImport.objects.exists() and left_in_imports() == []


# --- The job ---------------------------------------------------------------------------


def create(data: bytes, name: str = "faces.zip", **options: Any) -> DatasetImport:
    return dataset_import_create(
        uploads=[SimpleUploadedFile(name, data)],
        dataset_name=options.pop("dataset_name", "uploaded"),
        enqueue=False,
        **options,
    )


def test_it_fails_an_import_that_accepts_no_file_and_creates_nothing(admin_user: User) -> None:
    job = create(zip_bytes({"a.png": b"nope", "b.png": b""}))
    dataset_import_run(import_id=job.id)
    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert job.error == "nothing was imported: 2 files rejected, none accepted"
    assert job.n_rejected == 2 and job.rejected_by_reason == {"not an image": 1, "empty file": 1}
    assert not Dataset.objects.exists() and job.dataset is None
    page = client_for(admin_user).get(reverse("import_detail", args=[job.code])).content.decode()
    assert (
        'class="error" role="alert" id="import-error">Import failed: nothing was imported' in page
    )
    assert "Open uploaded" not in page


def test_it_keeps_a_bounded_list_of_rejections_and_counts_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DatasetImport, "REJECTIONS_KEPT", 2)
    job = create(zip_bytes({f"{i}.png": b"nope" for i in range(5)} | {"ok.png": draw_face()}))
    dataset_import_run(import_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.n_imported, job.n_rejected, len(job.rejected)) == (
        Status.DONE,
        1,
        5,
        2,
    )


def test_it_records_a_refusal_found_by_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    job = create(faces_zip(1))
    # Another import created the dataset with another vocabulary since the upload.
    Dataset.objects.create(name="uploaded", au_vocabulary="ckplus")
    DatasetImport.objects.filter(id=job.id).update(au_vocabulary="disfa12")
    dataset_import_run(import_id=job.id)
    job.refresh_from_db()
    assert job.status == Status.FAILED and "uses the AU vocabulary 'ckplus'" in job.error
    assert not job.folder().exists()


def test_it_cancels_a_queued_import_and_removes_its_upload() -> None:
    job = create(faces_zip(2))
    assert job.folder().is_dir()
    dataset_import_cancel(job=job)
    dataset_import_run(import_id=job.id)
    job.refresh_from_db()
    assert job.status == Status.CANCELLED and not job.folder().exists()
    assert not FaceImage.objects.exists()
    with pytest.raises(ImportRefused, match="cancelled cannot be cancelled"):
        dataset_import_cancel(job=job)


def test_it_stops_a_running_import_between_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "BATCH_SIZE", 2)
    job = create(faces_zip(6))
    original = services._import_batch
    batches: list[int] = []

    def cancel_after_first(*args: Any) -> None:
        original(*args)
        batches.append(1)
        if len(batches) == 1:
            dataset_import_cancel(job=DatasetImport.objects.get(id=job.id))

    monkeypatch.setattr(services, "_import_batch", cancel_after_first)
    dataset_import_run(import_id=job.id)
    job.refresh_from_db()
    assert job.status == Status.CANCELLED and len(batches) == 1
    assert FaceImage.objects.count() == 2 and job.n_imported == 2
    assert not job.folder().exists()


def test_it_refuses_an_oversized_upload_in_the_service_too(settings: Any) -> None:
    settings.MAX_UPLOAD_BYTES = 1000
    expected = "The upload is 0.0019 MiB, over the limit of 0.00095 MiB"
    with pytest.raises(ImportRefused, match=re.escape(expected)):
        create(b"x" * 2000)
    assert left_in_imports() == []


# --- Pages ---------------------------------------------------------------------------------


def test_it_shows_import_pages_to_admins_only(
    admin_user: User, annotator: User, outsider: User
) -> None:
    job = create(faces_zip(1))
    for user, allowed in ((None, False), (outsider, False), (annotator, False), (admin_user, True)):
        client = client_for(user)
        for name in ("import_detail", "import_progress"):
            response = client.get(reverse(name, args=[job.code]))
            assert (response.status_code == 200) is allowed, (user, name)
        cancel = client.post(reverse("import_cancel", args=[job.code]))
        assert (cancel.status_code == 302 and cancel["Location"].startswith("/imports/")) is allowed
    job.refresh_from_db()
    assert job.status == Status.CANCELLED
    assert client_for(admin_user).get(reverse("import_cancel", args=[job.code])).status_code == 405


def test_it_lists_recent_imports_on_the_upload_page(admin_user: User) -> None:
    job = create(faces_zip(1))
    page = client_for(admin_user).get(reverse("dataset_upload")).content.decode()
    assert reverse("import_detail", args=[job.code]) in page and "faces.zip" in page
    assert 'data-max-bytes="' + str(settings.MAX_UPLOAD_BYTES) + '"' in page


def test_it_checks_the_csrf_token_after_the_size(admin_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = upload(client, faces_zip(1))
    assert response.status_code == 403
    assert not DatasetImport.objects.exists() and left_in_imports() == []


# --- In the browser --------------------------------------------------------------------


@pytest.mark.browser
def test_it_uploads_a_zip_in_the_browser_and_follows_the_job(
    admin_user: User,
    tmp_path: Path,
    live_server: Any,
    browser_page: BrowserPage,
    start_worker: Callable[..., Any],
) -> None:
    worker = start_worker(("default",))
    archive = tmp_path / "faces.zip"
    archive.write_bytes(faces_zip(3, manifest="file,expression\n1.png,surprise\n"))
    page, expect = browser_page.page, browser_page.expect
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Import").click()
    page.get_by_label("Dataset").fill("browser-faces")
    page.get_by_label("Files").set_input_files(str(archive))
    page.get_by_role("button", name="Import").click()
    expect(page).to_have_url(re.compile(r"/imports/[0-9a-f-]{36}/$"))
    # The progress section polls until the worker is done, then offers the dataset.
    expect(page.locator("#import-status")).to_have_text("Done", timeout=60_000)
    expect(page.locator("#n-imported")).to_have_text("3 (1 with labels)")
    expect(page.locator("#import-rejected")).to_contain_text("broken.png")
    page.locator("#import-dataset").click()
    expect(page.get_by_role("heading", name="browser-faces")).to_be_visible()
    assert worker.poll() is None, worker.output()
    assert FaceImage.objects.filter(dataset__name="browser-faces").count() == 3


@pytest.mark.browser
def test_it_refuses_an_upload_over_the_limit_in_the_browser_before_sending_it(
    admin_user: User, tmp_path: Path, live_server: Any, browser_page: BrowserPage, settings: Any
) -> None:
    settings.MAX_UPLOAD_BYTES = 1024 * 1024
    archive = tmp_path / "big.zip"
    archive.write_bytes(b"PK" + bytes(2 * 1024 * 1024))
    page, expect = browser_page.page, browser_page.expect
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}{reverse('dataset_upload')}")
    page.get_by_label("Dataset").fill("too-big")
    page.get_by_label("Files").set_input_files(str(archive))
    page.get_by_role("button", name="Import").click()
    expect(page.locator("#upload-too-large")).to_contain_text(
        "The upload is 2 MiB, over the limit of 1 MiB (SEKE_MAX_UPLOAD_MB)"
    )
    expect(page).to_have_url(re.compile(r"/datasets/upload/$"))
    assert not DatasetImport.objects.exists()
