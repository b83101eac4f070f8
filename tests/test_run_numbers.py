"""Runs can be told apart: a number per dataset, an optional name, one label everywhere."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.forms import ModelChoiceField
from django.urls import reverse
from django.utils import timezone

from seke_app.insights.forms import CompareForm
from seke_app.models import GenerationRun
from tests.conftest import client_for
from tests.factories import make_dataset
from tests.test_curation import make_images, make_run

pytestmark = pytest.mark.django_db

MIGRATION = importlib.import_module(
    "seke_app.migrations.0013_run_numbers_and_names_export_skip_reasons"
)


def test_it_numbers_each_datasets_runs_from_one_as_they_are_created() -> None:
    demo, _ = make_images(1, name="demo")
    other, _ = make_images(1, name="other")
    runs = [make_run(demo), make_run(other), make_run(demo), make_run(demo)]
    assert [(r.dataset.name, r.number) for r in runs] == [
        ("demo", 1),
        ("other", 1),
        ("demo", 2),
        ("demo", 3),
    ]


def test_a_number_is_never_given_twice_on_one_dataset() -> None:
    demo, _ = make_images(1, name="demo")
    first = make_run(demo)
    with pytest.raises(IntegrityError), transaction.atomic():
        GenerationRun.objects.filter(id=make_run(demo).id).update(number=first.number)


def test_the_label_names_dataset_number_name_and_local_time(settings: Any) -> None:
    settings.TIME_ZONE = "Europe/Berlin"
    demo, _ = make_images(1, name="demo")
    make_run(demo), make_run(demo)
    run = make_run(demo)
    created = datetime(2026, 12, 5, 23, 35, tzinfo=UTC)
    GenerationRun.objects.filter(id=run.id).update(created_at=created)
    run.refresh_from_db()
    with timezone.override("Europe/Berlin"):
        assert run.label == "demo #3 · 2026-12-06 00:35"
        run.rename("  new   prompt ")
        assert run.label == "demo #3 · new prompt · 2026-12-06 00:35"
    run.refresh_from_db()
    assert run.name == "new prompt" and str(run) == f"run {run.label}"
    with pytest.raises(ValueError, match="at most 100 characters"):
        run.rename("x" * 101)


def test_the_migration_numbers_existing_runs_by_creation_order() -> None:
    demo, _ = make_images(1, name="demo")
    other, _ = make_images(1, name="other")
    runs = [make_run(demo), make_run(other), make_run(demo)]
    # Made in another order than their ids, and numbered wrongly before the migration.
    base = timezone.now()
    for run, minutes in zip(runs, [30, 10, 20], strict=True):
        GenerationRun.objects.filter(id=run.id).update(
            created_at=base - timedelta(minutes=minutes), number=100 + run.id
        )
    MIGRATION.number_existing_runs(apps, None)
    numbers = {r.id: r.number for r in GenerationRun.objects.all()}
    assert numbers == {runs[0].id: 1, runs[1].id: 1, runs[2].id: 2}


def test_runs_with_the_same_minute_read_apart_wherever_runs_are_picked(admin_user: User) -> None:
    demo, _ = make_images(1, name="demo")
    runs = [make_run(demo), make_run(demo)]
    runs[1].rename("baseline")
    GenerationRun.objects.update(created_at=timezone.now().replace(second=0, microsecond=0))
    field = CompareForm().fields["a"]
    assert isinstance(field, ModelChoiceField)
    labels = [field.label_from_instance(run) for run in GenerationRun.objects.all()]
    assert len(set(labels)) == 2
    assert sorted(label.split(" · ")[0] for label in labels) == ["demo #1", "demo #2"]
    assert any(label.startswith("demo #2 · baseline · ") for label in labels)
    client = client_for(admin_user)
    picker = client.get(reverse("review:version_new")).content.decode()
    listing = client.get(reverse("run_list")).content.decode()
    for run in GenerationRun.objects.select_related("dataset"):
        assert run.label in picker and run.label in listing


def test_it_starts_a_named_run_from_the_form(tmp_path: Path, admin_user: User) -> None:
    dataset = make_dataset(tmp_path, n=2)
    with mock.patch("seke_app.runs.services.run_enqueue"):
        response = client_for(admin_user).post(
            reverse("run_new"),
            {
                "dataset": str(dataset.code),
                "name": "baseline",
                "backend": "offline",
                "strategy": "uamc",
                "k0": 3,
                "kmax": 7,
                "step": 2,
                "temperature": 1.0,
                "review_threshold": 0.7,
                "concurrency": 1,
            },
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    run = GenerationRun.objects.get()
    assert (run.number, run.name) == (1, "baseline")
    page = client_for(admin_user).get(response["Location"]).content.decode()
    assert f"Run {run.label}" in page


def test_it_renames_a_run_from_its_page(admin_user: User, annotator: User, outsider: User) -> None:
    demo, _ = make_images(1, name="demo")
    run = make_run(demo)
    url = reverse("run_rename", args=[run.code])
    for user, allowed in ((None, False), (outsider, False), (annotator, False), (admin_user, True)):
        response = client_for(user).post(url, {"name": f"by {user}"})
        assert (
            response.status_code == 302
            and response["Location"].endswith(reverse("run_detail", args=[run.code]))
        ) is allowed, user
    run.refresh_from_db()
    assert run.name == "by ada"
    assert client_for(admin_user).get(url).status_code == 405
    client_for(admin_user).post(url, {"name": ""})
    run.refresh_from_db()
    assert run.name == "" and run.label.startswith("demo #1 · ")


# The inline run annotates from a thread with a database connection of its own.
@pytest.mark.django_db(transaction=True)
def test_the_command_names_the_run(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, n=2)
    out = StringIO()
    call_command(
        "run_generation", "--dataset", dataset.name, "--name", "cli", "--inline", stdout=out
    )
    run = GenerationRun.objects.get()
    assert run.name == "cli" and run.number == 1
    assert f"run {dataset.name} #1 · cli · " in out.getvalue()
