"""Corrections feed back: proposals computed from decisions, versions, gold check, promotion."""

from __future__ import annotations

import math

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from review.feedback.services import (
    FeedbackRefused,
    prompt_version_create,
    prompt_version_promote,
    prompt_version_propose,
    worse_grains,
)
from review.models import GoldCheck, ReviewDecision
from review.tasks.services import Decision, decision_record, task_claim_next
from seke_app.engine.feedback import (
    Correction,
    FeedbackOptions,
    choose_exemplars,
    recalibrate,
    rule_notes,
)
from seke_app.engine.vocab import DEFAULT_VOCABULARY
from seke_app.models import Annotation, GenerationRun, PromptVersion
from seke_app.runs.prompts import prompt_version_active
from tests.conftest import client_for
from tests.factories import make_flagged_annotations


def corr(machine: str, human: str, confidence: float, ref: str, note: str = "") -> Correction:
    return Correction(
        image_ref=ref,
        machine_expression=machine,
        human_expression=human,
        expression_confidence=confidence,
        votes={machine: 3, human: 1},
        note=note,
    )


SCRIPTED = [
    *[corr("surprise", "fear", 0.9 - i / 100, f"sf{i}") for i in range(10)],
    corr("neutral", "sadness", 0.8, "ns0", note="drooping lip corners"),
    corr("neutral", "sadness", 0.6, "ns1"),
    corr("anger", "disgust", 0.7, "ad0"),
    corr("happiness", "happiness", 0.9, "ok0"),
    corr("fear", "surprise", 0.2, "low0"),
]


def test_it_spreads_exemplars_over_the_confusions() -> None:
    chosen = choose_exemplars(SCRIPTED, FeedbackOptions(max_exemplars=4))
    pairs = [(e["machine_expression"], e["expression"]) for e in chosen]
    # The most frequent confusion first, then one of each other confusion, not ten of one.
    assert pairs == [
        ("surprise", "fear"),
        ("neutral", "sadness"),
        ("anger", "disgust"),
        ("surprise", "fear"),
    ]
    assert chosen[0]["image_ref"] == "sf0"  # the most confident mistake of its kind
    assert chosen[1]["note"] == "drooping lip corners"
    # Unsure mistakes (confidence under the bar) are not exemplars.
    assert all(e["image_ref"] != "low0" for e in chosen)


def test_it_writes_rule_notes_from_the_counts() -> None:
    notes = rule_notes(SCRIPTED, DEFAULT_VOCABULARY, FeedbackOptions())
    assert "fear answered as surprise in 10 of 15 corrections" in notes
    assert "check AU4 and AU20 before answering surprise" in notes
    assert "sadness answered as neutral in 2 of 15 corrections" in notes
    # A confusion seen once is not a rule.
    assert "disgust answered as anger" not in notes


def test_it_fits_class_priors_towards_what_experts_say() -> None:
    calibration = recalibrate(SCRIPTED, DEFAULT_VOCABULARY)
    prior = calibration["class_log_prior"]
    assert prior["fear"] > 0 > prior["surprise"]
    assert 0.2 <= calibration["temperature"] <= 5.0
    assert calibration["fitted_on"] == len(SCRIPTED)


def _recalibrated_choice(calibration: dict[str, object], votes: dict[str, float]) -> str:
    expressions = list(DEFAULT_VOCABULARY.expressions)
    offsets = calibration["class_log_prior"]
    assert isinstance(offsets, dict)
    temperature = float(calibration["temperature"])  # type: ignore[arg-type]
    total = sum(votes.values()) + 0.5 * len(expressions)
    scores = {
        e: math.log((votes.get(e, 0.0) + 0.5) / total) / temperature + offsets[e]
        for e in expressions
    }
    return max(scores, key=lambda e: scores[e])


def test_the_recalibration_learns_a_systematic_confusion_and_leaves_right_answers() -> None:
    confused = [
        Correction(
            f"c{i}",
            "surprise",
            "fear" if i % 5 else "surprise",
            0.6,
            votes={"surprise": 2.0, "fear": 1.0},
        )
        for i in range(40)
    ]
    right = [
        Correction(f"r{i}", "happiness", "happiness", 0.9, votes={"happiness": 2.6, "neutral": 0.4})
        for i in range(40)
    ]
    calibration = recalibrate(confused + right, DEFAULT_VOCABULARY)
    assert calibration["fitted_on"] == 80
    # Reviewers said fear four times in five where the samples leant to surprise...
    assert _recalibrated_choice(calibration, {"surprise": 2.0, "fear": 1.0}) == "fear"
    # ...while the answers they confirmed stay as they were.
    assert _recalibrated_choice(calibration, {"happiness": 2.6, "neutral": 0.4}) == "happiness"
    assert recalibrate([], DEFAULT_VOCABULARY) == {}


def review_all(user: User, expression: str = "fear") -> GenerationRun:
    annotations = make_flagged_annotations(8, write_files=True)
    # Confidently wrong machine answers are what exemplars are chosen from.
    Annotation.objects.update(expression_confidence=0.9)
    while (task := task_claim_next(user=user)) is not None:
        decision_record(
            task=task,
            user=user,
            decision=Decision(
                action="correct",
                expression=expression,
                valence=-0.1,
                arousal=0.7,
                note="eyes wide, brows flat",
            ),
        )
    return annotations[0].run


@pytest.mark.django_db
def test_it_proposes_a_version_from_a_runs_decisions(annotator: User, admin_user: User) -> None:
    run = review_all(annotator)
    proposal = prompt_version_propose(runs=[run])
    assert proposal.n_corrections == 8
    assert ("surprise", "fear", 2) in proposal.confusions
    assert "fear answered as surprise in 2 of 8 corrections" in proposal.rule_notes
    parent = prompt_version_active()
    version = prompt_version_create(
        parent=parent,
        name="",
        knowledge_text=parent.knowledge_text,
        rule_notes=proposal.rule_notes,
        exemplars=proposal.exemplars,
        calibration=proposal.calibration,
        user=admin_user,
    )
    assert version.number == parent.number + 1 and version.parent == parent
    assert not version.is_active and len(version.fingerprint) == 64
    with pytest.raises(FeedbackRefused, match="no review decisions"):
        prompt_version_propose(
            runs=[
                GenerationRun.objects.create(
                    dataset=run.dataset, backend="offline", model_name="x", prompt_version=parent
                )
            ]
        )


def test_it_names_the_measures_that_got_worse() -> None:
    parent = {"expression_accuracy": 0.7, "va_rmse": 0.3, "au_f1_mean": None}
    better = {"expression_accuracy": 0.75, "va_rmse": 0.25, "au_f1_mean": 0.4}
    worse = {"expression_accuracy": 0.65, "va_rmse": 0.35}
    assert worse_grains(better, parent) == []
    assert worse_grains(worse, parent) == [
        "expression accuracy 0.650 < 0.700",
        "va rmse 0.350 > 0.300",
    ]


@pytest.mark.django_db
def test_it_refuses_to_promote_a_worse_version_without_an_override(admin_user: User) -> None:
    parent = prompt_version_active()
    version = prompt_version_create(
        parent=parent,
        name="child",
        knowledge_text="k",
        rule_notes="",
        exemplars=[],
        calibration={},
        user=admin_user,
    )
    with pytest.raises(FeedbackRefused, match="run the gold-set check"):
        prompt_version_promote(version=version, user=admin_user)
    GoldCheck.objects.create(
        version=version,
        parent=parent,
        backend="offline",
        model_name="m",
        status="done",
        report={"worse": ["expression accuracy 0.600 < 0.700"]},
    )
    with pytest.raises(FeedbackRefused, match="worse than its parent"):
        prompt_version_promote(version=version, user=admin_user)
    assert PromptVersion.objects.get(is_active=True) == parent
    check = prompt_version_promote(
        version=version, user=admin_user, override_reason="parent over-fits the gold set"
    )
    assert PromptVersion.objects.get(is_active=True) == version
    assert check is not None
    check.refresh_from_db()
    assert check.override_reason == "parent over-fits the gold set"
    assert check.promoted_by == admin_user and check.promoted_at is not None


@pytest.mark.django_db
def test_it_promotes_a_version_that_is_not_worse(admin_user: User) -> None:
    parent = prompt_version_active()
    version = prompt_version_create(
        parent=parent,
        name="child",
        knowledge_text="k",
        rule_notes="",
        exemplars=[],
        calibration={},
        user=admin_user,
    )
    GoldCheck.objects.create(
        version=version,
        parent=parent,
        backend="offline",
        model_name="m",
        status="done",
        report={"worse": []},
    )
    prompt_version_promote(version=version, user=admin_user)
    assert PromptVersion.objects.filter(is_active=True).get() == version


@pytest.mark.django_db
def test_it_shows_version_pages_to_admins_only(
    annotator: User, admin_user: User, outsider: User
) -> None:
    version = prompt_version_active()
    urls = [
        reverse("review:version_list"),
        reverse("review:version_new"),
        reverse("review:version_detail", args=[version.code]),
    ]
    for url in urls:
        assert client_for(None).get(url).status_code == 302
        assert client_for(outsider).get(url).status_code == 403
        assert client_for(annotator).get(url).status_code == 403
        assert client_for(admin_user).get(url).status_code == 200
    for name in ("review:version_gold_check", "review:version_promote"):
        url = reverse(name, args=[version.code])
        assert client_for(annotator).post(url).status_code == 403
        assert client_for(admin_user).get(url).status_code == 405


@pytest.mark.django_db
def test_it_builds_the_proposal_page_and_saves_the_edited_version(
    annotator: User, admin_user: User
) -> None:
    run = review_all(annotator)
    client = client_for(admin_user)
    page = client.get(reverse("review:version_new"), {"runs": [str(run.code)]})
    body = page.content.decode()
    assert "Computed from <strong>8</strong> review decisions" in body
    assert "fear answered as surprise" in body
    with_images = client.get(
        reverse("review:version_new"), {"runs": [str(run.code)], "send_images": "1"}
    ).content.decode()
    assert "data:image/jpeg;base64," in with_images
    response = client.post(
        reverse("review:version_new"),
        {
            "runs": [str(run.code)],
            "name": "learned",
            "knowledge_text": "edited knowledge",
            "rule_notes": "- check AU4",
            "exemplars": "[]",
            "calibration": "{}",
        },
    )
    version = PromptVersion.objects.get(name="learned")
    assert response.status_code == 302 and version.knowledge_text == "edited knowledge"
    bad = client.post(
        reverse("review:version_new"),
        {
            "knowledge_text": "x",
            "exemplars": "{not json",
            "calibration": "{}",
        },
    )
    assert bad.status_code == 400 and "Not saved" in bad.content.decode()
    assert PromptVersion.objects.count() == 2


@pytest.mark.django_db
def test_it_records_what_a_saved_version_learned_from(annotator: User, admin_user: User) -> None:
    run = review_all(annotator)
    client = client_for(admin_user)
    client.post(
        reverse("review:version_new"),
        {
            "runs": [str(run.code)],
            "name": "learned",
            "knowledge_text": "k",
            "rule_notes": "",
            "exemplars": "[]",
            "calibration": "{}",
        },
    )
    version = PromptVersion.objects.get(name="learned")
    decisions = ReviewDecision.objects.filter(annotation__run=run)
    assert version.learned_from_decisions == sorted(decisions.values_list("id", flat=True))
    assert set(version.learned_from_images.all()) == {d.image for d in decisions}
    page = client.get(reverse("review:version_detail", args=[version.code])).content.decode()
    assert "Learned from <strong>8</strong> review decisions on <strong>8</strong> images" in page
    # A version written by hand, from no run, learned from no decision.
    by_hand = prompt_version_create(
        parent=version,
        name="by hand",
        knowledge_text="k2",
        rule_notes="",
        exemplars=[],
        calibration={},
        user=admin_user,
    )
    assert by_hand.learned_from_decisions == [] and not by_hand.learned_from_images.exists()
    # It starts from its parent's text, so its parent's images are in-sample for it too.
    assert set(by_hand.learned_images()) == set(version.learned_from_images.all())


@pytest.mark.django_db
def test_it_links_re_annotation_of_the_unreviewed_and_unsure(admin_user: User) -> None:
    version = prompt_version_active()
    page = client_for(admin_user).get(reverse("review:version_detail", args=[version.code]))
    assert f"prompt_version={version.code}&amp;only_unconfident=1" in page.content.decode()
    form = (
        client_for(admin_user)
        .get(reverse("run_new"), {"prompt_version": str(version.code), "only_unconfident": "1"})
        .content.decode()
    )
    assert 'name="only_unconfident" checked' in form or "checked" in form
