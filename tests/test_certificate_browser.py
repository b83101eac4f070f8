"""In the browser: an admin states a target, sees the certificate, finds it in the card."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from seke_app.models import RunCertificate
from tests.browser import BrowserPage
from tests.conftest import PASSWORD
from tests.test_certificates import audited_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture(autouse=True)
def _no_gold(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def test_it_certifies_from_the_dashboard_and_prints_it_in_the_card(
    annotator: User,
    admin_user: User,
    tmp_path: Path,
    live_server: Any,
    browser_page: BrowserPage,
    start_worker: Callable[..., Any],
) -> None:
    run, _ = audited_run(annotator)
    worker = start_worker(("exports",))
    page = browser_page.page
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}/runs/{run.code}/dashboard")
    expect(page.locator("#no-certificate")).to_be_visible()
    form = page.locator("#certify-form")
    form.get_by_label("Expression").check()
    form.get_by_label("Error allowed (%)").fill("10")
    form.get_by_label("Confidence level (%)").fill("90")
    form.get_by_role("button", name="Certify").click()
    expect(page.locator("#certificate-sentence")).to_contain_text("certified")
    expect(page.locator("#certificate-in-force")).to_be_visible()
    certificate = RunCertificate.objects.get()
    assert certificate.threshold is not None
    shown = f"{certificate.threshold:.3f}"
    expect(page.locator("#current-threshold")).to_contain_text(shown)
    page.get_by_role("link", name="Run page").click()
    expect(page.locator("#certificate-sentence")).to_contain_text(f"Threshold {shown} certified")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Exports").click()
    page.get_by_role("link", name=f"Export {run.dataset.name}…").click()
    page.get_by_label("Kind").select_option("feid")
    page.get_by_role("button", name="Start the export").click()
    expect(page).to_have_url(re.compile(r"/exports/[0-9a-f-]{36}/$"))
    download_link = page.locator("#export-download")
    expect(download_link).to_be_visible(timeout=60_000)
    with page.expect_download() as info:
        download_link.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert worker.poll() is None, worker.output()
    with zipfile.ZipFile(saved) as archive:
        card = archive.read("README.md").decode()
    assert "## Certified quality of the machine labels" in card
    assert f"Threshold {shown} certified" in card and f"Run {run.code}" in card
    assert browser_page.console_errors == []
