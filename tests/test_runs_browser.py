"""A run started in the browser, watched to the end while a worker process works."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from seke_app.datasets.services import dataset_import
from seke_app.models import Dataset, GenerationRun
from seke_app.roles import user_create
from tests.browser import BrowserPage
from tests.conftest import PASSWORD, draw_face
from tests.workers import WorkerProcess, wait_for_worker

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.browser,
]

N_IMAGES = 20
# The page polls every second; the whole run must fit well inside this.
RUN_TIMEOUT_MS = 120_000


# Records each value the progress bar shows as htmx swaps the section in.
WATCH_PROGRESS = """
window.sekeProgressSeen = [];
const record = () => {
  const value = Number(document.querySelector("[role=progressbar]").getAttribute("aria-valuenow"));
  const seen = window.sekeProgressSeen;
  if (seen[seen.length - 1] !== value) seen.push(value);
};
record();
new MutationObserver(record).observe(document.body, {subtree: true, childList: true});
"""


def drawn_dataset(tmp_path: Path, n: int) -> Dataset:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.png").write_bytes(draw_face(seed=i, smile=i % 2 == 0))
    dataset_import(path=src, dataset_name="drawn")
    return Dataset.objects.get(name="drawn")


def test_it_shows_a_run_progress_live_until_it_completes(
    tmp_path: Path,
    live_server: Any,
    browser_page: BrowserPage,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    dataset = drawn_dataset(tmp_path, N_IMAGES)
    user_create(username="ada", password=PASSWORD, role="admin")
    page, expect = browser_page.page, browser_page.expect
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("navigation", name="Main")).to_contain_text("Runs")

    page.goto(f"{live_server.url}/runs/new/")
    page.get_by_label("Dataset").select_option(str(dataset.code))
    page.get_by_label("Backend").select_option("offline")
    # Ten samples an image keep the run going for a few of the page's polls.
    page.get_by_label("Strategy").select_option("fixed")
    page.get_by_label("K0").fill("10")
    page.get_by_label("Kmax").fill("10")
    page.get_by_label("Concurrency").fill("1")
    page.get_by_role("button", name="Start the run").click()

    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}/$"))
    run = GenerationRun.objects.get()
    assert page.url.endswith(f"/runs/{run.code}/")
    expect(page.get_by_role("listitem").filter(has_text="Run started on 20 images")).to_be_visible()
    status = page.locator("#run-status")
    progress = page.get_by_role("progressbar")
    expect(status).to_have_text("Queued")
    expect(progress).to_have_attribute("aria-valuenow", re.compile(r"^0(\.0)?$"))
    # A page reload would lose this record of every value the bar showed.
    page.evaluate(WATCH_PROGRESS)

    worker = start_worker(burst=True)
    expect(status).to_have_text("Completed", timeout=RUN_TIMEOUT_MS)
    expect(progress).to_have_attribute("aria-valuenow", re.compile(r"^100(\.0)?$"))
    expect(page.locator("#n-done")).to_have_text(str(N_IMAGES))
    seen = page.evaluate("window.sekeProgressSeen")
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen), seen
    # A finished run's section stops polling.
    expect(page.locator("#run-progress")).not_to_have_attribute("hx-get", re.compile(".*"))
    page.screenshot(path=str(tmp_path / "run-progress.png"), full_page=True)
    wait_for_worker(worker, timeout=30)

    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED and run.n_done == N_IMAGES
    assert browser_page.console_errors == []
