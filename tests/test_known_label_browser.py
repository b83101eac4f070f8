"""In Chromium: a face that comes with its known expression is reviewed as such.

The offline annotator completes valence-arousal and AUs around the known
expression; the review page marks the expression as given by the dataset, the AUs
as inferred from it, and raises no contradiction with the label it was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from seke_app.models import Annotation
from seke_app.roles import user_create
from tests.browser import BrowserPage
from tests.review_runs import reviewable_run
from tests.test_review_browser import PASSWORD, log_in, start_reviewing
from tests.workers import emptied_queue

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

_own_queue = emptied_queue("generation")


def test_a_known_expression_is_shown_as_given_with_the_completed_grains(
    live_server: Any, browser_page: BrowserPage, tmp_path: Path
) -> None:
    # A threshold of 1.0 sends the completed grains to review whatever their confidence.
    reviewable_run(tmp_path, n=1, known_expression="happiness")
    annotation = Annotation.objects.get()
    assert annotation.expression == "happiness" and annotation.known_grains == ["expression"]

    user_create(username="ann", password=PASSWORD, role="annotator")
    page = browser_page.page
    log_in(page, live_server.url, "ann")
    page.click("nav >> text=Review queue")
    start_reviewing(page)
    assert page.inner_text("#provenance-expression") == "given by the dataset"
    assert page.inner_text("#provenance-va") == "predicted by the model"
    assert page.inner_text("#provenance-aus") == "inferred from the expression"
    # The completed grains are there: VA values and the AUs happiness makes likely.
    valence = float(page.input_value("input[name=valence]"))
    assert valence > 0.3
    assert page.is_checked("input[name=au_12]")
    text = page.inner_text("main")
    assert "contradict" not in text and "disputed" not in text
    assert browser_page.console_errors == []
