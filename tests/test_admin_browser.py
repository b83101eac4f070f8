"""The admin's afternoon in Chromium at 1366 by 768: import, start a run from the
import's result, review the run's flagged faces from the run's page, export the
dataset; and the dashboard's cost chart with one minute of data.

Screenshots go to the test's temporary folder, never into the repository.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from review.models import ReviewDecision
from seke_app.models import Annotation, GenerationRun
from seke_app.models.exports import Export
from seke_app.roles import user_create
from tests.browser import BrowserPage
from tests.conftest import PASSWORD, draw_face
from tests.factories import scripted_images
from tests.test_dashboards import annotation_row, annotations_of, make_run
from tests.workers import WorkerProcess

# The review page's script has started and has no decision left to save.
REVIEW_APP_IDLE = """() => {
  const app = document.getElementById("review-app");
  return app !== null && app.dataset.saving === "0";
}"""
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1366, "height": 768}
# An import, a run and an export, each waited for while a worker does it.
WORK_TIMEOUT_MS = 120_000
N_FACES = 6

# The contrast ratio of two CSS colours (WCAG 2), computed in the page.
CONTRAST = """(element) => {
  const style = getComputedStyle(element);
  const rgb = (text) => text.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const luminance = ([r, g, b]) => {
    const linear = (c) => {
      c /= 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
  };
  const ink = luminance(rgb(style.color));
  const paper = luminance(rgb(style.backgroundColor));
  const [a, b] = [ink, paper].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def faces_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(N_FACES):
            archive.writestr(f"faces/{i}.png", draw_face((96, 96), seed=i, smile=i % 2 == 0))
        archive.writestr("faces/manifest.csv", "file,expression\n0.png,happiness\n1.png,sadness\n")
    return buffer.getvalue()


def log_in(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").wait_for()


def test_an_admin_goes_from_an_import_to_a_run_to_its_review_to_an_export(
    tmp_path: Path,
    live_server: Any,
    browser_page: BrowserPage,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    user_create(username="ada", password=PASSWORD, role="admin")
    worker = start_worker(("default", "generation", "exports"))
    page, expect = browser_page.page, browser_page.expect
    page.set_viewport_size(LAPTOP)
    log_in(page, live_server.url, "ada")

    # Import: the result leads on to a run on the new dataset.
    archive = tmp_path / "faces.zip"
    archive.write_bytes(faces_zip())
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Import").click()
    page.get_by_label("Dataset").fill("afternoon")
    page.get_by_label("Files").set_input_files(str(archive))
    page.get_by_label("AU vocabulary").select_option("feid17")
    page.get_by_role("button", name="Import").click()
    expect(page.locator("#import-status")).to_have_text("Done", timeout=WORK_TIMEOUT_MS)
    page.get_by_role("link", name="Start a run on afternoon").click()

    # The run, named; every face is flagged (threshold 1) and none is audited blind.
    expect(page.get_by_label("Dataset")).to_have_value(re.compile("[0-9a-f-]{36}"))
    page.get_by_label("Name", exact=True).fill("first look")
    page.get_by_label("Backend").select_option("offline")
    page.get_by_label("Review threshold").fill("1")
    page.get_by_label("Audit share").fill("0")
    page.get_by_role("button", name="Start the run").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Run afternoon #1 · first look")
    expect(page.locator("#run-status")).to_have_text("Completed", timeout=WORK_TIMEOUT_MS)
    expect(page.locator("#run-progress")).not_to_have_attribute("hx-get", re.compile(".*"))
    bar_text = page.locator("#run-progress [role=progressbar] span")
    assert bar_text.evaluate(CONTRAST) >= 4.5
    page.screenshot(path=str(tmp_path / "run-1366x768.png"), full_page=True)

    # Its flagged faces: the queue, filtered to this run.
    run = GenerationRun.objects.get()
    page.get_by_role("link", name=re.compile(r"Review its \d+ flagged faces")).click()
    expect(page).to_have_url(re.compile(rf"/review/\?run={run.code}$"))
    expect(page.locator("#n-waiting")).to_have_text(str(run.n_flagged))
    page.locator("#start-reviewing").click()
    expect(page).to_have_url(re.compile(r"/review/task/[0-9a-f-]{36}/$"))
    # The review page's script is at work (before that, a click would send the
    # form without it, as a page without JavaScript does).
    page.wait_for_function(REVIEW_APP_IDLE)
    page.locator("#accept-button").click()
    # The decision is saved in the background once the next face is shown.
    expect(page.locator("#save-status")).to_contain_text("Accepted")
    page.wait_for_function(REVIEW_APP_IDLE)
    expect(page).to_have_url(re.compile(r"/review/task/[0-9a-f-]{36}/$"))
    assert ReviewDecision.objects.filter(annotation__run=run, action="accept").count() == 1

    # The home page says what is going on.
    page.goto(f"{live_server.url}/")
    expect(page.locator("#home-review")).to_contain_text(f"{run.n_flagged - 1} faces await review")
    expect(page.locator("#home-review")).to_contain_text("afternoon #1 · first look")

    # The export form shows the fields of the chosen kind only.
    page.goto(f"{live_server.url}/datasets/{run.dataset.code}/export/")
    kind = page.get_by_label("Kind")
    for chosen, shown, hidden in (
        ("feab", "#field-test_fraction", "#field-formats"),
        ("labelstudio", "#field-grains", "#field-seed"),
        ("feid", "#field-formats", "#field-test_fraction"),
    ):
        kind.select_option(chosen)
        expect(page.locator(shown)).to_be_visible()
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.locator("#field-openai_images")).to_be_hidden()
    page.get_by_label("OpenAI chat fine-tuning").check()
    expect(page.locator("#field-openai_images")).to_be_visible()
    page.get_by_label("OpenAI chat fine-tuning").uncheck()
    page.get_by_role("button", name="Start the export").click()
    expect(page.locator("#export-status")).to_have_text("Done", timeout=WORK_TIMEOUT_MS)
    export = Export.objects.get()
    # One face is reviewed and two carry a known label; the rest wait for review.
    expect(page.locator("#export-summary")).to_contain_text("left out")
    expect(page.locator("#skipped-reasons")).to_contain_text("not annotated, or flagged")
    expect(page.locator("#export-options")).to_contain_text("LLaVA conversations")
    expect(page.locator("#export-download")).to_be_visible()
    page.screenshot(path=str(tmp_path / "export-1366x768.png"), full_page=True)
    assert export.n_written + export.n_skipped == N_FACES
    assert worker.poll() is None, worker.output()
    assert browser_page.console_errors == []


def chart_run(cost: Decimal) -> GenerationRun:
    """A run with a minute of annotations, one every five seconds."""
    images = scripted_images(12, name=f"chart-{cost}")
    run = make_run([annotation_row(image, cost_usd=cost) for image in images])
    start = timezone.now().replace(microsecond=0) - timedelta(minutes=3)
    for i, annotation in enumerate(annotations_of(run)):
        Annotation.objects.filter(id=annotation.id).update(
            created_at=start + timedelta(seconds=5 * i)
        )
    return run


def texts(page: Any, selector: str) -> list[str]:
    """The text of SVG elements (which have no inner text)."""
    found: list[str] = page.locator(selector).evaluate_all("(all) => all.map((e) => e.textContent)")
    return found


def test_the_cost_chart_of_a_minute_of_data_reads_well(
    tmp_path: Path, live_server: Any, browser_page: BrowserPage
) -> None:
    user_create(username="ada", password=PASSWORD, role="admin")
    free, paid = chart_run(Decimal(0)), chart_run(Decimal("0.0021"))
    page = browser_page.page
    page.set_viewport_size(LAPTOP)
    log_in(page, live_server.url, "ada")
    for run in (free, paid):
        page.goto(f"{live_server.url}/runs/{run.code}/dashboard")
        page.wait_for_selector("#chart-timeline .xtick text")
        ticks = texts(page, "#chart-timeline .xtick text")
        assert len(ticks) >= 2 and len(set(ticks)) == len(ticks), ticks
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d", tick) for tick in ticks), ticks
        bars = page.locator("#chart-timeline .bars .point").count()
        assert bars >= 11, bars
        cost_ticks = texts(page, "#chart-timeline .y2tick text")
        if run is free:
            assert cost_ticks == []
            assert "the run has cost nothing" in page.inner_text("#timeline-note")
        else:
            values = [float(t.strip("$")) for t in cost_ticks]
            # Up to a little over the $0.0252 spent, not a default 0 to 1.
            assert 0.02 < max(values) <= 0.03, cost_ticks
        page.screenshot(path=str(tmp_path / f"timeline-{run.dataset.name}.png"), full_page=True)
    assert browser_page.console_errors == []
