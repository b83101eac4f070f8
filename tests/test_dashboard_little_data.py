"""The dashboard with little data: time buckets and axes chosen from the data, and an
agreement table that shows what can be computed and says why the rest cannot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.template.loader import render_to_string
from django.utils import timezone

from seke_app.insights.agreement import AgreementTally, GrainAgreement
from seke_app.insights.dashboards import run_dashboard
from seke_app.insights.references import Labels
from seke_app.insights.timeline import MOST_BUCKETS, bucket_for, bucket_start
from seke_app.models import Annotation
from tests.factories import scripted_images
from tests.test_dashboards import annotation_row, annotations_of, make_run


@pytest.mark.parametrize(
    ("span", "name"),
    [
        (timedelta(0), "5-second"),
        (timedelta(minutes=1), "5-second"),
        (timedelta(minutes=10), "30-second"),
        (timedelta(hours=2), "5-minute"),
        (timedelta(days=3), "2-hour"),
        (timedelta(days=400), "7-day"),
    ],
)
def test_it_cuts_the_span_of_the_data_into_a_few_dozen_buckets(span: timedelta, name: str) -> None:
    bucket = bucket_for(span)
    assert bucket.name == name
    assert span.total_seconds() / bucket.seconds < MOST_BUCKETS or name == "7-day"


def test_buckets_start_on_round_local_times() -> None:
    moment = datetime(2026, 12, 6, 0, 31, 7, tzinfo=UTC)
    with timezone.override("UTC"):
        assert bucket_start(moment, bucket_for(timedelta(minutes=5))).second == 0
        ten = bucket_start(moment, bucket_for(timedelta(minutes=6)))
        assert (ten.minute, ten.second) == (31, 0)
    with timezone.override("Asia/Kolkata"):
        day = bucket_start(moment, bucket_for(timedelta(days=30)))
        assert (day.hour, day.minute) == (0, 0) and day.utcoffset() == timedelta(
            hours=5, minutes=30
        )


@pytest.mark.django_db
def test_a_minute_of_data_gets_bars_of_seconds_each_at_its_own_time() -> None:
    images = scripted_images(12)
    run = make_run([annotation_row(image, cost_usd=Decimal(0)) for image in images])
    start = timezone.now().replace(microsecond=0) - timedelta(minutes=2)
    for i, annotation in enumerate(annotations_of(run)):
        Annotation.objects.filter(id=annotation.id).update(
            created_at=start + timedelta(seconds=5 * i)
        )
    board = run_dashboard(run=run)
    assert board.bucket == "5-second"
    assert len(board.timeline) >= 11 and len({p.at for p in board.timeline}) == len(board.timeline)
    assert sum(p.annotations for p in board.timeline) == 12
    assert all(p.per_minute == 12.0 * p.annotations for p in board.timeline)
    assert board.chart_data()["bucket"] == "5-second"
    assert board.timeline[-1].cumulative_cost_usd == 0.0


def agreement(pairs: list[tuple[dict[int, bool], dict[int, bool]]]) -> GrainAgreement:
    tally, result = AgreementTally(), GrainAgreement()
    for a, b in pairs:
        tally.add(Labels(aus=a), Labels(aus=b))
    tally.fill(result)
    return result


def test_the_au_table_shows_what_can_be_computed_and_says_why_the_rest_cannot() -> None:
    # AU1 and AU2 absent and AU25 present in every answer of both; AU12 varies.
    pairs = [
        ({1: False, 2: False, 12: True, 25: True}, {1: False, 2: False, 12: True, 25: True}),
        ({1: False, 2: False, 12: False, 25: True}, {1: False, 2: False, 12: False, 25: True}),
        ({1: False, 2: False, 12: True, 25: True}, {1: False, 2: False, 12: False, 25: True}),
    ]
    result = agreement(pairs)
    assert [row.au for row in result.aus_with_kappa] == [12]
    assert result.aus_without_kappa == {"absent": [1, 2], "present": [25]}
    html = render_to_string(
        "insights/_grain_agreement.html", {"ag": result, "kappa_id": "k", "unit": "images"}
    )
    assert "undefined" not in html
    assert html.count("<tr><td>AU") == 1 and "<td>AU12</td>" in html
    assert (
        "No kappa for AU1, AU2 (absent in every answer on both sides) and AU25 (present in"
        " every answer on both sides)"
    ) in html


def test_with_no_au_that_varies_there_is_no_table_only_the_reason() -> None:
    result = agreement([({1: False}, {1: False}), ({1: False}, {1: False})])
    html = render_to_string("insights/_grain_agreement.html", {"ag": result, "unit": "pairs"})
    assert "<table" not in html and "No kappa for AU1 (absent in every answer" in html
    assert "Kappa needs an AU that is present on some pairs and absent on others." in html
