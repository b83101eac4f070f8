"""The review workflow in Chromium: keyboard review, circumplex and AU corrections,
reject, undo, concurrent claims, an expired lease, escaping, and a clean console.
Decisions show the next face without a page load (``review.js``); undo loads a page.

The data is real: drawn faces imported as a dataset, annotated by a run processed
in-process by a burst rq worker, with a review threshold of 1.0 so that every
annotation is flagged and gets a review task.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from review.models import ReviewDecision, ReviewTask
from seke_app.models import Annotation, FaceImage
from seke_app.roles import user_create
from tests.browser import BrowserPage
from tests.review_runs import reviewable_run
from tests.workers import emptied_queue

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "review in the browser"
TASK_URL = re.compile(r"/review/task/([0-9a-f-]{36})/$")
XSS = '<script>window.__pwned = "evidence"</script>'


_own_queue = emptied_queue("generation")


def log_in(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "/login/" not in page.url


def start_reviewing(page: Any) -> ReviewTask:
    """From the queue page, claim the next task; its page is loaded and drawn."""
    with page.expect_navigation():
        page.click("#start-reviewing")
    return current_task(page)


def current_task(page: Any) -> ReviewTask:
    match = TASK_URL.search(page.url)
    assert match, f"not on a task page: {page.url}\n{page.inner_text('main')[:500]}"
    wait_for_charts(page)
    return ReviewTask.objects.select_related("annotation").get(code=match.group(1))


def wait_for_charts(page: Any) -> None:
    """The charts are drawn, no decision is on its way, and the next face is fetched."""
    for chart in ("#chart-votes", "#chart-va"):
        page.wait_for_selector(f"{chart} .main-svg", state="attached")
    page.wait_for_function(
        """() => {
            const app = document.getElementById("review-app");
            return app.dataset.saving === "0" && ["ready", "none"].includes(app.dataset.ahead);
        }"""
    )


def press_and_wait(page: Any, key: str) -> None:
    """Press a key that decides the face on screen; wait until the decision is saved."""
    before = page.get_attribute("#review-panel", "data-code")
    page.keyboard.press(key)
    page.wait_for_function(
        "c => document.getElementById('review-panel').dataset.code !== c", arg=before
    )
    wait_for_charts(page)


def nudged(value: float, steps: int) -> float:
    """What review.js makes of ``steps`` nudges of +0.05: rounded to 0.01 each time."""
    for _ in range(steps):
        value = min(1.0, max(-1.0, math.floor((value + 0.05) * 100 + 0.5) / 100))
    return value


def machine_rows() -> list[Any]:
    return list(Annotation.objects.order_by("id").values())


def click_circumplex(page: Any, valence: float, arousal: float) -> None:
    """Click the point of the circumplex where (valence, arousal) is drawn."""
    x, y = page.evaluate(
        """([v, a]) => {
            const gd = document.getElementById("chart-va");
            gd.scrollIntoView({block: "center"});
            const full = gd._fullLayout;
            const box = gd.querySelector(".main-svg").getBoundingClientRect();
            return [box.left + full.xaxis._offset + full.xaxis.d2p(v),
                    box.top + full.yaxis._offset + full.yaxis.d2p(a)];
        }""",
        [valence, arousal],
    )
    page.mouse.click(x, y)


def test_it_reviews_with_the_keyboard_and_mouse_and_records_exactly_the_decisions(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path)
    user = user_create(username="ann", password=PASSWORD, role="annotator")
    before = machine_rows()
    page = browser_page.page
    log_in(page, live_server.url, "ann")
    page.click("nav >> text=Review queue")
    page.wait_for_selector("#queue-table")
    assert page.inner_text("#n-waiting") == "6"

    # Task 1: nothing changed, so Enter accepts as is.
    first = start_reviewing(page)
    assert page.inner_text("#pending-action") == "accept as is"
    press_and_wait(page, "Enter")

    # Task 2: a digit changes the expression, the arrows nudge VA, Enter saves.
    second = current_task(page)
    assert second.id != first.id
    machine = second.annotation
    expressions = page.eval_on_selector_all(
        "input[name=expression]", "els => els.map(e => [e.dataset.key, e.value])"
    )
    key, new_expression = next((k, e) for k, e in expressions if e != machine.expression)
    page.keyboard.press(key)
    # The arrows move valence-arousal once it has the focus (V).
    for arrow in ("v", "ArrowRight", "ArrowRight", "ArrowUp", "Escape"):
        page.keyboard.press(arrow)
    assert page.inner_text("#pending-action") == "save your correction"
    assert "changed" in (page.get_attribute("#grain-expression", "class") or "")
    assert "changed" in (page.get_attribute("#grain-va", "class") or "")
    assert "changed" not in (page.get_attribute("#grain-aus", "class") or "")
    assert page.evaluate("window.scrollY") == 0, "the arrow keys scrolled the page"
    press_and_wait(page, "Enter")

    # Task 3: R opens the reject panel; Enter without a reason is refused in the page.
    third = current_task(page)
    page.keyboard.press("r")
    assert page.evaluate("document.activeElement.id") == "reject-reason"
    assert page.inner_text("#pending-action") == "reject the image"
    page.keyboard.press("Enter")
    assert page.is_visible("#reject-error")
    assert TASK_URL.search(page.url).group(1) == str(third.code)  # type: ignore[union-attr]
    page.keyboard.press("ArrowDown")
    assert page.input_value("#reject-reason") == "not a face"
    press_and_wait(page, "Enter")

    # Task 4: VA by a click on the circumplex, AUs by clicking their toggles.
    fourth = current_task(page)
    click_circumplex(page, 0.5, -0.3)
    valence = float(page.input_value("#valence"))
    arousal = float(page.input_value("#arousal"))
    assert valence == pytest.approx(0.5, abs=0.02) and arousal == pytest.approx(-0.3, abs=0.02)
    assert page.eval_on_selector("#chart-va", "gd => [gd.data[3].x[0], gd.data[3].y[0]]") == [
        valence,
        arousal,
    ], "the choice marker did not move to the click"
    aus = fourth.annotation.aus_dict()
    switched_off = next(au for au, on in sorted(aus.items()) if on)
    switched_on = next(au for au, on in sorted(aus.items()) if not on)
    page.click(f"input[name=au_{switched_off}]")
    page.click(f"input[name=au_{switched_on}]")
    assert "changed" in (page.get_attribute("#grain-aus", "class") or "")
    assert page.locator(".au-row.changed").count() == 2
    before_click = page.get_attribute("#review-panel", "data-code")
    page.click("#correct-button")
    page.wait_for_function(
        "c => document.getElementById('review-panel').dataset.code !== c", arg=before_click
    )
    wait_for_charts(page)

    # Z takes the last decision back: task 4 is ours again, and Enter accepts it.
    fifth = current_task(page)
    assert fifth.id not in {first.id, second.id, third.id, fourth.id}
    with page.expect_navigation():
        page.keyboard.press("z")
    assert current_task(page).id == fourth.id
    assert "Decision undone" in page.inner_text(".messages")
    fifth.refresh_from_db()
    # The task held before the undo went back to the queue, and came back as the
    # face fetched ahead of the one undone.
    assert fifth.status == "claimed" and fifth.holder_id == user.id
    press_and_wait(page, "Enter")

    decisions = list(ReviewDecision.objects.order_by("id"))
    assert [(d.task_id, d.action, d.undone_at is not None) for d in decisions] == [
        (first.id, "accept", False),
        (second.id, "correct", False),
        (third.id, "reject_image", False),
        (fourth.id, "correct", True),
        (fourth.id, "accept", False),
    ]
    accepted, corrected, rejected, undone, redone = decisions
    assert all(d.reviewer_id == user.id and d.time_spent_ms > 0 for d in decisions)
    assert accepted.expression == first.annotation.expression
    assert (accepted.valence, accepted.arousal) == (
        first.annotation.valence,
        first.annotation.arousal,
    )
    assert corrected.expression == new_expression
    assert corrected.valence == nudged(machine.valence, 2)  # type: ignore[arg-type]
    assert corrected.arousal == nudged(machine.arousal, 1)  # type: ignore[arg-type]
    assert corrected.aus == machine.aus
    assert corrected.before["expression"] == machine.expression
    assert rejected.reject_reason == "not a face"
    assert FaceImage.objects.get(id=third.annotation.image_id).rejected
    assert (undone.valence, undone.arousal) == (valence, arousal)
    assert undone.aus == {**fourth.annotation.aus, str(switched_off): False, str(switched_on): True}
    assert redone.aus == fourth.annotation.aus
    statuses = dict(ReviewTask.objects.values_list("id", "status"))
    assert [statuses[t.id] for t in (first, second, third, fourth)] == ["done"] * 4
    assert machine_rows() == before, "a machine annotation was modified"


def test_it_gives_two_annotators_starting_at_once_different_tasks(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path, n=3)
    user_create(username="ann", password=PASSWORD, role="annotator")
    user_create(username="tom", password=PASSWORD, role="annotator")
    first = browser_page.page
    context = first.context.browser.new_context()
    errors: list[str] = []
    try:
        second = context.new_page()
        second.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        for page, username in ((first, "ann"), (second, "tom")):
            log_in(page, live_server.url, username)
            page.goto(f"{live_server.url}/review/")
        # Both requests are in flight before either page waits for its answer.
        first.click("#start-reviewing", no_wait_after=True)
        second.click("#start-reviewing", no_wait_after=True)
        first.wait_for_url(TASK_URL)
        second.wait_for_url(TASK_URL)
        codes = {TASK_URL.search(p.url).group(1) for p in (first, second)}  # type: ignore[union-attr]
        wait_for_charts(second)
    finally:
        context.close()
    assert len(codes) == 2
    shown = ReviewTask.objects.filter(code__in=codes, status="claimed")
    assert sorted(t.holder.username for t in shown) == ["ann", "tom"]  # type: ignore[union-attr]
    assert not errors


def test_it_refuses_a_decision_after_the_lease_expired(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path, n=2)
    user_create(username="ann", password=PASSWORD, role="annotator")
    page = browser_page.page
    log_in(page, live_server.url, "ann")
    page.goto(f"{live_server.url}/review/")
    task = start_reviewing(page)
    ReviewTask.objects.filter(id=task.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    page.keyboard.press("2")
    page.keyboard.press("c")  # valence-arousal kept for the new expression
    # The next face is shown at once; the decision, posted behind it, is refused.
    press_and_wait(page, "Enter")
    assert "hold on this task expired" in page.inner_text(".messages")
    assert not ReviewDecision.objects.exists()
    task.refresh_from_db()
    assert task.status == "claimed" and task.closed_at is None


def test_it_shows_model_text_as_text(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path, n=1)
    Annotation.objects.update(
        evidence={"expression": XSS, "va": XSS, "aus": XSS},
        flag_reasons=[f"expression confidence 0.10 under 1.00: {XSS}", XSS],
    )
    user_create(username="ann", password=PASSWORD, role="annotator")
    page = browser_page.page
    log_in(page, live_server.url, "ann")
    page.goto(f"{live_server.url}/review/")
    assert XSS in page.inner_text("#queue-table")
    start_reviewing(page)
    assert page.locator(".evidence").count() == 3
    assert all(XSS in text for text in page.locator(".evidence").all_inner_texts())
    assert XSS in page.inner_text(".review-grid")
    assert page.evaluate("window.__pwned") is None


def test_it_draws_every_chart_without_console_errors(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path, n=1)
    user_create(username="ann", password=PASSWORD, role="annotator")
    page = browser_page.page
    log_in(page, live_server.url, "ann")
    page.goto(f"{live_server.url}/review/")
    task = start_reviewing(page)
    for chart in ("#chart-votes", "#chart-va"):
        assert page.locator(f"{chart} .main-svg").count() >= 1, chart
    samples = page.eval_on_selector("#chart-va", "gd => gd.data[0].x.length")
    assert samples == len(task.annotation.va_samples)
    rates = page.locator(".au-row").all_inner_texts()
    assert any("AU12" in r and "lip corner puller" in r for r in rates)
    assert page.locator(".au-row meter").count() == len(rates)
    # The charts follow the window's size.
    width = page.eval_on_selector("#chart-va", "gd => gd._fullLayout.width")
    page.set_viewport_size({"width": 800, "height": 900})
    page.wait_for_function(
        "w => document.getElementById('chart-va')._fullLayout.width !== w", arg=width
    )
    assert not browser_page.console_errors
