"""Every admin page leads on: from an import to a run, from a run to its review,
and the home and dataset pages say what is going on."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from review.models import ReviewTask
from seke_app.models import Dataset, GenerationRun
from seke_app.models.datasets import DatasetImport
from seke_app.models.exports import Export
from tests.conftest import client_for
from tests.factories import make_flagged_annotations, record_decision
from tests.test_curation import annotate, make_images, make_run

pytestmark = pytest.mark.django_db


def test_an_import_result_leads_to_its_dataset_and_to_a_run_on_it(admin_user: User) -> None:
    dataset = Dataset.objects.create(name="faces")
    job = DatasetImport.objects.create(
        dataset_name="faces",
        dataset=dataset,
        upload_name="faces.zip",
        status=DatasetImport.Status.DONE,
        finished_at=timezone.now(),
        n_total=3,
        n_done=3,
        n_imported=3,
    )
    client = client_for(admin_user)
    page = client.get(reverse("import_detail", args=[job.code])).content.decode()
    start = f"{reverse('run_new')}?dataset={dataset.code}"
    assert f'href="{start}"' in page and "Start a run on faces" in page
    assert f'href="{reverse("dataset_detail", args=[dataset.code])}"' in page
    form = client.get(start).content.decode()
    assert f'<option value="{dataset.code}" selected>faces</option>' in form


def test_a_finished_run_leads_to_reviewing_its_flagged_faces(
    admin_user: User, annotator: User
) -> None:
    annotations = make_flagged_annotations(3)
    other = make_flagged_annotations(2, dataset_name="other")
    run = annotations[0].run
    record_decision(annotations[0], annotator, "accept")
    ReviewTask.objects.filter(annotation=annotations[0]).update(status="done")
    page = client_for(admin_user).get(reverse("run_detail", args=[run.code])).content.decode()
    queue = f"{reverse('review:queue')}?run={run.code}"
    assert f'href="{queue}"' in page and "Review its 2 flagged faces" in page
    # The queue it opens holds this run's faces only.
    listed = client_for(annotator).get(queue).context["tasks"]
    assert {t.annotation.run_id for t in listed} == {run.id} and len(listed) == 2
    assert other[0].run_id != run.id


def test_a_run_with_nothing_left_to_review_says_so(admin_user: User, annotator: User) -> None:
    (annotation,) = make_flagged_annotations(1)
    record_decision(annotation, annotator, "accept")
    ReviewTask.objects.filter(annotation=annotation).update(status="done")
    url = reverse("run_detail", args=[annotation.run.code])
    page = client_for(admin_user).get(url).content.decode()
    assert "No flagged face of this run awaits review." in page and "Review its" not in page


def test_the_home_page_shows_runs_at_work_review_and_recent_exports(
    admin_user: User, annotator: User
) -> None:
    flagged = make_flagged_annotations(3)
    dataset = flagged[0].image.dataset
    running = make_run(dataset)
    GenerationRun.objects.filter(id=running.id).update(status="running", n_total=10, n_done=4)
    running.refresh_from_db()
    export = Export.objects.create(dataset=dataset, kind="feid", status="done")
    page = client_for(admin_user).get(reverse("home")).content.decode()
    assert running.label in page and "4 / 10" in page
    assert "3</strong> faces await review" in page
    assert f"{reverse('review:queue')}?run={flagged[0].run.code}" in page
    assert reverse("export_detail", args=[export.code]) in page
    assert reverse("export_download", args=[export.code]) in page
    # A run at work keeps the overview refreshing.
    assert f'hx-get="{reverse("home_live")}"' in page
    mine = client_for(annotator).get(reverse("home")).content.decode()
    assert "3</strong> faces await review" in mine and running.label not in mine


def test_the_home_page_is_quiet_when_nothing_goes_on(admin_user: User) -> None:
    page = client_for(admin_user).get(reverse("home")).content.decode()
    assert "No run is at work." in page and "Nothing awaits review." in page
    assert "No export yet." in page and 'hx-get="' not in page


def test_a_dataset_page_shows_each_faces_labels_and_review_status(
    admin_user: User, annotator: User
) -> None:
    dataset, images = make_images(6, known_expression=lambda i: "sadness" if i == 0 else None)
    run = make_run(dataset)
    GenerationRun.objects.filter(id=run.id).update(review_threshold=0.5)
    run.refresh_from_db()
    annotate(images[0], run, expression="happiness", confidence=0.93)  # overall 0.73: accepted
    waiting = annotate(images[1], run, expression="fear", confidence=0.4)
    ReviewTask.objects.create(annotation=waiting, priority=waiting.confidence)
    reviewed = annotate(images[2], run, expression="anger", confidence=0.4)
    record_decision(reviewed, annotator, "correct", expression="disgust")
    rejected = annotate(images[3], run, expression="anger", confidence=0.4)
    record_decision(rejected, annotator, "reject_image")
    annotate(images[4], run, expression="surprise", confidence=0.4)
    response = client_for(admin_user).get(reverse("dataset_detail", args=[dataset.code]))
    rows = {row.image.original_name: row for row in response.context["faces"]}
    assert [(rows[f"{i}.png"].status) for i in range(6)] == [
        "auto-accepted",
        "awaiting review",
        "reviewed",
        "rejected by a reviewer",
        "flagged, not in the queue",
        "not annotated",
    ]
    assert rows["0.png"].machine_expression == "happiness"
    assert rows["0.png"].machine_confidence == pytest.approx(0.73)
    assert rows["2.png"].human_expression == "disgust"
    page = response.content.decode()
    assert 'class="tag tag-known">known</span> sadness' in page
    assert (
        'class="tag tag-machine">machine</span> happiness <span class="muted">0.73</span>' in page
    )
    assert 'class="tag tag-human">human</span> disgust' in page
    assert f"{reverse('review:queue')}?dataset={dataset.code}" in page


def test_a_dataset_page_reads_its_faces_in_a_fixed_number_of_queries(
    admin_user: User, django_assert_max_num_queries: object
) -> None:
    dataset, images = make_images(30)
    run = make_run(dataset)
    for image in images:
        annotate(image, run)
    client = client_for(admin_user)
    url = reverse("dataset_detail", args=[dataset.code])
    with django_assert_max_num_queries(15):  # type: ignore[operator]
        assert client.get(url).status_code == 200
