"""Media on object storage: with SEKE_STORAGE_URL, images, uploads and exports live
in an S3-compatible bucket, and neither web process nor worker keeps them on disk.

The bucket is served by moto's S3 server, started by this module on 127.0.0.1 on a
free port; each test gets a bucket of its own. Workers are separate processes that
find the bucket through SEKE_STORAGE_URL and AWS_ACCESS_KEY_ID in their environment,
as a worker on another machine would; their own media folder stays empty, so an
image they annotate can only have come from the bucket.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from moto.server import ThreadedMotoServer

from review.models import ReviewTask
from seke_app.config import ConfigError, ObjectStorage, env_storage_url, parse_storage_url
from seke_app.datasets.services import (
    dataset_import,
    dataset_import_cancel,
    dataset_import_create,
    dataset_import_run,
)
from seke_app.engine.uamc import UAMCParams
from seke_app.exports import writers
from seke_app.exports.services import ExportOptions, export_create, export_run
from seke_app.media import exports_storage, holds
from seke_app.models import Dataset, FaceImage, GenerationRun
from seke_app.models.datasets import DatasetImport
from seke_app.models.exports import Export
from seke_app.roles import user_create
from seke_app.runs.services import run_create
from tests.browser import BrowserPage
from tests.conftest import client_for, draw_face
from tests.workers import WorkerProcess, wait_for_worker

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "media in a bucket"
PREFIX = "seke"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, on a port the system chose."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Bucket:
    name: str
    url: str
    client: Any

    def keys(self, under: str = "") -> list[str]:
        """The keys below ``PREFIX/under``, relative to the prefix."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=f"{PREFIX}/{under}"
        )
        keys = [item["Key"] for page in pages for item in page.get("Contents", ())]
        return sorted(key.removeprefix(f"{PREFIX}/") for key in keys)

    def read(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=f"{PREFIX}/{key}")["Body"].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=f"{PREFIX}/{key}", Body=data)

    def worker_env(self) -> dict[str, str]:
        return {"SEKE_STORAGE_URL": self.url}


@pytest.fixture
def bucket(
    s3_endpoint: str, settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Bucket:
    """A new bucket, and this process's settings pointed at it as SEKE_STORAGE_URL would.

    The credentials are in the environment, where boto3 reads them here and in the
    workers; no AWS configuration of the machine's is read.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "seke-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "seke-test")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "SEKE_STORAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    name = f"seke-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    url = f"s3://{name}/{PREFIX}?endpoint_url={s3_endpoint}&region=us-east-1"
    storage = parse_storage_url("SEKE_STORAGE_URL", url)
    settings.OBJECT_STORAGE = storage
    settings.STORAGES = {**settings.STORAGES, **storage.storages()}
    return Bucket(name=name, url=url, client=client)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_nothing_kept_locally(settings: Any) -> None:
    """No image in the media folder, and no upload or export left in the data directory
    (work folders and copies are removed once a job is done with them)."""
    assert files_under(Path(settings.MEDIA_ROOT)) == []
    assert files_under(Path(settings.DATA_DIR) / "imports") == []
    assert files_under(Path(settings.DATA_DIR) / "exports") == []


def zip_of(entries: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def log_in(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "/login/" not in page.url


# --- SEKE_STORAGE_URL ----------------------------------------------------------------


def test_it_reads_a_storage_url() -> None:
    assert parse_storage_url("V", "s3://media") == ObjectStorage("media", "", None, None, "auto")
    url = "s3://seke.media/prod/faces/?endpoint_url=http://127.0.0.1:9000&region=eu-west-1"
    storage = parse_storage_url("V", url)
    assert storage == ObjectStorage(
        "seke.media", "prod/faces", "http://127.0.0.1:9000", "eu-west-1", "path"
    )
    assert str(storage) == "s3://seke.media/prod/faces"
    assert parse_storage_url("V", storage.url()) == storage
    assert parse_storage_url("V", "s3://mmm?addressing_style=virtual").addressing_style == "virtual"
    options = storage.storages()["exports"]["OPTIONS"]
    assert storage.storages()["default"]["BACKEND"] == "storages.backends.s3.S3Storage"
    assert options["location"] == "prod/faces/exports"
    assert storage.storages()["default"]["OPTIONS"]["location"] == "prod/faces"
    assert options["addressing_style"] == "path" and options["region_name"] == "eu-west-1"
    assert (options["file_overwrite"], options["default_acl"], options["querystring_auth"]) == (
        False,
        None,
        True,
    )
    assert env_storage_url("SEKE_STORAGE_URL", {"SEKE_STORAGE_URL": " "}) is None
    assert env_storage_url("SEKE_STORAGE_URL", {}) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://bucket/x", "must look like s3://BUCKET[/PREFIX]"),
        ("bucket/prefix", "must look like s3://BUCKET[/PREFIX]"),
        ("s3://key:secret@bucket", "must not hold credentials: set AWS_ACCESS_KEY_ID"),
        ("s3://Bucket", "names the bucket 'Bucket'"),
        ("s3://b", "names the bucket 'b'"),
        ("s3://bucket:9000", "names the bucket 'bucket:9000'"),
        ("s3://", "names the bucket ''"),
        ("s3://bucket/a//b", "with an empty, . or .. part"),
        ("s3://bucket/a/../b", "with an empty, . or .. part"),
        ("s3://bucket#x", "must not have a #fragment"),
        ("s3://bucket?endpoint=http://h", "unknown parameter 'endpoint'; known: endpoint_url"),
        ("s3://bucket?region=a&region=b", "gives region twice"),
        ("s3://bucket?region=", "gives region no value"),
        ("s3://bucket?region=EU West", "region must look like us-east-1"),
        ("s3://bucket?endpoint_url=minio:9000", "endpoint_url must be an http:// or https://"),
        ("s3://bucket?endpoint_url=http://", "endpoint_url must be an http:// or https://"),
        ("s3://bucket?addressing_style=dns", "addressing_style must be one of path, virtual"),
    ],
)
def test_it_refuses_a_bad_storage_url_naming_the_problem(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^SEKE_STORAGE_URL") as refused:
        env_storage_url("SEKE_STORAGE_URL", {"SEKE_STORAGE_URL": value})
    assert message in str(refused.value)


def settings_in_new_process(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import json, django; django.setup(); from django.conf import settings;"
        " print(json.dumps({k: v['BACKEND'] for k, v in settings.STORAGES.items()}))"
    )
    full = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SEKE_STORAGE_URL"}}
    full |= {"SEKE_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "seke_app.settings"}
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=full | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_stops_start_up_on_a_bad_storage_url(tmp_path: Path) -> None:
    result = settings_in_new_process(tmp_path, SEKE_STORAGE_URL="s3://user:pw@media")
    assert result.returncode != 0
    assert "ConfigError: SEKE_STORAGE_URL must not hold credentials" in result.stderr


def test_it_keeps_files_in_the_data_directory_without_a_storage_url(tmp_path: Path) -> None:
    result = settings_in_new_process(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "default": "django.core.files.storage.FileSystemStorage",
        "exports": "seke_app.media.DataDirStorage",
        "imports": "seke_app.media.DataDirStorage",
        "staticfiles": "seke_app.insights.static_plotly.CollectedStaticStorage",
    }
    url = "s3://media/seke?endpoint_url=http://127.0.0.1:9"
    on_bucket = settings_in_new_process(tmp_path, SEKE_STORAGE_URL=url)
    assert on_bucket.returncode == 0, on_bucket.stderr
    assert set(json.loads(on_bucket.stdout).values()) == {
        "storages.backends.s3.S3Storage",
        "seke_app.insights.static_plotly.CollectedStaticStorage",
    }


# --- The whole flow --------------------------------------------------------------------

N_FACES = 3


@pytest.mark.browser
def test_the_whole_flow_runs_on_object_storage(
    bucket: Bucket,
    settings: Any,
    live_server: Any,
    browser_page: BrowserPage,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    admin = user_create(username="ada", password=PASSWORD, role="admin")
    user_create(username="ann", password=PASSWORD, role="annotator")
    faces = {
        f"set/face{i}.png": draw_face((160, 160), seed=i, smile=i % 2 == 0) for i in range(N_FACES)
    }
    manifest = "file,expression\n" + "".join(f"face{i}.png,happiness\n" for i in range(N_FACES))
    upload = SimpleUploadedFile("faces.zip", zip_of(faces | {"set/manifest.csv": manifest}))

    # The import page keeps the upload in the bucket; a worker imports it from there.
    response = client_for(admin).post(
        reverse("dataset_upload"), {"dataset": "cloud", "files": upload}
    )
    job = DatasetImport.objects.get()
    assert response.status_code == 302, response.content.decode()[:2000]
    assert bucket.keys("imports/") == [f"imports/{job.code}/faces.zip"]
    wait_for_worker(start_worker(("default",), burst=True, env=bucket.worker_env()), timeout=120)
    job.refresh_from_db()
    assert (job.status, job.n_imported, job.n_labelled) == ("done", N_FACES, N_FACES), job.error
    images = list(FaceImage.objects.all())
    assert bucket.keys("faces/") == sorted(image.file.name for image in images)
    assert bucket.keys("imports/") == []

    # A run whose worker reads every face from the bucket; each gets a review task.
    run = run_create(
        dataset=Dataset.objects.get(name="cloud"),
        backend="offline",
        params=UAMCParams(review_threshold=1.0),
        concurrency=1,
        audit_share=0.0,
    )
    worker = start_worker(("generation",), burst=True, env=bucket.worker_env())
    wait_for_worker(worker, timeout=240)
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED, worker.output()
    assert run.n_failed == 0 and ReviewTask.objects.filter(status="open").count() == N_FACES

    # The review page shows the face, relayed from the bucket by SEKE.
    page = browser_page.page
    log_in(page, live_server.url, "ann")
    page.goto(f"{live_server.url}/review/")
    with page.expect_navigation():
        page.click("#start-reviewing")
    page.wait_for_function(
        "() => { const face = document.querySelector('img.face-large');"
        " return face !== null && face.complete; }"
    )
    assert page.evaluate("document.querySelector('img.face-large').naturalWidth") == 160

    # An export with the images copied in: written by a worker, kept in the bucket.
    export = export_create(
        dataset=Dataset.objects.get(name="cloud"),
        kind=Export.Kind.FEID,
        options=ExportOptions(images="copy"),
    )
    wait_for_worker(start_worker(("exports",), burst=True, env=bucket.worker_env()), timeout=120)
    export.refresh_from_db()
    assert export.status == Export.Status.DONE, export.error
    assert bucket.keys("exports/") == [f"exports/{export.file_path}"]
    data = bucket.read(f"exports/{export.file_path}")
    assert export.file_size == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        copied = [archive.read(n) for n in archive.namelist() if n.startswith("images/")]
    assert sorted(hashlib.sha256(c).hexdigest() for c in copied) == sorted(
        image.sha256 for image in images
    )

    # The download sends the browser to a short-lived link to the bucket.
    response = client_for(admin).get(reverse("export_download", args=[export.code]))
    assert response.status_code == 302
    link = response["Location"]
    assert link.startswith(f"{settings.OBJECT_STORAGE.endpoint_url}/{bucket.name}/")
    with urllib.request.urlopen(link, timeout=30) as answer:
        assert answer.read() == data
        assert export.file_name() in answer.headers["Content-Disposition"]

    assert_nothing_kept_locally(settings)


# --- Imports -----------------------------------------------------------------------


def test_it_imports_image_files_uploaded_one_by_one_from_the_bucket(
    bucket: Bucket, settings: Any
) -> None:
    uploads = [
        SimpleUploadedFile("one.png", draw_face(seed=1)),
        SimpleUploadedFile("two.png", draw_face(seed=2)),
        SimpleUploadedFile("manifest.csv", b"file,expression\none.png,fear\n"),
    ]
    job = dataset_import_create(uploads=uploads, dataset_name="loose", enqueue=False)
    folder = f"imports/{job.code}/images"
    assert bucket.keys("imports/") == [
        f"{folder}/manifest.csv",
        f"{folder}/one.png",
        f"{folder}/two.png",
    ]
    assert not job.is_settled()
    dataset_import_run(import_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.n_imported) == ("done", 2), job.error
    assert FaceImage.objects.get(original_name="one.png").known_expression == "fear"
    assert bucket.keys("imports/") == [] and job.is_settled()
    assert len(bucket.keys("faces/")) == 2
    assert_nothing_kept_locally(settings)


def test_a_refused_upload_never_reaches_the_bucket(bucket: Bucket, settings: Any) -> None:
    bad = zip_of({"a.png": draw_face(), "manifest.csv": "image,expression\n"})
    with pytest.raises(Exception, match="no 'file' column"):
        dataset_import_create(
            uploads=[SimpleUploadedFile("a.zip", bad)], dataset_name="bad", enqueue=False
        )
    assert bucket.keys() == [] and not DatasetImport.objects.exists()
    assert_nothing_kept_locally(settings)


def test_a_cancelled_import_settles_once_its_upload_is_gone_from_the_bucket(
    bucket: Bucket,
) -> None:
    upload = SimpleUploadedFile("faces.zip", zip_of({"a.png": draw_face()}))
    job = dataset_import_create(uploads=[upload], dataset_name="gone", enqueue=False)
    dataset_import_cancel(job=job)
    job.refresh_from_db()
    assert job.status == "cancelled" and job.is_settled() and bucket.keys() == []
    # A running import that was cancelled holds its upload until its batch is done.
    held = DatasetImport.objects.create(
        dataset_name="held", upload_name="f.zip", status="cancelled", finished_at=timezone.now()
    )
    bucket.put(f"imports/{held.code}/f.zip", b"zip")
    assert not held.is_settled()
    bucket.client.delete_object(Bucket=bucket.name, Key=f"{PREFIX}/imports/{held.code}/f.zip")
    assert held.is_settled()


@pytest.fixture(params=["folder", "bucket"])
def media(request: pytest.FixtureRequest) -> str:
    """Each storage in turn: the data directory's folder, and a bucket."""
    if request.param == "bucket":
        request.getfixturevalue("bucket")
    return str(request.param)


def test_it_replaces_a_damaged_image_file_when_the_image_is_imported_again(
    media: str, tmp_path: Path, settings: Any
) -> None:
    face = draw_face(seed=7)
    digest = hashlib.sha256(face).hexdigest()
    name = f"faces/{digest[:2]}/{digest}.png"
    default_storage.save(name, io.BytesIO(face[: len(face) // 2]))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "face.png").write_bytes(face)
    report = dataset_import(path=tmp_path / "src", dataset_name="again")
    assert report.imported == 1
    image = FaceImage.objects.get()
    assert image.file.name == name
    with image.file.open("rb") as handle:
        assert handle.read() == face
    if media == "bucket":
        assert_nothing_kept_locally(settings)
    else:
        # Written beside its place and renamed into it: no temporary file is left.
        assert files_under(Path(settings.MEDIA_ROOT)) == [Path(settings.MEDIA_ROOT) / name]


# --- Exports -----------------------------------------------------------------------


def labelled_dataset(tmp_path: Path, n: int = 4) -> Dataset:
    src = tmp_path / "labelled"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.png").write_bytes(draw_face(seed=i))
    rows = "".join(f"{i}.png,{'happiness' if i % 2 else 'sadness'},s{i}\n" for i in range(n))
    (src / "manifest.csv").write_text("file,expression,subject\n" + rows)
    dataset_import(path=src, dataset_name="labelled")
    return Dataset.objects.get(name="labelled")


def test_an_export_marks_its_work_in_the_bucket_until_it_ends(
    bucket: Bucket, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = labelled_dataset(tmp_path)
    export = export_create(
        dataset=dataset, kind=Export.Kind.FEID, options=ExportOptions(), enqueue=False
    )
    seen: list[bool] = []
    write_feid = writers.WRITERS[Export.Kind.FEID]

    def watched(writer: Any) -> None:
        # Another machine sees the job at work, and a cancelled export's page waits.
        seen.append(holds(exports_storage(), export.work_name()))
        Export.objects.filter(id=export.id).update(status="cancelled", finished_at=timezone.now())
        seen.append(Export.objects.get(id=export.id).is_settled())
        write_feid(writer)

    monkeypatch.setitem(writers.WRITERS, Export.Kind.FEID, watched)
    export_run(export_id=export.id)
    assert seen == [True, False]
    export.refresh_from_db()
    assert export.status == "cancelled" and export.is_settled()
    # The cancelled export's file was not offered, and nothing of it is left anywhere.
    assert bucket.keys("exports/") == []
    assert_nothing_kept_locally(settings)


def test_the_export_commands_read_and_copy_files_from_the_bucket(
    bucket: Bucket, settings: Any, tmp_path: Path
) -> None:
    dataset = labelled_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    stdout = io.StringIO()
    call_command(
        "export_feab", "--dataset", dataset.name, "--inline", "--out", str(out), stdout=stdout
    )
    benchmark = Export.objects.get(kind=Export.Kind.FEAB)
    assert f"file {benchmark.file_path} in the exports storage" in stdout.getvalue()
    [copy] = out.iterdir()
    assert copy.read_bytes() == bucket.read(f"exports/{benchmark.file_path}")
    with zipfile.ZipFile(copy) as archive:
        test_images = set(archive.read("test_images.txt").decode().split())
    # A FEID export that leaves out the benchmark's images reads its list from the bucket.
    call_command(
        "export_feid",
        "--dataset",
        dataset.name,
        "--inline",
        "--holdout",
        str(benchmark.code),
        "--copy-images",
        stdout=io.StringIO(),
    )
    feid = Export.objects.get(kind=Export.Kind.FEID)
    assert feid.status == "done", feid.error
    with zipfile.ZipFile(io.BytesIO(bucket.read(f"exports/{feid.file_path}"))) as archive:
        lines = archive.read("feid_llava.jsonl").decode().splitlines()
        written = {json.loads(line)["id"] for line in lines}
        n_copied = sum(1 for n in archive.namelist() if n.startswith("images/"))
    assert test_images and not written & test_images
    assert len(written) == n_copied == 4 - len(test_images)
    assert_nothing_kept_locally(settings)
