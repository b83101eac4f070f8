"""Run dashboards, calibration from reviews, the threshold tool and comparisons.

Every figure is built from scripted annotations and decisions whose answers are
worked out by hand in the test; the pages are checked for every role, for a
query count that does not grow with the run, and in Chromium.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from sklearn.metrics import cohen_kappa_score

from review.models import GoldQuestion
from seke_app.engine.knowledge import AU_RATES
from seke_app.insights import dashboards
from seke_app.insights.comparisons import Side, compare
from seke_app.insights.dashboards import (
    ThresholdRefused,
    run_calibration,
    run_dashboard,
    run_set_threshold,
    run_set_threshold_from_curve,
)
from seke_app.insights.references import human_references
from seke_app.models import Annotation, FaceImage, GenerationRun, PromptVersion
from seke_app.runs.prompts import prompt_version_active
from tests.browser import BrowserPage
from tests.conftest import PASSWORD, client_for
from tests.factories import record_decision, scripted_images

TOL = 1e-9


# --- Scripted data ----------------------------------------------------------------


def annotation_row(image: FaceImage, **values: Any) -> dict[str, Any]:
    """An annotation's fields: happiness at V 0.6, A 0.3 with AU6 and AU12, unless given."""
    confidence = values.pop("confidence", 0.9)
    row = {
        "image": image,
        "expression": "happiness",
        "valence": 0.6,
        "arousal": 0.3,
        "aus": {"6": True, "12": True, "4": False},
        "au_rates": {"6": 1.0, "12": 0.8, "4": 0.1},
        "expression_confidence": confidence,
        "va_confidence": confidence,
        "au_confidence": confidence,
        "confidence": confidence,
        "cost_usd": Decimal("0.001"),
    }
    row.update(values)
    return row


def make_run(
    rows: list[dict[str, Any]],
    *,
    version: PromptVersion | None = None,
    threshold: float = 0.7,
) -> GenerationRun:
    version = version or prompt_version_active()
    dataset = rows[0]["image"].dataset
    run = GenerationRun.objects.create(
        dataset=dataset,
        backend="offline",
        model_name="scripted",
        prompt_version=version,
        review_threshold=threshold,
        n_total=len(rows),
        n_done=len(rows),
        status=GenerationRun.Status.COMPLETED,
        started_at=timezone.now() - timedelta(minutes=5),
        finished_at=timezone.now(),
        cost_usd=sum((r["cost_usd"] for r in rows), Decimal(0)),
    )
    Annotation.objects.bulk_create(
        [
            Annotation(run=run, prompt_version=version, flagged=r["confidence"] < threshold, **r)
            for r in rows
        ]
    )
    return run


def annotations_of(run: GenerationRun) -> list[Annotation]:
    return list(Annotation.objects.filter(run=run).select_related("image").order_by("image_id"))


# Eight annotations with the reliability diagram of tests/test_quality.py: the
# expression is right on the first, second, third and fifth (ECE 0.15).
EXPRESSION_CONFIDENCE = [0.95, 0.95, 0.85, 0.85, 0.55, 0.55, 0.15, 0.15]
EXPRESSION_RIGHT = [True, True, True, False, True, False, False, False]


@pytest.fixture
def reviewed_run(db: None, annotator: User, teammate: User) -> GenerationRun:
    images = scripted_images(9)
    rows = [
        annotation_row(
            image,
            expression_confidence=c,
            confidence=c,
            va_confidence=0.95,
            au_confidence=0.6,
        )
        for image, c in zip(images, [*EXPRESSION_CONFIDENCE, 0.5], strict=True)
    ]
    run = make_run(rows)
    annotations = annotations_of(run)
    for annotation, right in zip(annotations, EXPRESSION_RIGHT, strict=False):
        if right:
            record_decision(annotation, annotator)
        else:
            # Only the expression corrected: the other grains are kept as they were.
            record_decision(annotation, annotator, action="correct", expression="sadness")
    # Neither an undone decision nor an answer to a gold question counts.
    record_decision(
        annotations[0], teammate, action="correct", expression="anger", kind="second", undone=True
    )
    record_decision(annotations[1], teammate, action="correct", expression="fear", kind="gold")
    # A rejected image is not scored at all.
    record_decision(annotations[8], annotator, action="reject_image", reject_reason="not a face")
    return run


# --- The figures -------------------------------------------------------------------


def test_it_counts_the_figures_of_a_scripted_run(db: None) -> None:
    images = scripted_images(6)
    rows = [
        annotation_row(images[0], confidence=0.0),
        annotation_row(images[1], confidence=0.52),
        annotation_row(images[2], confidence=1.0),
        annotation_row(images[3], expression="sadness", aus={"1": True, "4": True}, confidence=0.9),
        annotation_row(images[4], expression="sadness", aus={"1": True}, confidence=0.9),
        annotation_row(images[5], expression=None, valence=None, arousal=None, aus={}),
    ]
    run = make_run(rows, threshold=0.6)
    board = run_dashboard(run=run)
    assert board.n_annotations == 6
    overall = board.histograms["overall"]
    assert sum(overall) == 6 and overall[0] == 1 and overall[10] == 1 and overall[19] == 1
    assert overall[18] == 3
    assert dict(board.expressions) == {"happiness": 3, "sadness": 2, "no valid answer": 1}
    assert board.n_va == 5 and len(board.va_points) == 5
    assert (0.6, 0.3, "happiness") in board.va_points
    aus = {r.au: r for r in board.aus}
    # Five annotations have AUs: AU12 in the three happy ones, AU1 in both sad ones.
    assert aus[12].count == 3 and aus[12].observed == pytest.approx(3 / 5)
    assert aus[1].observed == pytest.approx(2 / 5)
    # The prior weights CK+ rates by the run's mix: 3/5 happiness, 2/5 sadness.
    expected = 0.6 * AU_RATES["happiness"][12] + 0.4 * AU_RATES["sadness"][12]
    assert aus[12].prior == pytest.approx(expected, abs=TOL)
    assert aus[1].prior == pytest.approx(0.4 * AU_RATES["sadness"][1], abs=TOL)
    assert [p.cumulative_annotations for p in board.timeline][-1] == 6
    assert board.timeline[-1].cumulative_cost_usd == pytest.approx(0.006)
    # Flagged: confidence under 0.6 (0.0, 0.52 and the empty answer's 0.9? no: 0.9).
    assert board.progress.flagged == 2 and board.progress.auto_accepted == 4
    assert board.progress.reviewed == 0 and board.progress.remaining == 2
    assert board.calibration.grains == [] and board.calibration.risk == []


def test_it_buckets_throughput_per_minute(db: None) -> None:
    images = scripted_images(6)
    run = make_run([annotation_row(image) for image in images])
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=40)
    # Over half an hour, in minute buckets: two annotations in the first minute,
    # three in the third, one in the thirty-first.
    for annotation, minute in zip(annotations_of(run), [0, 0, 2, 2, 2, 30], strict=True):
        Annotation.objects.filter(id=annotation.id).update(
            created_at=start + timedelta(minutes=minute, seconds=10)
        )
    board = run_dashboard(run=run)
    assert board.bucket == "1-minute"
    counts = [(p.annotations, p.cumulative_annotations) for p in board.timeline]
    assert counts == [(2, 2), (3, 5), (1, 6)]
    assert [p.per_minute for p in board.timeline] == [2.0, 3.0, 1.0]
    assert [p.at for p in board.timeline] == [start + timedelta(minutes=m) for m in (0, 2, 30)]
    assert [p.cumulative_cost_usd for p in board.timeline] == pytest.approx([0.002, 0.005, 0.006])


def test_it_samples_the_va_scatter_down_to_the_cap(db: None, monkeypatch: Any) -> None:
    monkeypatch.setattr(dashboards, "VA_SAMPLE_CAP", 10)
    images = scripted_images(30)
    run = make_run([annotation_row(img, valence=i / 30) for i, img in enumerate(images)])
    board = run_dashboard(run=run)
    assert board.n_va == 30 and len(board.va_points) == 10
    assert len({p[0] for p in board.va_points}) == 10
    # The sample is seeded by the run: the same on every visit.
    assert run_dashboard(run=run).va_points == board.va_points


# --- Calibration -------------------------------------------------------------------


def test_it_calibrates_each_grain_against_the_reviews(reviewed_run: GenerationRun) -> None:
    calibration = run_dashboard(run=reviewed_run).calibration
    ece = {g.grain: g.reliability.ece for g in calibration.grains}
    assert ece["expression"] == pytest.approx(0.15, abs=TOL)
    # VA and AUs were kept on every image: right 100% of the time at 0.95 and 0.6.
    assert ece["va"] == pytest.approx(0.05, abs=TOL)
    assert ece["aus"] == pytest.approx(0.4, abs=TOL)
    # Each AU at the share of samples that agreed: AU6 1.0, AU12 0.8, AU4 0.9; all right.
    assert ece["au_each"] == pytest.approx((0.0 + 0.2 + 0.1) / 3, abs=TOL)
    assert ece["overall"] == pytest.approx(0.15, abs=TOL)
    expression = calibration.grain("expression")
    assert expression is not None and expression.reliability.n == 8
    assert expression.sources == {"review": 8}
    assert [b.count for b in expression.reliability.bins] == [2, 2, 2, 2]


def test_it_traces_the_risk_coverage_curve_of_the_run(reviewed_run: GenerationRun) -> None:
    calibration = run_calibration(run=reviewed_run)
    curve = [(p.threshold, p.n_review, p.n_errors) for p in calibration.risk]
    assert curve == [(0.0, 0, 4), (0.55, 2, 2), (0.85, 4, 1), (0.95, 6, 0), (1.0, 8, 0)]
    current = calibration.current
    assert current is not None and current.threshold == 0.7
    assert current.review_share == pytest.approx(0.5) and current.error_rate == pytest.approx(0.25)


def test_it_sets_the_threshold_for_a_target_or_a_budget(reviewed_run: GenerationRun) -> None:
    point = run_set_threshold_from_curve(run=reviewed_run, target_error=0.25)
    reviewed_run.refresh_from_db()
    assert point.threshold == 0.85 and reviewed_run.review_threshold == 0.85
    point = run_set_threshold_from_curve(run=reviewed_run, review_budget=0.3)
    reviewed_run.refresh_from_db()
    assert point.threshold == 0.55 and reviewed_run.review_threshold == 0.55
    with pytest.raises(ThresholdRefused, match="either"):
        run_set_threshold_from_curve(run=reviewed_run, target_error=0.1, review_budget=0.1)
    with pytest.raises(ThresholdRefused, match="between 0 and 1"):
        run_set_threshold(run=reviewed_run, threshold=1.5)
    reviewed_run.refresh_from_db()
    assert reviewed_run.review_threshold == 0.55


def test_it_refuses_a_threshold_without_human_references(db: None) -> None:
    run = make_run([annotation_row(image) for image in scripted_images(3)])
    with pytest.raises(ThresholdRefused, match="review some first"):
        run_set_threshold_from_curve(run=run, target_error=0.1)
    run.refresh_from_db()
    assert run.review_threshold == 0.7


def test_it_prefers_gold_then_adjudication_then_agreeing_reviews(
    db: None, annotator: User, teammate: User, admin_user: User
) -> None:
    images = scripted_images(4, known_expression="neutral")
    run = make_run([annotation_row(image) for image in images])
    first, second, third, fourth = annotations_of(run)
    # Two reviews disagree on the expression and agree on VA: the expression awaits adjudication.
    record_decision(
        first, annotator, action="correct", expression="anger", valence=0.1, arousal=0.1
    )
    record_decision(
        first,
        teammate,
        action="correct",
        expression="fear",
        valence=0.15,
        arousal=0.1,
        kind="second",
    )
    # The same disagreement, settled by an admin.
    record_decision(second, annotator, action="correct", expression="anger")
    record_decision(second, teammate, action="correct", expression="fear", kind="second")
    record_decision(second, admin_user, action="correct", expression="disgust", kind="adjudication")
    # A gold question outranks the review.
    record_decision(third, annotator)
    GoldQuestion.objects.create(image=third.image, expression="contempt")
    references = human_references(Annotation.objects.filter(run=run).values("image_id"))
    disputed = references[first.image_id]
    assert disputed.labels.expression is None and disputed.labels.va == (0.1, 0.1)
    assert references[second.image_id].labels.expression == "disgust"
    gold = references[third.image_id]
    assert gold.labels.expression == "contempt" and gold.sources["expression"] == "gold"
    assert gold.sources["va"] == "review"
    assert fourth.image_id not in references
    sources = run_calibration(run=run).grain("expression")
    assert sources is not None
    # The disputed expression and the unreviewed image fall back to the dataset's label.
    assert sources.sources == {"dataset": 2, "review": 1, "gold": 1}


def test_it_measures_agreement_between_independent_reviews(
    db: None, annotator: User, teammate: User
) -> None:
    images = scripted_images(5)
    run = make_run([annotation_row(image) for image in images])
    annotations = annotations_of(run)
    firsts = ["happiness", "happiness", "sadness", "sadness"]
    seconds = ["happiness", "sadness", "sadness", "sadness"]
    for annotation, a, b in zip(annotations, firsts, seconds, strict=False):
        record_decision(
            annotation, annotator, action="correct", expression=a, valence=0.0, arousal=0.0
        )
        record_decision(
            annotation,
            teammate,
            action="correct",
            expression=b,
            valence=0.3,
            arousal=0.4,
            aus={"6": True, "12": False},
            kind="second",
        )
    record_decision(annotations[4], annotator, action="reject_image", reject_reason="blurred")
    record_decision(annotations[4], teammate, kind="second")
    agreement = run_dashboard(run=run).agreement
    assert agreement.n_pairs == 4 and agreement.n_rejected == 1
    assert agreement.expression_kappa == pytest.approx(cohen_kappa_score(firsts, seconds), abs=TOL)
    assert agreement.expression_kappa == pytest.approx(0.5, abs=TOL)
    assert agreement.va_distance == pytest.approx(0.5, abs=TOL)
    assert agreement.va_within == 0.0
    aus = {r.au: r for r in agreement.aus}
    # AU12 kept by every first review (machine: present), cleared by every second one.
    assert aus[12].observed_agreement == 0.0 and aus[12].prevalence == pytest.approx(0.5)
    assert aus[6].observed_agreement == 1.0


# --- Comparisons -------------------------------------------------------------------


def test_it_compares_two_runs_on_the_images_both_annotated(
    db: None, annotator: User, admin_user: User
) -> None:
    images = scripted_images(6)
    a_expressions = ["happiness", "happiness", "sadness", "sadness", "anger", "fear"]
    b_expressions = ["happiness", "sadness", "sadness", "sadness", "anger"]
    run_a = make_run(
        [annotation_row(i, expression=e) for i, e in zip(images, a_expressions, strict=True)]
    )
    run_b = make_run(
        [
            annotation_row(i, expression=e, valence=0.6, arousal=0.7, cost_usd=Decimal("0.003"))
            for i, e in zip(images, b_expressions, strict=False)
        ]
    )
    # Humans decided three images, all on run A: A right on two, wrong on one.
    a_annotations = annotations_of(run_a)
    record_decision(a_annotations[0], annotator)
    record_decision(a_annotations[1], annotator, action="correct", expression="sadness")
    record_decision(a_annotations[2], annotator)
    # Gold questions on two more: both sides right on image 4, both wrong on image 3.
    GoldQuestion.objects.create(image=images[4], expression="anger")
    GoldQuestion.objects.create(image=images[3], expression="fear")
    result = compare(a=Side.of_run(run_a), b=Side.of_run(run_b))
    agreement = result.agreement
    assert agreement.n_shared == 5
    assert agreement.expression_kappa == pytest.approx(
        cohen_kappa_score(a_expressions[:5], b_expressions), abs=TOL
    )
    assert agreement.expression_agreement == pytest.approx(4 / 5)
    # Arousal 0.3 against 0.7 everywhere: distance 0.4, never within 0.2.
    assert agreement.va_distance == pytest.approx(0.4, abs=TOL) and agreement.va_within == 0.0
    assert agreement.aus_all_equal == 1.0
    assert result.a.accuracy["expression"] == pytest.approx((5, 3 / 5))
    # B said sadness on image 1 as the reviewer did: right on all three reviewed images.
    assert result.b.accuracy["expression"] == pytest.approx((5, 4 / 5))
    assert result.a.gold_accuracy["expression"] == (2, 0.5)
    assert result.b.gold_accuracy["expression"] == (2, 0.5)
    # Only the reviews have valence-arousal: A's own, which B's arousal misses by 0.4.
    assert result.b.accuracy["va"] == (3, 0.0) and result.a.accuracy["va"] == (3, 1.0)
    assert result.a.cost_per_annotation == pytest.approx(0.001)
    assert result.b.cost_per_annotation == pytest.approx(0.003)
    rows = {r["grain"]: r for r in result.ece_rows()}
    assert rows["expression"]["a"] == pytest.approx(abs(3 / 5 - 0.9), abs=TOL)
    assert result.chart_data()["grains"][0]["sides"][0] is not None
    codes = {"a": str(run_a.code), "b": str(run_b.code)}
    page = client_for(admin_user).get(reverse("compare"), codes)
    html = page.content.decode()
    assert 'id="gold-a-expression">50.0%' in html and 'id="acc-b-expression">80.0%' in html
    assert 'id="compare-kappa">' in html and "images both annotated" in html


def test_it_compares_two_prompt_versions_through_their_runs(db: None) -> None:
    images = scripted_images(4)
    v1 = prompt_version_active()
    v2 = PromptVersion.objects.create(
        number=2, name="revised", knowledge_text="k", fingerprint="f", parent=v1
    )
    make_run([annotation_row(i, expression="sadness") for i in images[:2]], version=v1)
    # A later run of v1 re-annotated image 0: only its latest annotation counts.
    make_run([annotation_row(images[0], expression="happiness")], version=v1)
    make_run([annotation_row(i) for i in images[:3]], version=v2)
    result = compare(a=Side.of_version(v1), b=Side.of_version(v2))
    assert result.a.n_annotations == 2 and result.b.n_annotations == 3
    assert result.agreement.n_shared == 2
    assert result.agreement.expression_agreement == pytest.approx(1 / 2)


# --- Pages -------------------------------------------------------------------------


ALLOWED = {"anonymous": False, "outsider": False, "annotator": False, "admin": True}


@pytest.mark.parametrize("role", list(ALLOWED))
def test_it_lets_only_admins_see_and_use_the_dashboards(
    role: str,
    reviewed_run: GenerationRun,
    outsider: User,
    annotator: User,
    admin_user: User,
) -> None:
    user = {"anonymous": None, "outsider": outsider, "annotator": annotator, "admin": admin_user}[
        role
    ]
    client = client_for(user)
    other = make_run([annotation_row(image) for image in scripted_images(2, name="other")])
    pages = [
        ("get", reverse("run_dashboard", args=[reviewed_run.code]), {}),
        ("get", reverse("compare"), {}),
        ("get", reverse("compare"), {"a": reviewed_run.code, "b": other.code}),
        (
            "post",
            reverse("run_threshold", args=[reviewed_run.code]),
            {"by": "error", "percent": 25},
        ),
    ]
    for method, url, data in pages:
        response = getattr(client, method)(url, data)
        if ALLOWED[role]:
            assert response.status_code == (302 if method == "post" else 200), url
        elif user is None:
            assert response.status_code == 302 and "/login/" in response["Location"], url
        else:
            assert response.status_code == 403, (role, url)
    reviewed_run.refresh_from_db()
    assert reviewed_run.review_threshold == (0.85 if ALLOWED[role] else 0.7)


def test_it_shows_the_dashboard_with_its_figures(
    reviewed_run: GenerationRun, admin_user: User
) -> None:
    client = client_for(admin_user)
    page = client.get(reverse("run_dashboard", args=[reviewed_run.code])).content.decode()
    assert "/static/plotly/plotly.min.js" in page and "/static/js/dashboard.js" in page
    assert 'id="dashboard-data"' in page
    for chart in ("progress", "conf-expression", "expressions", "va", "aus", "timeline", "risk"):
        assert f'id="chart-{chart}"' in page
    for grain in ("expression", "va", "aus", "au_each", "overall"):
        assert f'id="chart-reliability-{grain}"' in page
    assert re.search(r'id="ece-expression">0\.150<', page)
    assert "This affects the curation of accepted labels" in page
    detail = client.get(reverse("run_detail", args=[reviewed_run.code])).content.decode()
    assert reverse("run_dashboard", args=[reviewed_run.code]) in detail
    assert reverse("compare") in client.get(reverse("home")).content.decode()


def test_it_never_scores_a_grain_the_model_was_given_against_the_dataset(
    admin_user: User, annotator: User
) -> None:
    # The prompt gave the model each image's known expression (happiness); it copied it.
    images = scripted_images(6, known_expression="happiness", known_valence=0.6, known_arousal=0.3)
    run = make_run([annotation_row(image, known_grains=["expression"]) for image in images])
    calibration = run_dashboard(run=run).calibration
    assert calibration.grain("expression") is None and calibration.given == {"expression": 6}
    va = calibration.grain("va")
    assert va is not None and va.sources == {"dataset": 6}
    # The risk-coverage curve rests on the grains that have a reference: VA alone.
    assert calibration.n_scored == 6
    record_decision(annotations_of(run)[0], annotator, action="correct", expression="fear")
    expression = run_calibration(run=run).grain("expression")
    assert expression is not None and expression.sources == {"review": 1}
    page = client_for(admin_user).get(reverse("run_dashboard", args=[run.code])).content.decode()
    assert "expression on 6 annotations" in page


def test_it_sets_the_threshold_from_the_page(reviewed_run: GenerationRun, admin_user: User) -> None:
    client = client_for(admin_user)
    url = reverse("run_threshold", args=[reviewed_run.code])
    response = client.post(url, {"by": "budget", "percent": 30}, follow=True)
    assert "from 0.700 to 0.550" in response.content.decode()
    response = client.post(url, {"by": "error", "percent": 150}, follow=True)
    assert "Not changed" in response.content.decode()
    assert client.get(url).status_code == 405
    reviewed_run.refresh_from_db()
    assert reviewed_run.review_threshold == 0.55


def test_it_explains_a_bad_comparison(admin_user: User, reviewed_run: GenerationRun) -> None:
    client = client_for(admin_user)
    code = str(reviewed_run.code)

    def compare_page(**params: str) -> str:
        return client.get(reverse("compare"), params).content.decode()

    assert "Choose both runs." in compare_page(a=code)
    page = compare_page(a="not-a-code", b=code)
    assert "is not a valid UUID" in page and "Choose both runs." not in page
    assert "Select a valid choice" in compare_page(a="00000000-0000-0000-0000-000000000000", b=code)
    version = str(reviewed_run.prompt_version.code)
    versions = client.get(reverse("compare"), {"va": version, "vb": version})
    assert versions.status_code == 200 and 'id="compare-table"' in versions.content.decode()


def _dashboard_queries(admin_user: User, n: int) -> int:
    images = scripted_images(n, name=f"size-{n}")
    run = make_run([annotation_row(img, confidence=(i % 10) / 10) for i, img in enumerate(images)])
    reviewer = User.objects.create_user(f"reviewer-{n}")
    for annotation in annotations_of(run)[: n // 2]:
        record_decision(annotation, reviewer)
    client = client_for(admin_user)
    url = reverse("run_dashboard", args=[run.code])
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_it_does_not_query_more_for_a_bigger_run(admin_user: User) -> None:
    assert _dashboard_queries(admin_user, 10) == _dashboard_queries(admin_user, 200)


# --- In the browser ----------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_it_draws_every_chart_in_the_browser(
    browser_page: BrowserPage, live_server: Any, annotator: User, teammate: User, admin_user: User
) -> None:
    images = scripted_images(40)
    rows = [
        annotation_row(
            image,
            expression=("happiness", "sadness", "anger", "surprise")[i % 4],
            valence=(i % 9) / 10 - 0.4,
            arousal=(i % 7) / 10 - 0.3,
            confidence=(i % 20) / 20,
        )
        for i, image in enumerate(images)
    ]
    run = make_run(rows)
    other = make_run([annotation_row(image, confidence=0.8) for image in images[:30]])
    for i, annotation in enumerate(annotations_of(run)[:24]):
        if i % 3:
            record_decision(annotation, annotator)
        else:
            record_decision(annotation, annotator, action="correct", expression="fear")
        if i < 6:
            record_decision(annotation, teammate, kind="second")
    page = browser_page.page
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")
    # The dashboard: progress, timeline, four histograms, expressions, VA, AUs, five
    # reliability diagrams and the risk-coverage curve. The comparison: five and one.
    for url, n_charts in (
        (f"{live_server.url}{reverse('run_dashboard', args=[run.code])}", 15),
        (f"{live_server.url}{reverse('compare')}?a={run.code}&b={other.code}", 6),
    ):
        page.goto(url)
        charts = page.locator("div.chart")
        assert charts.count() == n_charts
        for i in range(charts.count()):
            chart = charts.nth(i)
            chart.locator(".main-svg").first.wait_for(state="attached")
            assert chart.locator(".main-svg").count() >= 1, chart.get_attribute("id")
