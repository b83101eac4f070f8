"""Certified auto-accept thresholds: certification on blind audits, more audits, the card."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.models import ReviewDecision, ReviewTask
from review.tasks.services import (
    Decision,
    QueueFilter,
    decision_record,
    queue_tasks,
    task_claim_next,
    task_create_for,
)
from seke_app.engine.calibration import CalibrationMap
from seke_app.exports.options import ExportOptions
from seke_app.exports.services import export_create
from seke_app.insights import certificates
from seke_app.insights.certificates import (
    CertificateRefused,
    Targets,
    _monotone,
    audit_rows,
    calibration_current,
    calibration_fit,
    run_audits_request,
    run_certificate_latest,
    run_certify,
    run_quality,
    run_recalibration,
)
from seke_app.models import Annotation, CalibrationFit, GenerationRun, RunCertificate, RunItem
from seke_app.models.runs import ThresholdChange, confident
from seke_app.queue import get_queue
from tests.conftest import client_for
from tests.factories import record_decision
from tests.test_curation import annotate, make_images, make_run
from tests.workers import work_in_process

pytestmark = pytest.mark.django_db

EXPRESSION = Targets(grains=("expression",), alpha=0.1, delta=0.1)


@pytest.fixture(autouse=True)
def _no_gold(settings: Any) -> None:
    settings.GOLD_RATE = 0.0


def audit(annotation: Annotation, reviewer: User, **values: Any) -> ReviewDecision:
    """A blind audit decision on the annotation (the reviewer labels every grain)."""
    labels = {"expression": "happiness", "valence": 0.6, "arousal": 0.2, "aus": {}}
    decision = record_decision(annotation, reviewer, "correct", **{**labels, **values})
    ReviewDecision.objects.filter(id=decision.id).update(audit=True)
    ReviewTask.objects.filter(id=decision.task_id).update(audit=True)
    RunItem.objects.update_or_create(
        run=annotation.run, image=annotation.image, defaults={"audit": True}
    )
    return decision


def audited_run(
    reviewer: User, n: int = 300, every: int = 2, wrong_below: float = 0.4, **fields: Any
) -> tuple[GenerationRun, list[Annotation]]:
    """``n`` annotations of overall confidence i/n, every ``every``-th audited blind.

    The machine says happiness everywhere; the audit says so where its confidence is
    at least ``wrong_below`` and sadness under it.
    """
    dataset, images = make_images(n, name=f"cert{n}")
    run = make_run(dataset)
    GenerationRun.objects.filter(id=run.id).update(review_threshold=0.7)
    run.refresh_from_db()
    annotations = []
    for i, image in enumerate(images):
        # ``annotate`` stores an overall confidence 0.2 under the one it is given.
        annotation = annotate(image, run, confidence=i / n + 0.2)
        if fields:
            Annotation.objects.filter(id=annotation.id).update(**fields)
        annotations.append(annotation)
        RunItem.objects.create(run=run, image=image, status=RunItem.Status.DONE)
        if i % every == 0:
            truth = "happiness" if annotation.confidence >= wrong_below else "sadness"
            audit(annotation, reviewer, expression=truth)
    return run, annotations


def test_it_certifies_a_threshold_and_sets_it_as_an_operation(
    annotator: User, admin_user: User
) -> None:
    run, _ = audited_run(annotator)
    certificate = run_certify(run=run, targets=EXPRESSION, user=admin_user)
    assert certificate.certified and certificate.threshold is not None
    # Every audited error lies under 0.4; the certified threshold keeps most of them out.
    assert 0.3 <= certificate.threshold < 0.6
    assert certificate.upper_bound is not None and certificate.upper_bound <= 0.1
    assert certificate.n_references == 150 and certificate.n_accepted_references > 50
    assert certificate.model_name == "gpt-4o" and certificate.prompt_version == run.prompt_version
    run.refresh_from_db()
    assert run.review_threshold == certificate.threshold
    change = run.threshold_changes.get()
    assert (change.source, change.changed_by, certificate.change) == (
        ThresholdChange.Source.CERTIFICATE,
        admin_user,
        change,
    )
    assert certificate.in_force()
    accepted = Annotation.objects.filter(run=run).filter(confident()).count()
    assert run.n_accepted == accepted
    assert certificate.coverage == pytest.approx(accepted / 300)
    # The annotations under the certified threshold, not audited, went to review.
    waiting = ReviewTask.objects.filter(annotation__run=run, status="open", audit=False)
    under = Annotation.objects.filter(run=run).exclude(confident())
    assert waiting.count() == under.exclude(image__run_items__audit=True).count() > 0
    assert "certified" in certificate.sentence() and "Learn then Test" in certificate.sentence()


def test_it_rests_only_on_blind_audits(annotator: User, teammate: User) -> None:
    run, annotations = audited_run(annotator)
    first = run_certify(run=run, targets=EXPRESSION)
    # Reviews that are not audits, all saying the confident machine labels are wrong,
    # change nothing: they were not drawn at random.
    for annotation in annotations[201::2]:
        record_decision(annotation, teammate, "correct", expression="anger")
    second = run_certify(run=run, targets=EXPRESSION)
    assert (second.threshold, second.n_references) == (first.threshold, first.n_references)


def test_it_says_how_many_more_audits_are_needed_and_opens_them(
    annotator: User, admin_user: User
) -> None:
    run, _ = audited_run(annotator, n=100, every=5, wrong_below=0.0)
    certificate = run_certify(run=run, targets=EXPRESSION, user=admin_user)
    assert not certificate.certified and certificate.n_references == 20
    assert certificate.more_needed is not None and certificate.more_needed > 0
    assert "more blind audit reviews would be needed" in certificate.sentence()
    run.refresh_from_db()
    assert run.review_threshold == 0.7 and not run.threshold_changes.exists()
    opened = run_audits_request(run=run, n=10)
    assert opened == 10
    tasks = ReviewTask.objects.filter(annotation__run=run, status="open")
    assert tasks.count() == 10 and all(t.audit for t in tasks)
    assert RunItem.objects.filter(run=run, audit=True).count() == 30
    # A second request draws among the images not audited yet.
    assert run_audits_request(run=run, n=1000) == 70
    with pytest.raises(CertificateRefused):
        run_audits_request(run=run, n=0)


def test_it_never_scores_a_grain_given_as_a_known_label(annotator: User) -> None:
    # The audit says the expression is wrong everywhere, but the model was given
    # the expression as a known label: only valence-arousal is scored.
    run, _ = audited_run(annotator, wrong_below=2.0, known_grains=["expression"])
    with pytest.raises(CertificateRefused, match="no annotation"):
        run_certify(run=run, targets=EXPRESSION)
    both = Targets(grains=("expression", "va"), alpha=0.1, delta=0.1)
    certificate = run_certify(run=run, targets=both)
    assert certificate.certified and certificate.errors_accepted == 0
    assert certificate.n_given == certificate.n_references == 150
    assert all(row.right["expression"] is None for row in audit_rows(run))


def test_it_counts_rejected_images_and_unticked_aus_against_the_machine(annotator: User) -> None:
    dataset, images = make_images(3, name="strict")
    run = make_run(dataset)
    rejected = annotate(images[0], run)
    record_decision(rejected, annotator, "reject_image", reject_reason="not a face")
    ReviewDecision.objects.filter(annotation=rejected).update(audit=True)
    RunItem.objects.create(run=run, image=images[0], audit=True)
    with_aus = annotate(images[1], run, aus={"12": True})
    audit(with_aus, annotator, aus={})
    without = annotate(images[2], run, aus={"12": False})
    audit(without, annotator, aus={})
    rows = {row.annotation_id: row for row in audit_rows(run)}
    assert rows[rejected.id].right == {"expression": False, "va": False, "aus": False}
    # A blind audit that ticks no AU says none is present, whatever the machine said.
    assert rows[with_aus.id].right["aus"] is False
    assert rows[without.id].right["aus"] is True


def earlier_and_drawn(annotator: User) -> tuple[GenerationRun, dict[str, Annotation]]:
    """Three images another run met first, then drawn for a new run's audit.

    ``decided``: the other run's review (not blind) said sadness; ``waiting``: the
    other run's review task was still open; ``fresh``: nothing yet.
    """
    dataset, images = make_images(3, name="met-before")
    other = make_run(dataset)
    GenerationRun.objects.filter(id=other.id).update(review_threshold=0.7)
    earlier = {}
    for name, image in zip(("decided", "waiting", "fresh"), images, strict=True):
        earlier[name] = annotate(image, other, confidence=0.5)
    record_decision(earlier["decided"], annotator, "correct", expression="sadness")
    task_create_for(Annotation.objects.select_related("run").get(id=earlier["waiting"].id))
    run = make_run(dataset, model_name="gpt-4.1")
    drawn = {}
    for name, image in zip(("decided", "waiting", "fresh"), images, strict=True):
        RunItem.objects.create(run=run, image=image, audit=True)
        drawn[name] = annotate(image, run, confidence=0.9)
        task_create_for(Annotation.objects.select_related("run").get(id=drawn[name].id))
    return run, drawn


def decide_blind(task: ReviewTask, reviewer: User, expression: str) -> None:
    claimed = task_claim_next(user=reviewer, queue_filter=QueueFilter(exclude_ids=()))
    assert claimed == task and claimed.audit
    labels = Decision("correct", expression, valence=0.5, arousal=0.1, aus={})
    decision_record(task=claimed, user=reviewer, decision=labels)


def test_it_keeps_audited_images_that_already_had_a_decision_or_a_task(
    annotator: User, admin_user: User
) -> None:
    run, drawn = earlier_and_drawn(annotator)
    # One image, one review: only the fresh image got an audit task of the run, and
    # the other run's waiting task was made blind.
    own = ReviewTask.objects.get(annotation__run=run)
    waiting = ReviewTask.objects.get(annotation__image=drawn["waiting"].image, status="open",
                                     audit=True, annotation__run__model_name="gpt-4o")  # fmt: skip
    assert own.annotation == drawn["fresh"] and own.audit
    # Until the waiting task is decided, its image is no reference yet.
    assert {r.annotation_id for r in audit_rows(run)} == {drawn["decided"].id}
    ReviewTask.objects.filter(id=own.id).update(priority=2.0)
    decide_blind(waiting, annotator, "sadness")
    decide_blind(own, annotator, "happiness")
    rows = {r.annotation_id: r for r in audit_rows(run)}
    assert set(rows) == {a.id for a in drawn.values()}
    found = {name: (rows[a.id].earlier, rows[a.id].blind, rows[a.id].right["expression"])
             for name, a in drawn.items()}  # fmt: skip
    assert found == {
        "decided": (True, False, False),
        "waiting": (True, True, False),
        "fresh": (False, True, True),
    }
    certificate = run_certify(run=run, targets=EXPRESSION, user=admin_user)
    assert certificate.n_references == 3
    assert (certificate.n_earlier, certificate.n_earlier_blind) == (2, 1)
    page = client_for(admin_user).get(reverse("run_dashboard", args=[run.code])).content.decode()
    assert "2 of the audited images already had a decision or a waiting review" in page
    assert "of those, 1 rest on blind reviews only" in page
    # A certified one says it too, wherever its sentence is printed (the card).
    RunCertificate.objects.filter(id=certificate.id).update(threshold=0.5, upper_bound=0.1)
    certificate.refresh_from_db()
    said = "3 audit references, 2 of them decisions the image already had when the run drew it"
    assert f"{said}, 1 of those blind)" in certificate.sentence()


def test_it_draws_more_audits_among_decided_images_too(annotator: User) -> None:
    dataset, images = make_images(10, name="more-audits")
    run = make_run(dataset)
    annotations = []
    for image in images:
        annotations.append(annotate(image, run))
        RunItem.objects.create(run=run, image=image)
    for annotation in annotations[:5]:
        record_decision(annotation, annotator, "correct", expression="anger")
    assert run_audits_request(run=run, n=10) == 10
    assert RunItem.objects.filter(run=run, audit=True).count() == 10
    # Decided images keep their one review and serve as references at once.
    tasks = ReviewTask.objects.filter(annotation__run=run, status="open")
    assert tasks.count() == 5 and all(t.audit for t in tasks)
    rows = audit_rows(run)
    assert {r.annotation_id for r in rows} == {a.id for a in annotations[:5]}
    assert all(r.earlier and not r.blind and r.right["expression"] is False for r in rows)


def test_it_refuses_bad_targets() -> None:
    for bad in (
        {"grains": (), "alpha": 0.1, "delta": 0.1},
        {"grains": ("mood",), "alpha": 0.1, "delta": 0.1},
        {"grains": ("va",), "alpha": 0.0, "delta": 0.1},
        {"grains": ("va",), "alpha": 0.1, "delta": 1.0},
        {"grains": ("va",), "alpha": 0.1, "delta": 0.1, "va_distance": 0.0},
    ):
        with pytest.raises(CertificateRefused):
            Targets(**bad)


def test_it_belongs_to_its_run_model_and_prompt_version(annotator: User) -> None:
    run, _ = audited_run(annotator)
    run_certify(run=run, targets=EXPRESSION)
    other = make_run(run.dataset, model_name="another-model")
    assert run_certificate_latest(other) is None
    assert run_quality(other).note.startswith("No certificate: this run was never certified")


def test_it_is_no_longer_in_force_after_a_change_by_hand(annotator: User) -> None:
    from seke_app.runs.threshold import run_threshold_set

    run, _ = audited_run(annotator)
    certificate = run_certify(run=run, targets=EXPRESSION)
    run_threshold_set(run=run, threshold=0.1)
    certificate.refresh_from_db()
    assert not certificate.in_force()
    quality = run_quality(run)
    assert quality.certificate is None and "changed after the last certificate" in quality.note


def test_it_states_ppi_and_audit_only_intervals(annotator: User) -> None:
    run, _ = audited_run(annotator)
    run_certify(run=run, targets=EXPRESSION)
    quality = run_quality(run)
    assert quality.certificate is not None and quality.n_audit == 150
    accuracy = {s.what: s for s in quality.accuracy}["accuracy of accepted expression"]
    assert accuracy.ppi is not None and accuracy.classical is not None
    # The audited errors lie under 0.4, mostly under the certified threshold.
    assert accuracy.classical.estimate > 0.9 and accuracy.ppi.n_unlabelled > 0
    shares = {s.what: s for s in quality.distribution}
    sadness = shares["share of sadness"]
    assert sadness.ppi is not None and sadness.classical is not None
    assert sadness.classical.covers(0.4) and sadness.ppi.covers(0.4)


def test_it_offers_as_many_more_audits_as_a_nearly_error_free_audit_needs(
    annotator: User, admin_user: User
) -> None:
    # Twenty audit references over the run's confidences, only the most confident wrong.
    run, annotations = audited_run(annotator, n=100, every=5, wrong_below=0.0)
    ReviewDecision.objects.filter(annotation=annotations[95]).update(expression="sadness")
    client = client_for(admin_user)
    data = {"grains": ["expression"], "alpha": "20", "confidence": "95", "va_distance": "0.2"}
    page = client.post(reverse("run_certify", args=[run.code]), data, follow=True).content.decode()
    certificate = RunCertificate.objects.get()
    assert not certificate.certified and certificate.n_references == 20
    assert certificate.needed is not None and 20 < certificate.needed <= 100
    more = certificate.needed - 20
    assert f"about {more} more blind audit reviews would be needed" in page
    assert f'value="{more}" required id="id_n"' in page


# --- Pages -----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["annotator", "outsider", None])
def test_it_lets_only_admins_certify_and_open_audits(
    who: str | None, request: pytest.FixtureRequest
) -> None:
    dataset, images = make_images(4, name="guarded")
    run = make_run(dataset)
    for image in images:
        annotate(image, run)
    user = request.getfixturevalue(who) if who else None
    client = client_for(user)
    targets = {"grains": ["expression"], "alpha": "20", "confidence": "95", "va_distance": "0.2"}
    client.post(reverse("run_certify", args=[run.code]), targets)
    client.post(reverse("run_audits", args=[run.code]), {"n": "2"})
    assert not RunCertificate.objects.exists() and not ReviewTask.objects.exists()


def test_it_certifies_from_the_dashboard_and_refuses_bad_input(
    annotator: User, admin_user: User
) -> None:
    run, _ = audited_run(annotator)
    client = client_for(admin_user)
    url = reverse("run_certify", args=[run.code])
    page = client.post(url, {"grains": ["expression"], "alpha": "0", "confidence": "95",
                             "va_distance": "0.2"}, follow=True).content.decode()  # fmt: skip
    assert "Not certified" in page and not RunCertificate.objects.exists()
    page = client.post(url, {"alpha": "10", "confidence": "90", "va_distance": "0.2"}, follow=True)
    assert "Choose at least one grain" in page.content.decode()
    data = {"grains": ["expression"], "alpha": "10", "confidence": "90", "va_distance": "0.2"}
    page = client.post(url, data, follow=True).content.decode()
    certificate = RunCertificate.objects.get()
    assert "certified" in page and 'id="certificate-in-force"' in page
    run_page = client.get(reverse("run_detail", args=[run.code])).content.decode()
    assert f"Threshold {certificate.threshold:.3f} certified" in run_page
    assert 'id="certify-form"' not in run_page


def test_it_offers_more_audits_when_nothing_is_certified(annotator: User, admin_user: User) -> None:
    run, _ = audited_run(annotator, n=100, every=5, wrong_below=0.0)
    client = client_for(admin_user)
    data = {"grains": ["expression"], "alpha": "10", "confidence": "90", "va_distance": "0.2"}
    page = client.post(reverse("run_certify", args=[run.code]), data, follow=True).content.decode()
    assert 'id="audits-form"' in page and "more blind audit reviews would be needed" in page
    page = client.post(reverse("run_audits", args=[run.code]), {"n": "x"}, follow=True)
    assert (
        "Nothing opened" in page.content.decode()
        and not ReviewTask.objects.filter(status="open").exists()
    )
    page = client.post(reverse("run_audits", args=[run.code]), {"n": "3"}, follow=True)
    assert "3 images drawn at random from this run added to the blind audit" in (
        page.content.decode()
    )


# --- The dataset card ------------------------------------------------------------------


@pytest.fixture
def exports_queue() -> Iterator[None]:
    queue = get_queue("exports")
    queue.empty()
    yield
    queue.empty()


@pytest.mark.django_db(transaction=True)
def test_it_prints_the_certificate_in_the_export_card(annotator: User, exports_queue: None) -> None:
    run, _ = audited_run(annotator)
    certificate = run_certify(run=run, targets=EXPRESSION)
    assert certificate.certified and certificate.threshold is not None
    never = make_run(run.dataset, model_name="uncertified")
    image = run.dataset.images.order_by("id").last()
    assert image is not None
    annotate(image, never, confidence=1.1)
    export = export_create(dataset=run.dataset, kind="feid", options=ExportOptions())
    work_in_process("exports")
    export.refresh_from_db()
    assert export.status == "done", export.error
    path = export.absolute_path()
    assert path is not None
    with zipfile.ZipFile(path) as archive:
        card = archive.read("README.md").decode()
    assert "## Certified quality of the machine labels" in card
    assert f"Threshold {certificate.threshold:.3f} certified" in card
    assert f"Run {run.code}" in card and "PPI++ (95 %)" in card
    assert "accuracy of accepted expression" in card and "share of sadness" in card
    # The other run's machine label is exported too, and the card says it has none.
    assert f"Run {never.code}" in card and "this run was never certified" in card


# --- Recalibration ---------------------------------------------------------------------


def test_it_fits_a_calibration_map_per_model_and_prompt_version(
    annotator: User, admin_user: User
) -> None:
    run, annotations = audited_run(annotator)
    run_certify(run=run, targets=EXPRESSION, user=admin_user)
    fit = calibration_current(run)
    assert fit is not None and fit.n_references == 150 and fit.grains == ["expression"]
    mapped = CalibrationMap.from_json(fit.calibration).apply([0.1, 0.35, 0.5, 0.9])
    # The audit says wrong under 0.4 and right above it.
    assert mapped[0] < 0.2 and mapped[2] > 0.8 and list(mapped) == sorted(mapped)
    # The raw confidence stays as the machine wrote it.
    assert Annotation.objects.get(id=annotations[30].id).confidence == pytest.approx(0.1)
    assert calibration_current(make_run(run.dataset, model_name="another-model")) is None
    recalibration = run_recalibration(run)
    assert recalibration is not None and recalibration.before and recalibration.after
    assert recalibration.after.ece < recalibration.before.ece
    page = client_for(admin_user).get(reverse("run_dashboard", args=[run.code])).content.decode()
    assert 'id="reliability-before"' in page and 'id="reliability-after"' in page
    assert f"(calibrated {recalibration.calibrated_threshold:.3f})" in page


def squashing(low: float, high: float) -> CalibrationMap:
    """An isotonic map from [0, 1] onto [low, high]."""
    return CalibrationMap("isotonic", {"x": [0.0, 1.0], "y": [low, high]}, 10, "test")


def two_models_flagged() -> tuple[list[GenerationRun], dict[str, Annotation]]:
    """Two runs of different models on one dataset, two unconfident annotations each."""
    dataset, images = make_images(4, name="two-models")
    runs = [make_run(dataset, model_name=m) for m in ("model-a", "model-b")]
    GenerationRun.objects.filter(id__in=[r.id for r in runs]).update(review_threshold=0.95)
    raw = {"a-high": 0.8, "a-low": 0.6, "b-low": 0.3, "b-high": 0.5}
    annotations = {}
    for image, (name, confidence) in zip(images, raw.items(), strict=True):
        run = runs[0] if name.startswith("a") else runs[1]
        # ``annotate`` stores an overall confidence 0.2 under the one it is given.
        annotations[name] = annotate(image, run, confidence=confidence + 0.2)
    return runs, annotations


def open_tasks(annotations: dict[str, Annotation]) -> None:
    for annotation in annotations.values():
        assert task_create_for(Annotation.objects.select_related("run").get(id=annotation.id))


def queue_order(annotations: dict[str, Annotation]) -> list[str]:
    names = {a.id: name for name, a in annotations.items()}
    return [names[t.annotation_id] for t in queue_tasks(QueueFilter())]


def test_it_ranks_the_queue_by_calibrated_confidence_across_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs, annotations = two_models_flagged()
    open_tasks(annotations)
    # Without maps, the raw confidences, although the models' scales differ.
    assert queue_order(annotations) == ["b-low", "b-high", "a-low", "a-high"]
    # Model a's raw values overstate how often it is right, model b's understate it.
    for run, calibration in zip(runs, (squashing(0.0, 0.5), squashing(0.5, 1.0)), strict=True):
        monkeypatch.setattr(certificates, "fit_calibration", lambda *_, found=calibration: found)
        calibration_fit(run=run, targets=EXPRESSION)
    assert queue_order(annotations) == ["a-low", "a-high", "b-low", "b-high"]
    priority = dict(ReviewTask.objects.values_list("annotation_id", "priority"))
    assert priority[annotations["a-high"].id] == pytest.approx(0.4)
    assert priority[annotations["b-low"].id] == pytest.approx(0.65)
    # The raw confidence stays as the machine wrote it.
    assert Annotation.objects.get(id=annotations["a-high"].id).confidence == pytest.approx(0.8)


def test_it_opens_tasks_at_their_calibrated_place(annotator: User) -> None:
    runs, annotations = two_models_flagged()
    for run, calibration in zip(runs, (squashing(0.0, 0.5), squashing(0.5, 1.0)), strict=True):
        CalibrationFit.objects.create(
            model_name=run.model_name,
            prompt_version=run.prompt_version,
            grains=["expression"],
            calibration=calibration.to_json(),
        )
    open_tasks(annotations)
    assert queue_order(annotations) == ["a-low", "a-high", "b-low", "b-high"]
    claimed = task_claim_next(user=annotator)
    assert claimed is not None and claimed.annotation_id == annotations["a-low"].id


def test_it_never_applies_a_map_that_decreases() -> None:
    decreasing = CalibrationMap("platt", {"a": -1.0, "b": 0.0}, 40)
    assert _monotone(decreasing).method == "identity"
    increasing = CalibrationMap("platt", {"a": 2.0, "b": 0.0}, 40)
    assert _monotone(increasing) is increasing
