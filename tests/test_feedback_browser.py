"""A prompt version learnt from reviews, in the browser: proposal, edit, save, diff,
gold-set check by a worker process, promotion, re-annotation."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from review.tasks.services import Decision, decision_record, task_claim_next
from seke_app.models import PromptVersion
from tests.browser import BrowserPage
from tests.conftest import PASSWORD
from tests.factories import make_flagged_annotations
from tests.test_feedback import review_all
from tests.workers import WorkerProcess, wait_for_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_an_admin_learns_checks_and_promotes_a_version_from_reviews(
    live_server: Any,
    browser_page: BrowserPage,
    admin_user: User,
    annotator: User,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    run = review_all(annotator, expression="fear")
    # Faces reviewed in another run: the version never learns from them, so they are
    # the gold set its check is scored on.
    make_flagged_annotations(3, dataset_name="held-out", write_files=True)
    while (task := task_claim_next(user=annotator)) is not None:
        decision_record(task=task, user=annotator, decision=Decision(action="accept"))
    page, expect = browser_page.page, browser_page.expect
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(admin_user.get_username())
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()

    page.goto(f"{live_server.url}/review/versions/new/")
    page.get_by_label("Runs whose review decisions to learn from").select_option(str(run.code))
    page.get_by_role("button", name="Compute the proposal").click()
    expect(page.get_by_text("Computed from 8 review decisions")).to_be_visible()
    # The rule notes are computed from the corrections, and the admin edits them.
    notes = page.locator("#rule-notes")
    expect(notes).to_have_value(re.compile("fear"))
    notes.fill(notes.input_value() + "\nLook at the brows first.")
    page.get_by_label("Name").fill("learnt from the fear corrections")
    page.get_by_role("button", name="Save as a new version").click()

    expect(page).to_have_url(re.compile(r"/review/versions/[0-9a-f-]{36}/$"))
    version = PromptVersion.objects.get(name="learnt from the fear corrections")
    assert page.url.endswith(f"/review/versions/{version.code}/")
    assert version.parent == PromptVersion.objects.get(is_active=True)
    assert version.exemplars and version.calibration
    expect(page.get_by_role("heading", name=re.compile("Changes against v"))).to_be_visible()
    expect(page.locator("pre.diff")).to_contain_text("+Look at the brows first.")
    expect(page.locator("ol.exemplars li").first).to_contain_text("fear")

    # The gold-set check runs this version and its parent in a worker.
    page.get_by_role("button", name=re.compile("Run the check")).click()
    expect(page.locator(".gold-check").first).to_contain_text("Queued")
    wait_for_worker(start_worker(("default",), burst=True), timeout=120)
    page.reload()
    check = page.locator(".gold-check").first
    expect(check).to_contain_text("Done")
    expect(check.get_by_role("cell", name="expression accuracy")).to_be_visible()
    expect(check.locator(".good, .error").last).to_be_visible()

    # Promotion, with an override reason in case the check found the version worse.
    page.get_by_label(re.compile("Override reason")).fill("tried in the browser test")
    page.get_by_role("button", name="Promote to active").click()
    expect(page.get_by_text(f"v{version.number} is now the active prompt version.")).to_be_visible()
    version.refresh_from_db()
    assert version.is_active

    # Re-annotation opens the run form for what is still unreviewed and unsure.
    page.get_by_role("link", name=re.compile("Re-annotate")).click()
    expect(page).to_have_url(re.compile(r"/runs/new/"))
    expect(page.get_by_label("Only images without a confident label")).to_be_checked()
    assert browser_page.console_errors == []
