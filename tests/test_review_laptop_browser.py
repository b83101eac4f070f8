"""The review page on a laptop, in Chromium: every control in view at 1366x768, a
whole review session with the keyboard alone (AUs and intensities included), the
next face swapped in without a page load, the back button, and the charts' ticks
and labels.

Screenshots at 1366x768 and 1920x1080 are written to the test's temporary
folder (pytest keeps the last few runs' folders), never into the repository.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from review.models import ReviewDecision, ReviewTask
from seke_app.engine.knowledge import VA_PRIORS
from seke_app.roles import user_create
from tests.browser import BrowserPage
from tests.review_runs import reviewable_run
from tests.workers import emptied_queue

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "review on a laptop"
LAPTOP = {"width": 1366, "height": 768}
FULL_HD = {"width": 1920, "height": 1080}
TASK_URL = re.compile(r"/review/task/([0-9a-f-]{36})/$")

_own_queue = emptied_queue("generation")


def start_reviewing(page: Any, base_url: str, username: str) -> None:
    user_create(username=username, password=PASSWORD, role="annotator")
    page.set_viewport_size(LAPTOP)
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.goto(f"{base_url}/review/")
    page.focus("#start-reviewing")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    wait_until_settled(page)


def wait_until_settled(page: Any) -> None:
    """The charts are drawn (a blind audit has none), no decision is on its way, and
    the next face is fetched."""
    page.wait_for_function(
        """() => {
            const app = document.getElementById("review-app");
            const blind = document.querySelector("#review-panel[data-blind='1']");
            const votes = document.querySelector("#chart-votes .main-svg");
            return app && app.dataset.saving === "0" && (blind || votes)
                && ["ready", "none"].includes(app.dataset.ahead);
        }"""
    )


def shown_code(page: Any) -> str:
    return str(page.get_attribute("#review-panel", "data-code"))


def press_for_next_face(page: Any, key: str) -> str:
    """Press ``key`` on one face; the next one is shown without a page load. Its code."""
    before = shown_code(page)
    page.evaluate("window.__samePage = true")
    page.keyboard.press(key)
    page.wait_for_function(
        "c => document.getElementById('review-panel').dataset.code !== c", arg=before
    )
    wait_until_settled(page)
    assert page.evaluate("window.__samePage") is True, "the page was loaded again"
    code = shown_code(page)
    assert TASK_URL.search(page.url).group(1) == code  # type: ignore[union-attr]
    return code


def press_keys(page: Any, keys: str) -> None:
    for key in keys.split():
        page.keyboard.press(key)


# The controls of the review page, and whether each is in the viewport and on top at
# its centre (not covered by the decision bar or anything else).
CONTROLS_IN_VIEW = """() => {
    const selector = "#review-app :is(input:not([type=hidden]), select, textarea, button, "
        + "summary, a[href]), #chart-va";
    const width = window.innerWidth, height = window.innerHeight;
    const problems = [];
    let count = 0;
    for (const element of document.querySelectorAll(selector)) {
        if (!element.checkVisibility()) continue;
        count += 1;
        const box = element.getBoundingClientRect();
        const name = element.id || element.name || element.textContent.trim().slice(0, 30);
        if (box.left < 0 || box.top < 0 || box.right > width || box.bottom > height) {
            problems.push(`${name} outside the viewport: ${JSON.stringify(box)}`);
            continue;
        }
        const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
        if (!hit || !(hit === element || element.contains(hit) || hit.contains(element))) {
            problems.push(`${name} covered by ${hit ? hit.outerHTML.slice(0, 80) : "nothing"}`);
        }
    }
    return {count, problems, scrolled: window.scrollY};
}"""


def assert_every_control_in_view(page: Any, at_least: int) -> None:
    seen = page.evaluate(CONTROLS_IN_VIEW)
    assert not seen["problems"], "\n".join(seen["problems"])
    assert seen["count"] >= at_least
    assert seen["scrolled"] == 0


def test_it_shows_every_control_without_scrolling_on_a_laptop(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    # The largest AU vocabulary (24 AUs) is the hardest to fit. The second face is a
    # blind audit's.
    reviewable_run(tmp_path, n=2, au_vocabulary="ckplus")
    second = ReviewTask.objects.order_by("priority", "id")[1]
    ReviewTask.objects.filter(id=second.id).update(audit=True)
    page = browser_page.page
    start_reviewing(page, live_server.url, "ann")
    n_aus = page.locator(".au-row").count()
    assert n_aus == 24
    # 8 expressions, 24 AUs with their intensities, VA, the decision bar, the bar above.
    expected = 8 + 2 * n_aus + 3 + 6
    assert_every_control_in_view(page, expected)
    page.screenshot(path=str(tmp_path / "review-1366x768.png"))

    # A changed expression brings up the valence-arousal check; the reject panel opens
    # in the decision bar; neither pushes a control out of view.
    machine = page.input_value("input[name=expression]:checked")
    other = next(k for k, e in enumerate(VA_PRIORS, start=1) if e != machine)
    press_keys(page, f"{other} r")
    page.wait_for_selector("#va-confirmed", state="visible")
    assert page.is_visible("#reject-button")
    assert_every_control_in_view(page, expected + 3)
    page.screenshot(path=str(tmp_path / "review-1366x768-checks.png"))

    page.set_viewport_size(FULL_HD)
    page.wait_for_timeout(100)
    assert_every_control_in_view(page, expected + 3)
    page.keyboard.press("Escape")
    page.screenshot(path=str(tmp_path / "review-1920x1080.png"))

    # The blind audit's page: fewer controls, all in view too.
    page.set_viewport_size(LAPTOP)
    page.keyboard.press("Escape")
    assert press_for_next_face(page, "k") == str(second.code)
    assert page.get_attribute("#review-panel", "data-blind") == "1"
    assert_every_control_in_view(page, 8 + 2 * n_aus + 2 + 5)
    page.screenshot(path=str(tmp_path / "review-blind-1366x768.png"))
    assert (tmp_path / "review-1366x768.png").stat().st_size > 10_000
    assert (tmp_path / "review-1920x1080.png").stat().st_size > 10_000


def nudged(value: float, steps: int) -> float:
    """What review.js makes of ``steps`` nudges of +0.05: rounded to 0.01 each time."""
    for _ in range(steps):
        value = min(1.0, max(-1.0, round((value + 0.05) * 100) / 100))
    return value


def test_it_reviews_a_session_with_the_keyboard_alone(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path, n=6)
    page = browser_page.page
    start_reviewing(page, live_server.url, "ann")
    held = ReviewTask.objects.filter(status="claimed").select_related("annotation__image")
    # The page holds the face on screen and has claimed the next one ahead.
    assert held.count() == 2

    # Face 1: nothing changed, so Enter accepts it as is.
    first = ReviewTask.objects.select_related("annotation").get(code=shown_code(page))
    assert page.inner_text("#pending-action") == "accept as is"
    second_code = press_for_next_face(page, "Enter")
    assert page.inner_text("#save-status") == f"Accepted {first.annotation.image.original_name}."
    assert page.inner_text("#progress-done") == "1"

    # Face 2: another expression; its valence-arousal must be looked at before saving.
    second = ReviewTask.objects.select_related("annotation").get(code=second_code)
    machine = second.annotation
    keys = dict(
        page.eval_on_selector_all(
            "input[name=expression]", "els => els.map(e => [e.value, e.dataset.key])"
        )
    )
    chosen = next(e for e in keys if e != machine.expression)
    page.keyboard.press(keys[chosen])
    assert "check valence-arousal" in page.inner_text("#pending-action")
    page.keyboard.press("Enter")
    assert shown_code(page) == second_code, "saved with the machine's valence-arousal"
    page.keyboard.press("t")
    typical = (round(VA_PRIORS[chosen].valence, 2), round(VA_PRIORS[chosen].arousal, 2))
    assert (float(page.input_value("#valence")), float(page.input_value("#arousal"))) == typical
    # AUs: U, the number, Enter switches one; a letter sets the intensity; an AU the
    # vocabulary lacks is said so.
    au4_before = page.is_checked("input[name=au_4]")
    press_keys(page, "u 4 Enter u 1 2 c")
    assert page.is_checked("input[name=au_4]") is not au4_before
    assert page.is_checked("input[name=au_12]")
    assert page.input_value("select[name=au_12_intensity]") == "C"
    press_keys(page, "u 9 9 Enter")
    assert "AU99 is not in this vocabulary" in page.inner_text("#au-prompt")
    page.keyboard.press("Escape")
    assert page.is_hidden("#au-prompt")
    # V goes to the circumplex: the arrows move the choice there, and scroll elsewhere.
    press_keys(page, "v ArrowRight ArrowRight ArrowUp Escape")
    valence, arousal = nudged(typical[0], 2), nudged(typical[1], 1)
    assert (float(page.input_value("#valence")), float(page.input_value("#arousal"))) == (
        valence,
        arousal,
    )
    page.keyboard.press("ArrowDown")
    assert float(page.input_value("#arousal")) == arousal
    assert page.inner_text("#pending-action") == "save your correction"
    third_code = press_for_next_face(page, "s")

    # Face 3: K skips it, and Z brings it back, named.
    third = ReviewTask.objects.select_related("annotation__image").get(code=third_code)
    press_for_next_face(page, "k")
    with page.expect_navigation():
        page.keyboard.press("z")
    wait_until_settled(page)
    assert shown_code(page) == third_code
    name = third.annotation.image.original_name
    assert f"Skip undone: {name} is yours again." in page.inner_text(".messages")

    # R, a reason chosen with the arrows, Enter: rejected; Z takes that back too.
    page.keyboard.press("r")
    assert page.evaluate("document.activeElement.id") == "reject-reason"
    page.keyboard.press("ArrowDown")
    press_for_next_face(page, "Enter")
    with page.expect_navigation():
        page.keyboard.press("z")
    wait_until_settled(page)
    assert shown_code(page) == third_code
    assert f"Decision undone: {name} is yours again." in page.inner_text(".messages")

    # ? lists every key; then S with nothing changed accepts.
    page.keyboard.press("?")
    assert page.is_visible("#keys-help")
    help_text = page.inner_text("#keys-help")
    for key in ("U", "V", "T", "C", "Enter", "S", "K", "R", "N", "Z", "Esc", "Tab"):
        assert re.search(rf"\b{key}\b", help_text), key
    page.keyboard.press("Escape")
    assert page.is_hidden("#keys-help")
    after_third = press_for_next_face(page, "s")

    # Back leads to the page of the face just decided, which says so and leads on.
    with page.expect_navigation():
        page.go_back()
    wait_until_settled(page)
    assert f"You have decided {name} already" in page.inner_text(".messages")
    assert shown_code(page) == after_third

    decisions = list(ReviewDecision.objects.order_by("id"))
    assert [(d.task_id, d.action, d.undone_at is not None) for d in decisions] == [
        (first.id, "accept", False),
        (second.id, "correct", False),
        (third.id, "reject_image", True),
        (third.id, "accept", False),
    ]
    corrected = decisions[1]
    assert corrected.expression == chosen
    assert (corrected.valence, corrected.arousal) == (valence, arousal)
    assert corrected.aus is not None
    assert corrected.aus["12"] is True and corrected.aus["4"] is not au4_before
    assert corrected.au_intensity.get("12") == "C"
    assert decisions[2].reject_reason == "not a face"
    assert all(d.time_spent_ms > 0 for d in decisions)
    assert ReviewTask.objects.filter(status="claimed").count() == 2

    # Leaving the page gives back the face it fetched ahead; the one on screen stays held.
    with page.expect_navigation():
        page.click("#queue-link")
    claimed = ReviewTask.objects.filter(status="claimed")
    for _ in range(100):
        if claimed.count() == 1:
            break
        page.wait_for_timeout(100)
    assert [t.code for t in claimed] == [ReviewTask.objects.get(code=after_third).code]
    assert not browser_page.console_errors


def test_it_draws_whole_vote_counts_and_labels_that_do_not_overlap(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path, n=1)
    page = browser_page.page
    start_reviewing(page, live_server.url, "ann")
    ticks = page.eval_on_selector_all(
        "#chart-votes .ytick text", "els => els.map(e => e.textContent)"
    )
    assert ticks and all(t.isdigit() for t in ticks), ticks
    assert len(set(ticks)) == len(ticks), ticks
    boxes = page.eval_on_selector_all(
        "#chart-va .textpoint text",
        """els => els.map(e => {
            const b = e.getBoundingClientRect();
            return [e.textContent, b.left, b.top, b.right, b.bottom];
        })""",
    )
    assert sorted(b[0] for b in boxes) == sorted(VA_PRIORS)
    for i, (name, left, top, right, bottom) in enumerate(boxes):
        for other, left2, top2, right2, bottom2 in boxes[i + 1 :]:
            apart = right <= left2 or right2 <= left or bottom <= top2 or bottom2 <= top
            assert apart, f"the labels {name} and {other} overlap"
    for field in ("#valence", "#arousal"):
        assert re.fullmatch(r"-?\d(\.\d{1,3})?", page.input_value(field)), field


def test_it_reviews_with_full_page_loads_without_javascript(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    reviewable_run(tmp_path, n=3)
    user_create(username="ann", password=PASSWORD, role="annotator")
    context = browser_page.page.context.browser.new_context(
        java_script_enabled=False, viewport=LAPTOP
    )
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", "ann")
        page.fill("#id_password", PASSWORD)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.goto(f"{live_server.url}/review/")
        with page.expect_navigation():
            page.click("#start-reviewing")
        first = ReviewTask.objects.get(code=TASK_URL.search(page.url).group(1))  # type: ignore[union-attr]
        switched = next(au for au, on in first.annotation.aus_dict().items() if on)
        page.click(f"input[name=au_{switched}]")
        with page.expect_navigation():
            page.click("#correct-button")
        second = TASK_URL.search(page.url).group(1)  # type: ignore[union-attr]
        assert second != str(first.code)
        with page.expect_navigation():
            page.click("#accept-button")
        assert TASK_URL.search(page.url).group(1) != second  # type: ignore[union-attr]
    finally:
        context.close()
    corrected, accepted = ReviewDecision.objects.order_by("id")
    assert (corrected.task_id, corrected.action) == (first.id, "correct")
    assert corrected.aus is not None and corrected.aus[str(switched)] is False
    assert (str(accepted.task.code), accepted.action) == (second, "accept")
    # Without the script nothing is claimed ahead: one face held at a time.
    assert ReviewTask.objects.filter(status="claimed").count() == 1
