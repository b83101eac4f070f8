"""Exports read like a product: a form per kind, options in words, what was left out and why."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from seke_app.engine.formats.records import NO_LABEL, UNDER_MIN_CONFIDENCE
from seke_app.exports.services import ExportOptions, export_create, export_run
from seke_app.exports.writers import REJECTED
from seke_app.models import Dataset
from seke_app.models.exports import Export
from tests.conftest import client_for
from tests.factories import record_decision
from tests.test_curation import annotate, make_images, make_run

pytestmark = pytest.mark.django_db


def field_kinds(page: str) -> dict[str, str]:
    """Each form field's wrapper: the kinds it is shown for ("" for every kind)."""
    found = {}
    for match in re.finditer(r'<div class="field" id="field-(\w+)"( data-kinds="([\w ]+)")?', page):
        found[match.group(1)] = match.group(3) or ""
    return found


def test_the_form_marks_the_fields_of_each_kind(admin_user: User) -> None:
    dataset = Dataset.objects.create(name="faces")
    page = client_for(admin_user).get(reverse("export_new", args=[dataset.code])).content.decode()
    kinds = field_kinds(page)
    assert kinds["formats"] == kinds["holdout"] == kinds["openai_images"] == "feid"
    assert kinds["test_fraction"] == "feab" and kinds["seed"] == "feid feab"
    assert kinds["kind"] == kinds["grains"] == kinds["min_confidence"] == kinds["archive"] == ""
    # Without the script every field shows, each marked with what it is for.
    assert '<small class="kind-note">(FEID only)</small>' in page
    assert '<small class="kind-note">(FEID and FEAB only)</small>' in page
    assert "js/export.js" in page


def labelled(annotator: User) -> Dataset:
    """Four faces: confident, under 0.8, rejected by a reviewer, and never annotated."""
    dataset, images = make_images(4, write_files=True)
    run = make_run(dataset)
    annotate(images[0], run, confidence=0.95)
    annotate(images[1], run, confidence=0.75)
    rejected = annotate(images[2], run, confidence=0.95)
    record_decision(rejected, annotator, "reject_image")
    return dataset


def test_a_finished_export_says_what_it_left_out_and_why(admin_user: User, annotator: User) -> None:
    dataset = labelled(annotator)
    options = ExportOptions(formats=("llava",), min_confidence=0.8)
    export = export_create(dataset=dataset, kind="feid", options=options, enqueue=False)
    export_run(export_id=export.id)
    export.refresh_from_db()
    assert (export.n_written, export.n_skipped) == (1, 3)
    assert export.skipped_by_reason == {REJECTED: 1, UNDER_MIN_CONFIDENCE: 1, NO_LABEL: 1}

    page = client_for(admin_user).get(reverse("export_detail", args=[export.code]))
    html = page.content.decode()
    assert "1 of 4 images in the export; 3 of 4 were left out:" in html
    for reason in (REJECTED, UNDER_MIN_CONFIDENCE, NO_LABEL):
        assert f"<li>1: {reason}</li>" in html

    path = export.absolute_path()
    assert path is not None
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        card = archive.read("README.md").decode()
    assert manifest["counts"]["skipped_by_reason"] == export.skipped_by_reason
    assert "3 of 4 images were left out. Why: " in card


def test_a_benchmark_counts_each_left_out_image_once(annotator: User) -> None:
    dataset = labelled(annotator)
    export = export_create(dataset=dataset, kind="feab", options=ExportOptions(), enqueue=False)
    export_run(export_id=export.id)
    export.refresh_from_db()
    assert export.status == "done", export.error
    assert export.n_skipped == 2 and sum(export.skipped_by_reason.values()) == 2


def test_the_detail_page_states_the_options_in_words(admin_user: User) -> None:
    dataset = Dataset.objects.create(name="faces")
    options = ExportOptions(
        formats=("llava", "openai"),
        grains=("expression", "aus"),
        sources={"expression": ("human",), "aus": ("human", "machine")},
        min_confidence=0.7,
        split="test",
        openai_images="data_url",
    )
    export = Export.objects.create(dataset=dataset, kind="feid", options=options.to_json())
    html = client_for(admin_user).get(reverse("export_detail", args=[export.code])).content.decode()
    options_part = html.split('id="export-options"')[1].split("</dl>")[0]
    for words in (
        "LLaVA conversations, OpenAI chat fine-tuning",
        "expression, action units",
        "<dt>Expression labels from</dt><dd>human review</dd>",
        "<dt>Action units labels from</dt><dd>human review, machine (accepted by its run)</dd>",
        "<dd>0.7</dd>",
        "only the split “test”",
        "referenced by path, media-relative",
        "embedded data URL",
        "zip archive with manifest and dataset card",
    ):
        assert words in options_part, words
    assert (
        "[" not in options_part and "{" not in options_part and "Test fraction" not in options_part
    )

    feab = Export.objects.create(dataset=dataset, kind="feab", options=ExportOptions().to_json())
    html = client_for(admin_user).get(reverse("export_detail", args=[feab.code])).content.decode()
    assert "<dt>Test fraction</dt><dd>20%</dd>" in html and "Formats" not in html
