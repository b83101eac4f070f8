"""Datasets and imports through the API: the import page's rules, streamed uploads, a job."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.http.multipartparser import MultiPartParser
from django.test import Client
from django.test.utils import CaptureQueriesContext

from seke_app.datasets import services
from seke_app.datasets.services import dataset_import_run
from seke_app.models import Dataset, FaceImage
from seke_app.models.datasets import DatasetImport, imports_dir
from tests.api_client import ApiClient
from tests.conftest import draw_face
from tests.uploads import faces_zip, left_in_imports, zip_bytes
from tests.workers import emptied_queue, work_in_process

Status = DatasetImport.Status
DATASETS = "/api/v1/datasets"
IMPORTS = "/api/v1/imports"

_own_queue = emptied_queue("default")


def upload(api: ApiClient, path: str, files: list[SimpleUploadedFile], **fields: str) -> Any:
    """A multipart upload, as a script sends one."""
    return api.client.post(path, {"files": files, **fields}, headers=api.headers)


def a_zip(data: bytes, name: str = "faces.zip") -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(name, data, "application/zip")]


def nothing_kept() -> bool:
    return not DatasetImport.objects.exists() and left_in_imports() == []


def make_dataset(name: str, n: int, **known: Any) -> Dataset:
    dataset = Dataset.objects.create(name=name)
    FaceImage.objects.bulk_create(
        FaceImage(
            dataset=dataset,
            sha256=f"{name}-{i}",
            file=f"faces/{name}/{i}.png",
            image_format="PNG",
            width=8,
            height=8,
            original_name=f"{i}.png",
            split="test" if i % 2 else "train",
            **({k: v for k, v in known.items()} if i % 2 else {}),
        )
        for i in range(n)
    )
    return dataset


# --- Datasets ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_lists_datasets_with_their_counts_in_one_query(admin_user: User) -> None:
    make_dataset("alpha", 4, known_expression="fear", known_valence=0.2, known_aus={"1": True})
    Dataset.objects.create(name="empty")
    api = ApiClient(admin_user)
    api.get("/api/v1/me")

    def listed() -> tuple[list[dict[str, Any]], int]:
        with CaptureQueriesContext(connection) as captured:
            response = api.get(DATASETS)
        assert response.status_code == 200
        return response.json(), len(captured)

    found, queries = listed()
    assert [
        (d["name"], d["n_images"], d["n_expression"], d["n_va"], d["n_aus"]) for d in found
    ] == [
        ("alpha", 4, 2, 2, 2),
        ("empty", 0, 0, 0, 0),
    ]
    assert found[0]["url"] == f"{DATASETS}/{Dataset.objects.get(name='alpha').code}"
    for i in range(5):
        make_dataset(f"more-{i}", 3, known_expression="anger")
    more, queries_then = listed()
    assert len(more) == 7 and queries_then == queries


@pytest.mark.django_db
def test_it_shows_a_dataset_with_its_counts_per_split(admin_user: User) -> None:
    dataset = make_dataset("alpha", 5, known_expression="fear")
    found = ApiClient(admin_user).get(f"{DATASETS}/{dataset.code}").json()
    assert (found["name"], found["n_images"], found["n_expression"]) == ("alpha", 5, 2)
    assert found["splits"] == [
        {"split": "test", "n_images": 2, "n_expression": 2, "n_va": 0, "n_aus": 0},
        {"split": "train", "n_images": 3, "n_expression": 0, "n_va": 0, "n_aus": 0},
    ]
    assert found["images_url"] == f"/api/v1/images?dataset={dataset.code}"


@pytest.mark.django_db
def test_it_creates_an_empty_dataset_with_its_vocabulary(admin_user: User) -> None:
    response = ApiClient(admin_user).post(
        DATASETS, {"name": "ck-faces", "au_vocabulary": "ckplus", "licence_note": "CK+ terms"}
    )
    assert response.status_code == 201, response.json()
    dataset = Dataset.objects.get()
    assert (dataset.name, dataset.au_vocabulary, dataset.created_by) == (
        "ck-faces",
        "ckplus",
        admin_user,
    )
    assert response.json()["code"] == str(dataset.code) and response.json()["n_images"] == 0
    default = ApiClient(admin_user).post(DATASETS, {"name": "plain"})
    assert default.json()["au_vocabulary"] == "feid17"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"name": "My Faces"},
            400,
            "must be a slug (letters, digits, '-' and '_'), e.g. 'my-faces'",
        ),
        ({"name": ""}, 400, "give the dataset a name"),
        ({"name": "faces", "au_vocabulary": "emfacs"}, 400, "unknown AU vocabulary 'emfacs'"),
        ({"name": "taken"}, 409, "a dataset called 'taken' exists already"),
        ({"au_vocabulary": "ckplus"}, 422, "name"),
        ({"name": "x" * 101}, 422, "name"),
    ],
)
def test_it_refuses_a_dataset_it_cannot_create_and_writes_nothing(
    admin_user: User, body: dict[str, str], status: int, message: str
) -> None:
    Dataset.objects.create(name="taken")
    response = ApiClient(admin_user).post(DATASETS, body)
    assert response.status_code == status
    assert message.lower() in response.json()["detail"].lower()
    assert list(Dataset.objects.values_list("name", flat=True)) == ["taken"]


# --- Imports --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_imports_a_zip_into_a_dataset_as_a_background_job(admin_user: User) -> None:
    dataset = Dataset.objects.create(name="faces", au_vocabulary="ckplus")
    api = ApiClient(admin_user)
    response = upload(
        api,
        f"{DATASETS}/{dataset.code}/imports",
        a_zip(faces_zip(3, manifest="file,expression\n0.png,fear\n")),
    )
    assert response.status_code == 202, response.json()
    job = DatasetImport.objects.get()
    answer = response.json()
    assert answer["code"] == str(job.code) and answer["url"] == f"{IMPORTS}/{job.code}"
    assert (answer["status"], answer["dataset"], answer["dataset_name"]) == (
        "queued",
        str(dataset.code),
        "faces",
    )
    assert job.job_id and job.created_by == admin_user and job.upload_name == "faces.zip"
    assert not FaceImage.objects.exists()
    work_in_process("default")
    done = api.get(answer["url"]).json()
    assert (done["status"], done["percent"], done["settled"]) == ("done", 100.0, True)
    assert (done["n_imported"], done["n_labelled"], done["n_duplicates"], done["n_rejected"]) == (
        3,
        1,
        0,
        1,
    )
    assert done["rejected"] == [
        {
            "file": "broken.png",
            "reason": "not an image",
            "detail": "broken.png: not a readable image file",
        }
    ]
    assert done["rejected_by_reason"] == {"not an image": 1}
    assert dataset.images.count() == 3 and left_in_imports() == []
    # The same upload again: every image is already there.
    upload(api, f"{DATASETS}/{dataset.code}/imports", a_zip(faces_zip(3)))
    work_in_process("default")
    again = api.get(f"{IMPORTS}/{DatasetImport.objects.first().code}").json()  # type: ignore[union-attr]
    assert (again["n_imported"], again["n_duplicates"]) == (0, 3)


@pytest.mark.django_db(transaction=True)
def test_it_imports_image_files_and_a_manifest_into_a_new_dataset_by_name(
    admin_user: User,
) -> None:
    files = [
        SimpleUploadedFile("one.png", draw_face(seed=1), "image/png"),
        SimpleUploadedFile("two.png", b"broken", "image/png"),
        SimpleUploadedFile("manifest.csv", b"file,expression\none.png,fear\n", "text/csv"),
    ]
    api = ApiClient(admin_user)
    response = upload(api, IMPORTS, files, dataset="fresh", au_vocabulary="disfa12")
    assert response.status_code == 202, response.json()
    # The dataset is created with the first image the job accepts, not before.
    assert response.json()["dataset"] is None and not Dataset.objects.exists()
    work_in_process("default")
    done = api.get(response.json()["url"]).json()
    dataset = Dataset.objects.get(name="fresh")
    assert (done["status"], done["dataset"], done["n_imported"]) == ("done", str(dataset.code), 1)
    assert dataset.au_vocabulary == "disfa12" and dataset.created_by == admin_user
    assert FaceImage.objects.get().known_expression == "fear"


@pytest.mark.django_db
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
    response = upload(ApiClient(admin_user), IMPORTS, a_zip(faces_zip(1)), dataset="streamed")
    assert response.status_code == 202
    assert handlers == ["StoredUpload"]
    # The request's own folder is gone: the zip was moved into the job's.
    assert not any((imports_dir() / "incoming").iterdir())


@pytest.mark.django_db
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
    dataset = Dataset.objects.create(name="faces")
    for path in (IMPORTS, f"{DATASETS}/{dataset.code}/imports"):
        response = upload(ApiClient(admin_user), path, a_zip(big), dataset="faces")
        assert response.status_code == 413
        detail = response.json()["detail"]
        assert re.search(r"The upload is 1\.\d+ MiB, over the limit of 1 MiB", detail)
        assert "import_faces" in detail
    assert parsed == []
    assert nothing_kept() and dataset.images.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("files", "fields", "field", "message"),
    [
        (lambda: [], {"dataset": "faces"}, "files", "Choose a zip file or some images."),
        (
            lambda: [*a_zip(faces_zip(1)), SimpleUploadedFile("a.png", draw_face())],
            {"dataset": "faces"},
            "files",
            "Upload either one zip file or image files, not both.",
        ),
        (
            lambda: [SimpleUploadedFile("notes.txt", b"hello")],
            {"dataset": "faces"},
            "files",
            "notes.txt: not an image, a zip or manifest.csv.",
        ),
        (lambda: a_zip(faces_zip(1)), {"dataset": "My Faces"}, "dataset", "e.g. my-faces"),
        (lambda: a_zip(faces_zip(1)), {}, "dataset", "This field is required."),
        (
            lambda: a_zip(faces_zip(1)),
            {"dataset": "faces", "au_vocabulary": "emfacs"},
            "au_vocabulary",
            "Select a valid choice.",
        ),
    ],
)
def test_it_refuses_what_the_upload_form_refuses_and_keeps_nothing(
    admin_user: User, files: Any, fields: dict[str, str], field: str, message: str
) -> None:
    response = upload(ApiClient(admin_user), IMPORTS, files(), **fields)
    assert response.status_code == 422, response.json()
    errors = response.json()["errors"]
    assert any(e["loc"][-1] == field and message in e["msg"] for e in errors), errors
    assert nothing_kept() and not Dataset.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("file,subject\n0.png,Jos\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
        ("image,expression\n", "no 'file' column"),
    ],
)
def test_it_refuses_a_manifest_it_cannot_read_and_keeps_nothing(
    admin_user: User, manifest: bytes | str, message: str
) -> None:
    response = upload(
        ApiClient(admin_user), IMPORTS, a_zip(faces_zip(1, manifest=manifest)), dataset="faces"
    )
    assert response.status_code == 400 and message in response.json()["detail"]
    assert nothing_kept()


@pytest.mark.django_db
def test_it_refuses_an_import_that_contradicts_its_dataset(admin_user: User) -> None:
    dataset = Dataset.objects.create(name="faces", au_vocabulary="ckplus")
    api = ApiClient(admin_user)
    path = f"{DATASETS}/{dataset.code}/imports"
    other = upload(api, path, a_zip(faces_zip(1)), dataset="others")
    assert other.status_code == 400 and "leave the dataset field out" in other.json()["detail"]
    vocabulary = upload(api, path, a_zip(faces_zip(1)), au_vocabulary="feid17")
    assert vocabulary.status_code == 400
    assert "uses the AU vocabulary 'ckplus', not 'feid17'" in vocabulary.json()["detail"]
    missing = upload(api, f"{DATASETS}/00000000-0000-0000-0000-000000000000/imports", [])
    assert missing.status_code == 404
    assert nothing_kept()


@pytest.mark.django_db
def test_it_refuses_an_upload_when_the_queue_is_down(
    admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seke_app.queue import QueueUnavailable

    def down(name: str = "default") -> Any:
        raise QueueUnavailable("Redis at REDIS_URL does not answer: refused")

    monkeypatch.setattr(services, "get_queue", down)
    response = upload(ApiClient(admin_user), IMPORTS, a_zip(faces_zip(1)), dataset="faces")
    assert response.status_code == 503
    assert "Redis at REDIS_URL does not answer" in response.json()["detail"]
    assert nothing_kept()


@pytest.mark.django_db
def test_a_browser_session_uploads_only_with_its_csrf_token(admin_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    data = {"dataset": "faces", "files": a_zip(faces_zip(1))}
    refused = client.post(IMPORTS, data)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert nothing_kept()
    client.get("/account/")  # Any page sets the CSRF cookie.
    token = client.cookies["csrftoken"].value
    data = {"dataset": "faces", "files": a_zip(faces_zip(1))}
    accepted = client.post(IMPORTS, data, headers={"X-CSRFToken": token})
    assert accepted.status_code == 202, accepted.json()


@pytest.mark.django_db
def test_it_cancels_a_queued_import_and_refuses_to_cancel_it_twice(admin_user: User) -> None:
    api = ApiClient(admin_user)
    job = upload(api, IMPORTS, a_zip(faces_zip(2)), dataset="faces").json()
    cancelled = api.post(f"{IMPORTS}/{job['code']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert left_in_imports() == []
    dataset_import_run(import_id=DatasetImport.objects.get().id)
    assert not FaceImage.objects.exists()
    again = api.post(f"{IMPORTS}/{job['code']}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == "An import that is cancelled cannot be cancelled."
    missing = api.get(f"{IMPORTS}/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
