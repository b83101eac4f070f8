"""Pages that show background work refresh until the work has settled, and no longer.

A page section refreshes itself (htmx) while it carries ``hx-get``; these tests
read whether it does, and what it says meanwhile, at each stage of the work.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from review.models import GoldCheck
from seke_app.models import Dataset, GenerationRun, PromptVersion, RunItem
from seke_app.models.datasets import DatasetImport
from seke_app.models.exports import Export, exports_dir
from seke_app.runs.prompts import prompt_version_active
from tests.conftest import client_for
from tests.factories import scripted_images
from tests.test_curation import make_images, make_run
from tests.test_dashboards import annotation_row
from tests.test_dashboards import make_run as make_scored_run

pytestmark = pytest.mark.django_db

Status = GenerationRun.Status


def polls(html: str, url: str) -> bool:
    return f'hx-get="{url}"' in html


def run_with_items(statuses: list[str], *, status: str = Status.CANCELLED) -> GenerationRun:
    dataset, images = make_images(len(statuses), name="live")
    run = make_run(dataset)
    done = statuses.count(RunItem.Status.DONE)
    GenerationRun.objects.filter(id=run.id).update(
        status=status,
        n_total=len(statuses),
        n_done=done,
        finished_at=timezone.now() if status in GenerationRun.FINISHED else None,
    )
    for image, item_status in zip(images, statuses, strict=True):
        RunItem.objects.create(
            run=run,
            image=image,
            status=item_status,
            worker="w",
            lease_until=timezone.now() + timedelta(minutes=5)
            if item_status == RunItem.Status.LEASED
            else None,
        )
    run.refresh_from_db()
    return run


# --- Runs --------------------------------------------------------------------------------


def test_a_cancelled_run_page_follows_its_images_in_flight_until_they_finish(
    admin_user: User,
) -> None:
    run = run_with_items(["done", "leased", "pending", "pending"])
    client = client_for(admin_user)
    url = reverse("run_progress", args=[run.code])
    page = client.get(url).content.decode()
    assert polls(page, url)
    assert "1 image already in flight is finishing" in page
    assert (
        "finishing the 1 image in flight" in page and "finished" not in page.split("Time left")[1]
    )
    assert "3 (1 in flight)" in page

    # The image in flight is stored: the counters change no more, and the page stops.
    RunItem.objects.filter(run=run, status="leased").update(status="done", lease_until=None)
    GenerationRun.objects.filter(id=run.id).update(n_done=2)
    page = client.get(url).content.decode()
    assert not polls(page, url)
    assert "stopped: 2 images not annotated (Resume goes on)" in page


def test_a_dead_workers_image_does_not_keep_the_page_refreshing(admin_user: User) -> None:
    run = run_with_items(["done", "leased"])
    RunItem.objects.filter(run=run, status="leased").update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    page = client_for(admin_user).get(reverse("run_progress", args=[run.code])).content.decode()
    assert not polls(page, reverse("run_progress", args=[run.code]))
    assert "stopped: 1 image not annotated" in page


def test_a_completed_run_says_every_image_is_handled(admin_user: User) -> None:
    run = run_with_items(["done", "done"], status=Status.COMPLETED)
    page = client_for(admin_user).get(reverse("run_detail", args=[run.code])).content.decode()
    assert not polls(page, reverse("run_progress", args=[run.code]))
    assert "none: every image is handled" in page


def test_the_runs_list_refreshes_while_a_run_is_at_work_or_finishing(admin_user: User) -> None:
    run = run_with_items(["done", "leased"], status=Status.RUNNING)
    client, url = client_for(admin_user), reverse("run_rows")
    assert polls(client.get(reverse("run_list")).content.decode(), url)
    GenerationRun.objects.filter(id=run.id).update(status=Status.CANCELLED)
    assert polls(client.get(url).content.decode(), url)
    RunItem.objects.filter(run=run).update(status="done")
    rows = client.get(url).content.decode()
    assert not polls(rows, url) and run.label in rows


# --- Imports -----------------------------------------------------------------------------


def cancelled_import(*, finished_ago: timedelta = timedelta(0)) -> DatasetImport:
    job = DatasetImport.objects.create(
        dataset_name="faces",
        upload_name="faces.zip",
        status=DatasetImport.Status.CANCELLED,
        finished_at=timezone.now() - finished_ago,
        n_total=400,
        n_done=200,
    )
    # The job still holds its upload: it is importing the batch it was on.
    job.folder().mkdir(parents=True)
    return job


def test_a_cancelled_import_page_follows_the_last_batch(admin_user: User) -> None:
    job = cancelled_import()
    client = client_for(admin_user)
    url = reverse("import_progress", args=[job.code])
    page = client.get(url).content.decode()
    assert polls(page, url) and "the batch being imported finishes" in page
    assert polls(client.get(reverse("dataset_upload")).content.decode(), reverse("import_rows"))
    # The job counts its last batch and lets go of the upload.
    DatasetImport.objects.filter(id=job.id).update(n_done=400, n_imported=400)
    shutil.rmtree(job.folder())
    page = client.get(url).content.decode()
    assert not polls(page, url) and "the 400 images imported before it stay" in page
    assert not polls(client.get(reverse("import_rows")).content.decode(), reverse("import_rows"))


def test_an_import_whose_worker_died_settles_after_the_job_timeout(
    admin_user: User, settings: Any
) -> None:
    job = cancelled_import(finished_ago=timedelta(seconds=settings.JOB_TIMEOUT + 5))
    url = reverse("import_progress", args=[job.code])
    assert job.folder().exists()
    assert not polls(client_for(admin_user).get(url).content.decode(), url)


# --- Exports -----------------------------------------------------------------------------


def test_a_cancelled_export_page_waits_for_its_job_to_clear_its_work(admin_user: User) -> None:
    dataset = Dataset.objects.create(name="ex")
    export = Export.objects.create(
        dataset=dataset, kind="feid", status="cancelled", finished_at=timezone.now()
    )
    work = exports_dir() / str(export.code) / ".work"
    work.mkdir(parents=True)
    client, url = client_for(admin_user), reverse("export_progress", args=[export.code])
    assert polls(client.get(url).content.decode(), url)
    assert polls(client.get(reverse("export_list")).content.decode(), reverse("export_rows"))
    shutil.rmtree(work)
    assert not polls(client.get(url).content.decode(), url)
    assert not polls(client.get(reverse("export_rows")).content.decode(), reverse("export_rows"))


# --- Gold-set checks ---------------------------------------------------------------------


def test_the_version_page_follows_its_gold_check_to_the_result(admin_user: User) -> None:
    parent = prompt_version_active()
    version = PromptVersion.objects.create(
        number=parent.number + 1, name="child", knowledge_text="k", fingerprint="f", parent=parent
    )
    check = GoldCheck.objects.create(
        version=version, parent=parent, backend="offline", model_name="m", n_total=8
    )
    client = client_for(admin_user)
    url = reverse("review:version_checks", args=[version.code])
    page = client.get(reverse("review:version_detail", args=[version.code])).content.decode()
    assert polls(page, url) and "Waiting for a worker" in page
    GoldCheck.objects.filter(id=check.id).update(status="running", n_done=2)
    part = client.get(url).content.decode()
    assert polls(part, url) and 'aria-valuenow="25"' in part and "2 of 8 annotations" in part
    GoldCheck.objects.filter(id=check.id).update(
        status="done",
        n_done=8,
        report={"version": {"expression_accuracy": 0.8}, "parent": {}, "worse": []},
    )
    part = client.get(url).content.decode()
    assert not polls(part, url)
    assert "Not worse than its parent on any measure." in part and "0.800" in part


# --- Who may poll --------------------------------------------------------------------------


def test_only_admins_read_the_live_parts(admin_user: User, annotator: User, outsider: User) -> None:
    parent = prompt_version_active()
    urls = [
        reverse("run_rows"),
        reverse("import_rows"),
        reverse("home_live"),
        reverse("review:version_checks", args=[parent.code]),
    ]
    for url in urls:
        assert client_for(None).get(url).status_code == 302, url
        for user in (outsider, annotator):
            assert client_for(user).get(url).status_code == 403, (url, user)
        assert client_for(admin_user).get(url).status_code == 200, url


def test_the_dashboard_reloads_itself_until_the_run_is_settled(admin_user: User) -> None:
    run = make_scored_run([annotation_row(image) for image in scripted_images(2)])
    url = reverse("run_dashboard", args=[run.code])
    page = client_for(admin_user).get(url).content.decode()
    assert 'http-equiv="refresh"' not in page and 'id="dashboard-live"' not in page
    GenerationRun.objects.filter(id=run.id).update(status=GenerationRun.Status.RUNNING)
    page = client_for(admin_user).get(url).content.decode()
    assert '<meta http-equiv="refresh" content="15">' in page and 'id="dashboard-live"' in page
