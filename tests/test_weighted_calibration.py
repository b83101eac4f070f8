"""Calibration and risk-coverage figures weight references for how they were chosen.

Every flagged annotation is reviewed, while only a blind audit reaches the confident
ones; the dashboard post-stratifies by the two sides of the threshold. The figures
below are worked out by hand in each test.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from seke_app.engine import metrics, quality
from seke_app.insights.dashboards import run_calibration
from seke_app.models import GenerationRun
from tests.conftest import client_for
from tests.factories import record_decision, scripted_images
from tests.test_dashboards import annotation_row, annotations_of, make_run

TOL = 1e-9


def reviewed_run(reviewer: User, *, audits: bool) -> GenerationRun:
    """Six confident annotations (0.9), four flagged (0.5); threshold 0.7.

    All four flagged ones are reviewed: one right, three wrong. With ``audits``,
    two confident ones have a blind audit: one right, one wrong.
    """
    images = scripted_images(10)
    run = make_run(
        [annotation_row(image, confidence=0.9 if i < 6 else 0.5) for i, image in enumerate(images)]
    )
    annotations = annotations_of(run)
    confident, flagged = annotations[:6], annotations[6:]
    if audits:
        record_decision(confident[0], reviewer, audit=True)
        record_decision(confident[1], reviewer, action="correct", expression="sadness", audit=True)
    record_decision(flagged[0], reviewer)
    for annotation in flagged[1:]:
        record_decision(annotation, reviewer, action="correct", expression="sadness")
    return run


def test_it_weights_each_side_of_the_threshold(db: None, annotator: User) -> None:
    run = reviewed_run(annotator, audits=True)
    calibration = run_calibration(run=run)
    assert calibration.sources == {"audit": 2, "review": 4}
    assert [(s.name, s.n_annotations, s.n_referenced) for s in calibration.strata] == [
        ("confident", 6, 2),
        ("flagged", 4, 4),
    ]
    assert calibration.weighted and not calibration.uncovered
    current = calibration.current
    assert current is not None
    # Weighted: each audited confident annotation stands for 3, each flagged for 1.
    assert current.review_share == pytest.approx(4 / 10, abs=TOL)
    assert current.error_rate == pytest.approx(0.5, abs=TOL)
    assert (current.n_review, current.n_accepted, current.n_errors) == (4, 2, 1)
    # Reviewing nothing: (3 * 1 + 1 * 3) wrong of (3 * 2 + 1 * 4).
    assert calibration.risk[0].error_rate == pytest.approx(6 / 10, abs=TOL)
    expression = calibration.grain("expression")
    assert expression is not None
    # Bins: 0.9 right half the time (weight 6), 0.5 a quarter of the time (weight 4).
    assert expression.reliability.ece == pytest.approx(0.4 * 0.6 + 0.25 * 0.4, abs=TOL)
    unweighted = metrics.expected_calibration_error([1, 0, 1, 0, 0, 0], [0.9, 0.9] + [0.5] * 4)
    assert unweighted == pytest.approx(0.3, abs=TOL)
    assert [b.count for b in expression.reliability.bins] == [4, 2]


def test_it_says_when_a_side_has_no_reference(db: None, annotator: User, admin_user: User) -> None:
    run = reviewed_run(annotator, audits=False)
    calibration = run_calibration(run=run)
    assert calibration.uncovered == ["confident"]
    current = calibration.current
    assert current is not None and current.n_accepted == 0 and current.error_rate is None
    page = client_for(admin_user).get(reverse("run_dashboard", args=[run.code])).content.decode()
    assert 'id="uncovered-risk"' in page and "no confident annotation has a reference" in page
    assert "of the 4 scored annotations" in page


def test_the_page_names_each_kind_of_reference(db: None, annotator: User, admin_user: User) -> None:
    run = reviewed_run(annotator, audits=True)
    page = client_for(admin_user).get(reverse("run_dashboard", args=[run.code])).content.decode()
    assert "2 blind audits" in page and "4 reviews of flagged annotations" in page
    assert "2 of 6 confident annotations and 4 of 4 flagged annotations have a reference" in page
    assert "one scored confident annotation counts for 3.0" in page
    assert 'id="uncovered-risk"' not in page


def test_equal_rates_leave_every_weight_at_one() -> None:
    right, confidence = [True, False, True, True], [0.9, 0.8, 0.3, 0.2]
    plain = quality.risk_coverage(right, confidence)
    weighted = quality.risk_coverage(right, confidence, [2.0] * 4)
    assert [(p.review_share, p.error_rate) for p in plain] == [
        (p.review_share, p.error_rate) for p in weighted
    ]
    with pytest.raises(ValueError, match="negative"):
        quality.risk_coverage(right, confidence, [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="length"):
        metrics.expected_calibration_error(right, confidence, weights=[1.0])
