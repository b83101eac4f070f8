"""Exports through the API: the export form's rules and defaults, the job, the file, cancel."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from review.tasks.services import task_create_for
from seke_app.engine.formats.records import NO_LABEL, UNDER_MIN_CONFIDENCE
from seke_app.exports.forms import ExportForm
from seke_app.exports.services import ExportOptions, export_create, export_run
from seke_app.exports.writers import REJECTED
from seke_app.models import Dataset
from seke_app.models.exports import Export
from tests.api_client import ApiClient
from tests.conftest import client_for
from tests.test_curation import annotate, make_images, make_run
from tests.test_export_pages import labelled
from tests.workers import emptied_queue, work_in_process

EXPORTS = "/api/v1/exports"

_own_queue = emptied_queue("exports")


@pytest.fixture
def dataset(db: None) -> Dataset:
    """Four faces, two of them in the split "test", and a finished FEAB benchmark."""
    dataset, _ = make_images(4, split=lambda i: "test" if i < 2 else "train")
    return dataset


def benchmark(dataset: Dataset) -> Export:
    return Export.objects.create(
        dataset=dataset, kind=Export.Kind.FEAB, status=Export.Status.DONE, n_written=2
    )


def every_option(dataset: Dataset) -> dict[str, Any]:
    """Every field of the export form, with a value other than its initial one."""
    return {
        "kind": "feid",
        "formats": ["llava", "sharegpt"],
        "grains": ["expression", "va"],
        "expression_sources": ["human", "machine"],
        "va_sources": ["dataset"],
        "aus_sources": ["human"],
        "min_confidence": 0.4,
        "split": "test",
        "images": "copy",
        "image_root": "https://example.org/faces/",
        "openai_images": "data_url",
        "seed": 7,
        "test_fraction": 0.3,
        "holdout": str(benchmark(dataset).code),
        "archive": True,
    }


def as_page_data(dataset: Dataset, values: dict[str, Any]) -> dict[str, Any]:
    """The values as the page's form sends them, its initial values in the other fields."""
    form = ExportForm(dataset=dataset)
    data = {}
    for name, value in ({name: form[name].initial for name in form.fields} | values).items():
        if value is True:
            data[name] = "on"
        elif value is not False and value is not None:
            data[name] = value if isinstance(value, list) else str(value)
    return data


def test_the_api_takes_every_field_of_the_export_form() -> None:
    schema = Client().get("/api/openapi.json").json()["components"]["schemas"]["ExportIn"]
    assert set(schema["properties"]) == {"dataset", *ExportForm.base_fields}
    assert schema["required"] == ["dataset"]


@pytest.mark.django_db
def test_it_queues_an_export_with_every_option_stored_as_the_page_stores_it(
    dataset: Dataset, admin_user: User
) -> None:
    values = every_option(dataset)
    response = ApiClient(admin_user).post(EXPORTS, {"dataset": str(dataset.code)} | values)
    assert response.status_code == 202, response.json()
    body = response.json()
    by_api = Export.objects.get(code=body["code"])
    page = client_for(admin_user).post(
        reverse("export_new", args=[dataset.code]), as_page_data(dataset, values)
    )
    assert page.status_code == 302
    by_page = Export.objects.filter(kind="feid").exclude(id=by_api.id).get()
    assert by_api.options == by_page.options and by_api.kind == by_page.kind == "feid"
    assert (
        by_api.options
        == ExportOptions(
            formats=("llava", "sharegpt"),
            grains=("expression", "va"),
            sources={"expression": ("human", "machine"), "va": ("dataset",), "aus": ("human",)},
            min_confidence=0.4,
            split="test",
            images="copy",
            image_root="https://example.org/faces/",
            openai_images="data_url",
            seed=7,
            test_fraction=0.3,
            holdout=values["holdout"],
            archive=True,
        ).to_json()
    )
    assert by_api.created_by == admin_user and by_api.status == "queued"
    assert body["url"] == f"{EXPORTS}/{by_api.code}" and body["status"] == "queued"
    assert body["download_url"] is None and body["dataset"] == str(dataset.code)


@pytest.mark.django_db
def test_a_field_left_out_takes_the_forms_initial_value(dataset: Dataset, admin_user: User) -> None:
    response = ApiClient(admin_user).post(EXPORTS, {"dataset": str(dataset.code)})
    assert response.status_code == 202, response.json()
    export = Export.objects.get()
    assert export.kind == ExportForm.base_fields["kind"].initial == "feid"
    assert export.options == ExportOptions().to_json()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"min_confidence": 2}, "min_confidence", "Ensure this value is less than or equal to 1"),
        ({"kind": "csv"}, "kind", "Select a valid choice. csv is not one of"),
        ({"split": "validation"}, "split", "Select a valid choice. validation is not one of"),
        ({"grains": ["smell"]}, "grains", "Select a valid choice. smell is not one of"),
        ({"grains": []}, "grains", "This field is required."),
        ({"images": "link"}, "images", "Select a valid choice. link is not one of"),
        ({"test_fraction": 1}, "test_fraction", "Ensure this value is less than or equal to"),
        ({"holdout": "7d3f3c55-0f55-4f5e-9d43-7e0f2b1f0a9c"}, "holdout", "Select a valid"),
    ],
)
def test_it_refuses_what_the_form_refuses_with_its_messages_and_writes_nothing(
    change: dict[str, Any], field: str, message: str, dataset: Dataset, admin_user: User
) -> None:
    response = ApiClient(admin_user).post(EXPORTS, {"dataset": str(dataset.code)} | change)
    assert response.status_code == 422, response.json()
    body = response.json()
    errors = [e for e in body["errors"] if e["msg"].startswith(message)]
    assert errors and errors[0]["loc"] == ["body", "payload", field], body
    assert message in body["detail"]
    page = client_for(admin_user).post(
        reverse("export_new", args=[dataset.code]), as_page_data(dataset, change)
    )
    assert any(m.startswith(message) for m in page.context["form"].errors[field])
    assert not Export.objects.exists()


@pytest.mark.django_db
def test_it_refuses_an_unknown_dataset_or_field_and_writes_nothing(
    dataset: Dataset, admin_user: User
) -> None:
    api = ApiClient(admin_user)
    unknown = api.post(EXPORTS, {"dataset": "7d3f3c55-0f55-4f5e-9d43-7e0f2b1f0a9c"})
    assert unknown.status_code == 422
    assert unknown.json()["errors"] == [
        {"loc": ["body", "payload", "dataset"], "msg": "No dataset has this code.", "type": "form"}
    ]
    misspelt = api.post(EXPORTS, {"dataset": str(dataset.code), "format": ["llava"]})
    assert misspelt.status_code == 422
    assert misspelt.json()["errors"][0]["loc"] == ["body", "payload", "format"]
    assert not Export.objects.exists()


@pytest.mark.django_db
def test_it_answers_options_that_cannot_work_together_with_the_services_message(
    dataset: Dataset, admin_user: User
) -> None:
    api = ApiClient(admin_user)
    no_archive = api.post(EXPORTS, {"dataset": str(dataset.code), "kind": "feab", "archive": False})
    assert no_archive.status_code == 400
    assert no_archive.json() == {
        "detail": "A FEAB benchmark needs an archive (questions and answer keys)."
    }
    holdout = str(benchmark(dataset).code)
    feab = api.post(EXPORTS, {"dataset": str(dataset.code), "kind": "feab", "holdout": holdout})
    assert feab.status_code == 400
    assert feab.json() == {"detail": "Only a FEID export can leave out a benchmark's images."}
    assert Export.objects.count() == 1


@pytest.mark.django_db
def test_it_cancels_an_export_and_offers_no_file_until_one_is_done(
    dataset: Dataset, admin_user: User
) -> None:
    api = ApiClient(admin_user)
    code = api.post(EXPORTS, {"dataset": str(dataset.code)}).json()["code"]
    waiting = api.get(f"{EXPORTS}/{code}/download")
    assert waiting.status_code == 409
    assert waiting.json() == {
        "detail": f"The export is queued and has no file yet; follow it at {EXPORTS}/{code}."
    }
    cancelled = api.post(f"{EXPORTS}/{code}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"{EXPORTS}/{code}/cancel")
    assert again.status_code == 409
    assert again.json() == {"detail": "An export that is cancelled cannot be cancelled."}
    gone = api.get(f"{EXPORTS}/{code}/download")
    assert gone.status_code == 409 and gone.json() == {"detail": "The export has no file yet."}
    detail = api.get(f"{EXPORTS}/{code}").json()
    assert detail["status"] == "cancelled" and detail["cancelled_at"] is not None


@pytest.mark.django_db
def test_it_answers_404_for_an_export_that_does_not_exist(admin_user: User) -> None:
    api = ApiClient(admin_user)
    missing = "7d3f3c55-0f55-4f5e-9d43-7e0f2b1f0a9c"
    for path in (f"{EXPORTS}/{missing}", f"{EXPORTS}/{missing}/download"):
        response = api.get(path)
        assert response.status_code == 404 and response.json()["detail"]
    assert api.post(f"{EXPORTS}/{missing}/cancel").status_code == 404


@pytest.mark.django_db
def test_it_lists_exports_newest_first_by_dataset_kind_and_status(
    dataset: Dataset, admin_user: User
) -> None:
    other, _ = make_images(1, name="other")
    feid = export_create(dataset=dataset, kind="feid", options=ExportOptions(), enqueue=False)
    studio = export_create(
        dataset=other, kind="labelstudio", options=ExportOptions(), enqueue=False
    )
    done = benchmark(dataset)
    api = ApiClient(admin_user)

    def codes(**params: Any) -> list[str]:
        return [e["code"] for e in api.get(EXPORTS, **params).json()["results"]]

    assert codes() == [str(done.code), str(studio.code), str(feid.code)]
    assert codes(dataset=str(dataset.code)) == [str(done.code), str(feid.code)]
    assert codes(kind="labelstudio") == [str(studio.code)]
    assert codes(status="done") == [str(done.code)]
    assert api.get(EXPORTS, kind="csv").status_code == 422


@pytest.mark.django_db
def test_the_queries_per_list_page_do_not_grow_with_the_exports(
    dataset: Dataset, admin_user: User
) -> None:
    api = ApiClient(admin_user)
    api.get("/api/v1/me")

    def queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            body = api.get(EXPORTS).json()
        return len(captured), len(body["results"])

    export_create(dataset=dataset, kind="feid", options=ExportOptions(), enqueue=False)
    few = queries()
    for i in range(8):
        more, _ = make_images(1, name=f"more{i}")
        export_create(
            dataset=more, kind="feid", options=ExportOptions(), user=admin_user, enqueue=False
        )
    many = queries()
    assert (few[1], many[1]) == (1, 9) and few[0] == many[0]


@pytest.mark.django_db(transaction=True)
def test_an_export_queued_through_the_api_runs_and_its_file_is_downloaded(
    annotator: User, admin_user: User
) -> None:
    dataset = labelled(annotator)
    api = ApiClient(admin_user)
    queued = api.post(EXPORTS, {"dataset": str(dataset.code), "min_confidence": 0.8})
    assert queued.status_code == 202, queued.json()
    url = queued.json()["url"]
    work_in_process("exports")

    detail = api.get(url).json()
    export = Export.objects.get(code=detail["code"])
    assert detail["status"] == "done" and detail["percent"] == 100.0
    assert (detail["n_written"], detail["n_skipped"]) == (1, 3)
    assert detail["skipped_by_reason"] == {REJECTED: 1, UNDER_MIN_CONFIDENCE: 1, NO_LABEL: 1}
    assert detail["progress"] == {"n_images": 4, "settled": True, "awaiting_review": 0}
    assert ["Minimum machine confidence", "0.8"] in [
        [o["option"], o["value"]] for o in detail["options_described"]
    ]
    assert detail["file_name"] == export.file_name() and detail["file_size"] == export.file_size

    response = api.get(detail["download_url"])
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    assert export.file_name() in response["Content-Disposition"]
    body = b"".join(response.streaming_content)
    assert len(body) == export.file_size
    assert "manifest.json" in zipfile.ZipFile(io.BytesIO(body)).namelist()
    refused = api.post(f"{EXPORTS}/{export.code}/cancel")
    assert refused.status_code == 409
    assert refused.json() == {"detail": "An export that is done cannot be cancelled."}


@pytest.mark.django_db
def test_a_finished_export_that_left_images_out_counts_those_awaiting_review(
    annotator: User, admin_user: User
) -> None:
    dataset = labelled(annotator)
    # The face never annotated gets a flagged annotation that waits for its review.
    image = dataset.images.get(original_name="3.png")
    task_create_for(annotate(image, make_run(dataset), confidence=0.5, flagged=True))
    options = ExportOptions(min_confidence=0.8)
    export = export_create(dataset=dataset, kind="feid", options=options, enqueue=False)
    export_run(export_id=export.id)
    detail = ApiClient(admin_user).get(f"{EXPORTS}/{export.code}").json()
    assert detail["n_skipped"] == 3 and detail["progress"]["awaiting_review"] == 1
    page = client_for(admin_user).get(reverse("export_detail", args=[export.code]))
    assert page.context["awaiting_review"] == 1
    assert detail["download_url"] == f"{EXPORTS}/{export.code}/download"
