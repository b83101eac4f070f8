"""Browser tests: Debian's Chromium driven through Playwright's sync API.

``playwright install`` is never needed: the fixture launches /usr/bin/chromium.
Without it the browser tests are skipped with the reason, unless
``SEKE_REQUIRE_BROWSER=1`` (set by CI), where a missing browser fails them.
Use the ``browser_page`` fixture together with pytest-django's ``live_server``
(served by gunicorn with ``SEKE_LIVE_SERVER=gunicorn``: tests/live_gunicorn.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from django.db import connections

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Long enough for a loaded CI machine, short enough that a hung page fails soon.
TIMEOUT_MS = 15_000


@dataclass
class BrowserPage:
    """A Playwright page, its ``expect``, and the errors its console reported.

    Console errors fail the test when it ends; a test may also assert the list empty.
    """

    page: Any
    expect: Callable[..., Any]
    console_errors: list[str] = field(default_factory=list)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("SEKE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (SEKE_REQUIRE_BROWSER=1 requires the browser tests to run)")
    pytest.skip(reason=reason)


@pytest.fixture
def browser_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[BrowserPage]:
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing: install Debian's chromium package")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[dev]'")
    # Playwright's sync API keeps an event loop running in this thread, which makes
    # Django refuse ORM calls from the test; the ORM is still used synchronously.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            result = BrowserPage(page=page, expect=expect)
            page.on("console", lambda message: _record_console(result, message))
            page.on("pageerror", lambda error: result.console_errors.append(f"page error: {error}"))
            yield result
        finally:
            browser.close()
            # While Playwright's loop runs, Django keeps the test's database
            # connections apart from the usual thread-local ones, where its own
            # clean-up would not find them (PostgreSQL then refuses to drop the
            # test database "being accessed by other users").
            connections.close_all()
    if result.console_errors:
        pytest.fail("the browser console reported errors:\n" + "\n".join(result.console_errors))


def _record_console(result: BrowserPage, message: Any) -> None:
    if message.type != "error":
        return
    url = (message.location or {}).get("url", "")
    # Every page links SEKE's favicon, and /favicon.ico leads to it: a failed
    # request for it is an error like any other.
    result.console_errors.append(f"console error: {message.text} ({url})")
