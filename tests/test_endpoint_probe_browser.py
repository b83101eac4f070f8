"""The run form's endpoint check in a browser: the button, the note following the job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seke_app.models import EndpointProbe
from seke_app.roles import user_create
from tests.browser import BrowserPage
from tests.conftest import PASSWORD
from tests.fake_openai import FakeOpenAI
from tests.workers import emptied_queue, work_in_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

_own_queue = emptied_queue("default")


@pytest.fixture
def endpoint(settings: Any) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(ignore_logprobs=True) as server:
        settings.OPENAI_API_KEY = "sk-test-browser"
        settings.OPENAI_BASE_URL = server.base_url
        settings.SEKE_MODEL = "gpt-4o"
        yield server


def test_the_button_checks_the_endpoint_and_the_form_shows_the_answers(
    tmp_path: Path, live_server: Any, browser_page: BrowserPage, endpoint: FakeOpenAI
) -> None:
    user_create(username="ada", password=PASSWORD, role="admin")
    page, expect = browser_page.page, browser_page.expect
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}/runs/new/")
    note = page.locator("#endpoint-probe")
    expect(note).to_contain_text("gpt-4o at")
    expect(note).to_contain_text("has not been checked")

    page.get_by_label("Model", exact=True).fill("gpt-4.1")
    page.get_by_label("Model", exact=True).dispatch_event("change")
    expect(note).to_contain_text("gpt-4.1 at")
    # Leaving the field fires its change as the button is pressed: both requests race.
    page.get_by_label("Model", exact=True).fill("gpt-4o-mini")
    page.get_by_role("button", name="Check the endpoint").click()
    expect(note).to_contain_text("A check of gpt-4o-mini is waiting for a worker")
    # The form stayed as it was: htmx swapped the note alone.
    assert page.get_by_label("Model", exact=True).input_value() == "gpt-4o-mini"

    work_in_process("default")
    expect(note).to_contain_text("Checked", timeout=10_000)
    expect(note).to_contain_text("images ✓")
    expect(note).to_contain_text(
        "log-probs ✗ (accepted, but the reply carries no log-probabilities)"
    )
    expect(note).to_contain_text("price known")
    page.screenshot(path=str(tmp_path / "endpoint-check.png"), full_page=True)
    assert EndpointProbe.objects.get().model_name == "gpt-4o-mini"
    assert browser_page.console_errors == []
