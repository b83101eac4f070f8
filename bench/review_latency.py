"""Time from a key press on the review page to the next face on screen, in Chromium.

Usage (from the repository root; needs /usr/bin/chromium and the playwright package)::

    python bench/review_latency.py [--iterations 100] [--warmup 5] [--think-ms 300]
        [--reloads 10] [--size 256] [--keep]

Issue 18's target: on a quiet machine, a median under 100 ms and a 95th percentile
under 200 ms from the key press to the next face and its controls being usable.

Set-up (``_django_env``): a temporary data folder with its own SQLite database (or
a throwaway PostgreSQL database when ``DATABASE_URL`` names one), drawn faces of
``--size`` pixels imported as a dataset and annotated in this process by the
offline backend with a review threshold of 1, so that every face awaits review.
Django serves them from a threaded WSGI server in this process (static files
through ``StaticFilesHandler``, as in the browser tests), on 127.0.0.1.

Chromium (headless, a 1366x768 window) logs in as an annotator and starts
reviewing. Each iteration waits until the page has settled (no decision on its
way, the next face fetched ahead or known to be none), then ``--think-ms`` as a
reviewer looking at the face would, then presses Enter, which accepts the face.
The time measured runs from the keydown event's timestamp to the ``review:shown``
event of ``review.js``, which fires once the next face's panel is in place, its
charts drawn and the frame that shows them rendered (a timer after the next
animation frame); both clocks are the page's ``performance.now()``. Also timed:
from the key press until the page settled again (the decision saved, the face
after next fetched: the pace a reviewer can keep up), and ``--reloads`` full
loads of the review page (navigation start to ``review:shown``), for comparison
with a page that reloads on every decision. Prints p50 / p95 / max and the
machine's load; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import _django_env as env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
PASSWORD = "bench the review page"
LAPTOP = {"width": 1366, "height": 768}

# Installed in the page before each key press: the keydown's time, the time the next
# face was shown, and the time the page settled again.
ARM = """() => {
    window.__bench = {pressed: null, shown: null, settled: null};
    document.addEventListener("keydown", e => { window.__bench.pressed = e.timeStamp; },
                              {capture: true, once: true});
    document.addEventListener("review:shown", e => { window.__bench.shown = e.detail.at; },
                              {once: true});
}"""
WATCH_SETTLED = """() => {
    const app = document.getElementById("review-app");
    new MutationObserver(() => {
        const bench = window.__bench;
        if (bench && bench.shown !== null && bench.settled === null
                && app.dataset.saving === "0" && ["ready", "none"].includes(app.dataset.ahead)) {
            bench.settled = performance.now();
        }
    }).observe(app, {attributes: true});
}"""
SETTLED = """() => {
    const app = document.getElementById("review-app");
    return app && app.dataset.saving === "0" && ["ready", "none"].includes(app.dataset.ahead);
}"""


def seed(bench: env.BenchEnv, n: int, size: int) -> None:
    """``n`` drawn faces, annotated by the offline backend, every one awaiting review."""
    from review.models import ReviewTask
    from seke_app.engine.uamc import UAMCParams
    from seke_app.models import Dataset, RunItem
    from seke_app.roles import user_create
    from seke_app.runs.services import run_create, run_process_chunk

    dataset_id = env.import_drawn_dataset(bench, "latency", n, size)
    run = run_create(
        dataset=Dataset.objects.get(id=dataset_id),
        backend="offline",
        params=UAMCParams(review_threshold=1.0),
        concurrency=1,
        audit_share=0.0,
        enqueue=False,
    )
    items = list(RunItem.objects.filter(run=run).values_list("id", flat=True))
    run_process_chunk(run_id=run.id, item_ids=items)
    waiting = ReviewTask.objects.filter(status="open").count()
    if waiting != n:
        raise env.BenchSetupError(f"{waiting} of {n} faces await review")
    user_create(username="bench", password=PASSWORD, role="annotator")


@contextmanager
def serving() -> Iterator[str]:
    """The site on a threaded WSGI server in this process; its base URL."""
    from django.conf import settings
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    # WhiteNoise warns about a missing STATIC_ROOT; the files come from the finders.
    os.makedirs(settings.STATIC_ROOT, exist_ok=True)
    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.set_app(StaticFilesHandler(get_wsgi_application()))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def start_reviewing(page: Any, base: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", "bench")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.goto(f"{base}/review/")
    with page.expect_navigation():
        page.click("#start-reviewing")
    page.wait_for_function(SETTLED)
    page.evaluate(WATCH_SETTLED)


def one_face(page: Any, think_ms: int) -> tuple[float, float]:
    """Press Enter on the face shown; (ms to the next face, ms until settled again)."""
    page.wait_for_function(SETTLED)
    page.wait_for_timeout(think_ms)
    page.evaluate(ARM)
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.__bench.shown !== null && window.__bench.settled !== null")
    bench = page.evaluate("window.__bench")
    return bench["shown"] - bench["pressed"], bench["settled"] - bench["pressed"]


def one_reload(page: Any) -> float:
    """A full load of the review page: ms from navigation start to the face shown."""
    page.reload()
    page.wait_for_function("() => window.__loaded !== undefined")
    loaded: float = page.evaluate("window.__loaded")
    page.wait_for_function(SETTLED)
    page.evaluate(WATCH_SETTLED)
    return loaded


def line(name: str, values: list[float]) -> str:
    p50, p95, worst = env.percentiles(values)
    return f"  {name:34s} p50 {p50:7.1f}   p95 {p95:7.1f}   max {worst:7.1f} ms   n={len(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--think-ms", type=int, default=300)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="side of the drawn faces in pixels")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    bench = env.setup("review-latency", keep=args.keep)
    try:
        print(env.machine_load())
        started = time.monotonic()
        n = args.warmup + args.iterations + 2
        seed(bench, n, args.size)
        print(f"{n} faces of {args.size} px seeded in {time.monotonic() - started:.0f} s")
        print(bench.describe())
        # Playwright's sync API runs an event loop in this thread; the ORM is not used
        # from here once it runs (the server's threads have their own connections).
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        with serving() as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": LAPTOP["width"], "height": LAPTOP["height"]})
            start_reviewing(page, base)
            for _ in range(args.warmup):
                one_face(page, args.think_ms)
            shown, settled = [], []
            for _ in range(args.iterations):
                to_face, to_settled = one_face(page, args.think_ms)
                shown.append(to_face)
                settled.append(to_settled)
            page.add_init_script(
                """document.addEventListener("review:shown",
                    e => { window.__loaded = e.detail.at; }, {once: true});"""
            )
            reloads = [one_reload(page) for _ in range(args.reloads)]
            browser.close()
        print(
            f"Chromium {CHROMIUM}, window {LAPTOP['width']}x{LAPTOP['height']}, think time "
            f"{args.think_ms} ms, {args.warmup} faces of warm-up"
        )
        print(line("key press -> next face shown", shown))
        print(line("key press -> saved, next fetched", settled))
        if reloads:
            print(line("full page load (for comparison)", reloads))
        print(env.machine_load())
    finally:
        env.teardown(bench)


if __name__ == "__main__":
    main()
