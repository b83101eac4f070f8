"""Corrections feed back into the knowledge: new prompt versions, gold checks, promotion.

The content of a new version is computed from review decisions by
``seke_app.engine.feedback``; the admin edits it before saving. The version records
the decisions it learned from and every image they touched
(``PromptVersion.learned_from_decisions``, ``learned_from_images``): its rule notes,
exemplars and recalibration were all fitted on them. Before a version becomes
active it is run, together with its parent, on a gold set of human-decided images
that neither it nor any ancestor learned from; promoting a version that scores
worse needs an explicit override, which is recorded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Max, QuerySet
from django.utils import timezone

from review.models import GoldCheck, ReviewDecision
from seke_app.engine import metrics
from seke_app.engine.feedback import Correction, FeedbackOptions, Proposal, propose
from seke_app.engine.llm.client import image_data_url
from seke_app.engine.prompts import prompt_fingerprint
from seke_app.engine.types import AnnotationRequest
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc
from seke_app.engine.vocab import DEFAULT_VOCABULARY, Vocabulary
from seke_app.models import Annotation, FaceImage, GenerationRun, PromptVersion
from seke_app.queue import get_queue
from seke_app.runs.backends import backend_for, model_priced


class FeedbackRefused(Exception):
    """The feedback action cannot be done as asked; the message says why."""


def _decisions(runs: Sequence[GenerationRun]) -> list[ReviewDecision]:
    return list(
        ReviewDecision.objects.filter(
            annotation__run__in=runs,
            undone_at__isnull=True,
            action__in=[ReviewDecision.Action.ACCEPT, ReviewDecision.Action.CORRECT],
        )
        .select_related("annotation", "image")
        .order_by("created_at")
    )


def correction_of(decision: ReviewDecision) -> Correction:
    annotation = decision.annotation
    human_va = (
        (decision.valence, decision.arousal)
        if decision.valence is not None and decision.arousal is not None
        else None
    )
    machine_va = (
        (annotation.valence, annotation.arousal)
        if annotation.valence is not None and annotation.arousal is not None
        else None
    )
    return Correction(
        image_ref=str(decision.image.code),
        machine_expression=annotation.expression,
        human_expression=decision.expression,
        expression_confidence=annotation.expression_confidence,
        votes=_votes(annotation),
        machine_va=machine_va,
        human_va=human_va,
        machine_aus=annotation.aus_dict(),
        human_aus={int(a): bool(on) for a, on in decision.aus.items()}
        if decision.aus is not None
        else None,
        note=decision.note,
    )


def _votes(annotation: Annotation) -> dict[str, float]:
    """The masses SV-UAMC summed (soft votes), or the whole votes of older annotations."""
    mass = annotation.expression_uncertainty.get("mass") or annotation.expression_votes
    return {k: float(v) for k, v in mass.items()}


def corrections_for(runs: Sequence[GenerationRun]) -> list[Correction]:
    return [correction_of(d) for d in _decisions(runs)]


def prompt_version_propose(
    *, runs: Sequence[GenerationRun], options: FeedbackOptions | None = None
) -> Proposal:
    if not runs:
        raise FeedbackRefused("choose at least one run whose reviews to learn from")
    corrections = corrections_for(runs)
    if not corrections:
        raise FeedbackRefused("these runs have no review decisions yet")
    vocabulary = runs[0].dataset.vocabulary()
    options = options or FeedbackOptions()
    proposal = propose(corrections, vocabulary, options)
    if options.send_images:
        _attach_images(proposal.exemplars)
    return proposal


EXEMPLAR_IMAGE_SIDE = 256


def _attach_images(exemplars: list[dict[str, Any]]) -> None:
    """Embed each exemplar's face, small, so the version is self-contained and reproducible."""
    found = FaceImage.objects.in_bulk(
        [e["image_ref"] for e in exemplars if e.get("image_ref")], field_name="code"
    )
    images = {str(code): image for code, image in found.items()}
    for exemplar in exemplars:
        image = images.get(str(exemplar.get("image_ref")))
        if image is not None:
            with image.file.open("rb") as handle:
                exemplar["image_url"] = image_data_url(handle.read(), max_side=EXEMPLAR_IMAGE_SIDE)


def version_text(knowledge_text: str, rule_notes: str, exemplars: list[dict[str, Any]]) -> str:
    """What the fingerprint covers: everything a version adds to the prompt."""
    return "\n\n".join(
        [knowledge_text, rule_notes, json.dumps(exemplars, sort_keys=True, ensure_ascii=False)]
    )


@transaction.atomic
def prompt_version_create(
    *,
    parent: PromptVersion,
    name: str,
    knowledge_text: str,
    rule_notes: str,
    exemplars: list[dict[str, Any]],
    calibration: dict[str, Any],
    user: User | None,
    runs: Sequence[GenerationRun] = (),
) -> PromptVersion:
    """Save a new version; ``runs`` are those whose decisions its proposal learned from.

    Every decision of those runs that a proposal reads now is recorded as learned
    from, with its image: more than the proposal saw if reviews came in meanwhile,
    which only leaves more images out of the gold set. Exemplars that name an image
    the runs' decisions did not touch (pasted by hand) count as learned from too.
    """
    if not knowledge_text.strip():
        raise FeedbackRefused("the knowledge text cannot be empty")
    number = (PromptVersion.objects.aggregate(n=Max("number"))["n"] or 0) + 1
    decisions = _decisions(runs) if runs else []
    version = PromptVersion.objects.create(
        number=number,
        name=name or f"Learned from reviews (v{number})",
        knowledge_text=knowledge_text,
        rule_notes=rule_notes,
        exemplars=exemplars,
        calibration=calibration,
        fingerprint=prompt_fingerprint(version_text(knowledge_text, rule_notes, exemplars)),
        parent=parent,
        created_by=user,
        learned_from_decisions=sorted(d.id for d in decisions),
    )
    images = {d.image_id for d in decisions}
    images.update(_exemplar_images(exemplars).values_list("id", flat=True))
    version.learned_from_images.set(images)
    return version


def _exemplar_images(exemplars: Sequence[dict[str, Any]]) -> QuerySet[FaceImage]:
    """The images the exemplars name (``image_ref``, a face's code)."""
    codes = []
    for exemplar in exemplars:
        try:
            codes.append(uuid.UUID(str(exemplar.get("image_ref"))))
        except ValueError:
            continue
    return FaceImage.objects.filter(code__in=codes)


# --- The gold set and the check --------------------------------------------------------


@dataclass(frozen=True)
class GoldItem:
    image: FaceImage
    expression: str | None
    va: tuple[float, float] | None
    aus: dict[int, bool] | None


def gold_set(version: PromptVersion, *, include_imported: bool, limit: int = 200) -> list[GoldItem]:
    """Human-decided images that neither the version nor an ancestor learned from.

    The parent is an ancestor, so both sides of the check are scored out of sample
    (``PromptVersion.learned_images``). The newest decision on an image gives its
    labels.
    """
    learned = version.learned_images().values("id")
    items: dict[int, GoldItem] = {}
    decisions = (
        ReviewDecision.objects.filter(
            undone_at__isnull=True,
            action__in=[ReviewDecision.Action.ACCEPT, ReviewDecision.Action.CORRECT],
        )
        .exclude(image_id__in=learned)
        .select_related("image")
        .order_by("-created_at")
    )
    for d in decisions.iterator(chunk_size=500):
        if d.image_id in items:
            continue
        va = (d.valence, d.arousal) if d.valence is not None and d.arousal is not None else None
        aus = {int(a): bool(on) for a, on in d.aus.items()} if d.aus is not None else None
        items[d.image_id] = GoldItem(d.image, d.expression, va, aus)
        if len(items) >= limit:
            return list(items.values())
    if include_imported:
        imported = FaceImage.objects.filter(known_expression__isnull=False, rejected=False)
        imported = imported.exclude(id__in=list(items)).exclude(id__in=learned).order_by("id")
        for image in imported[: limit - len(items)]:
            va = (
                (image.known_valence, image.known_arousal)
                if image.known_valence is not None and image.known_arousal is not None
                else None
            )
            items[image.id] = GoldItem(image, image.known_expression, va, image.known_aus_dict())
    return list(items.values())


def gold_check_create(
    *,
    version: PromptVersion,
    backend: str,
    model_name: str,
    include_imported: bool,
    user: User | None,
) -> GoldCheck:
    if version.parent is None:
        raise FeedbackRefused("the first version has no parent to compare with")
    items = gold_set(version, include_imported=include_imported)
    if not items:
        raise FeedbackRefused(
            "the gold set is empty: every human-decided image is one this version or an"
            " ancestor learned from (include imported labels, or review more)"
        )
    get_queue("default")
    with transaction.atomic():
        check = GoldCheck.objects.create(
            version=version,
            parent=version.parent,
            backend=backend,
            model_name=model_name,
            include_imported=include_imported,
            n_total=2 * len(items),
            created_by=user,
        )
        transaction.on_commit(
            lambda: get_queue("default").enqueue("review.feedback.jobs.gold_check", check.id)
        )
    return check


def _request(item: GoldItem, version: PromptVersion, vocabulary: Vocabulary) -> AnnotationRequest:
    with item.image.file.open("rb") as handle:
        data = handle.read()
    notes = f"\n\n{version.rule_notes}" if version.rule_notes else ""
    # No known labels are passed: the gold labels are what the version is scored on.
    return AnnotationRequest(
        image_bytes=data,
        vocabulary=vocabulary,
        knowledge_text=version.knowledge_text + notes,
        exemplars=tuple(version.exemplars),
        image_id=str(item.image.code),
    )


def score(items: Sequence[GoldItem], results: Sequence[UAMCResult]) -> dict[str, Any]:
    """Accuracy per grain, calibration of the expression confidence, and cost."""
    expr = [(i.expression, r) for i, r in zip(items, results, strict=True) if i.expression]
    correct = [r.answer is not None and r.answer.expression == e for e, r in expr]
    confidence = [r.confidence.expression for _, r in expr]
    va = [(i.va, r.answer) for i, r in zip(items, results, strict=True) if i.va and r.answer]
    au_truth: dict[int, list[bool]] = {}
    au_pred: dict[int, list[bool]] = {}
    for item, result in zip(items, results, strict=True):
        if item.aus is None or result.answer is None:
            continue
        for au, on in item.aus.items():
            au_truth.setdefault(au, []).append(on)
            au_pred.setdefault(au, []).append(bool(result.answer.aus.get(au, False)))
    au_f1 = metrics.au_f1(au_truth, au_pred)
    cost = sum(r.usage.cost_usd for r in results)
    return {
        "n": len(items),
        "expression_accuracy": sum(correct) / len(correct) if correct else None,
        "expression_ece": metrics.expected_calibration_error(correct, confidence)
        if correct
        else None,
        "va_rmse": metrics.rmse(
            [[v[0], v[1]] for v, _ in va], [[a.valence, a.arousal] for _, a in va]
        )
        if va
        else None,
        "au_f1_mean": sum(au_f1.values()) / len(au_f1) if au_f1 else None,
        "flagged_share": sum(r.flagged for r in results) / len(results) if results else None,
        "cost_usd": cost,
        "cost_per_image": cost / len(results) if results else 0.0,
        "samples_per_image": sum(r.n_samples for r in results) / len(results) if results else 0,
    }


def gold_check_run(*, check_id: int) -> None:
    check = GoldCheck.objects.select_related("version", "parent").get(id=check_id)
    GoldCheck.objects.filter(id=check.id).update(
        status=GoldCheck.Status.RUNNING, started_at=timezone.now()
    )
    try:
        items = gold_set(check.version, include_imported=check.include_imported)
        report: dict[str, Any] = {}
        for label, version in (("parent", check.parent), ("version", check.version)):
            assert version is not None
            results = []
            with backend_for(check.backend, check.model_name, version) as backend:
                for item in items:
                    vocabulary = (
                        item.image.dataset.vocabulary() if item.image else DEFAULT_VOCABULARY
                    )
                    request = _request(item, version, vocabulary)
                    results.append(run_uamc(backend, request, UAMCParams()))
                    GoldCheck.objects.filter(id=check.id).update(n_done=F("n_done") + 1)
            report[label] = score(items, results)
            if not model_priced(check.backend, check.model_name):
                # Recorded as 0, the cost of a model without a price is unknown, not free.
                report[label].update(cost_usd=None, cost_per_image=None)
    except Exception as exc:
        GoldCheck.objects.filter(id=check.id).update(
            status=GoldCheck.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}",
            finished_at=timezone.now(),
        )
        raise
    report["worse"] = worse_grains(report["version"], report["parent"])
    report["left_out"] = check.version.learned_images().count()
    report["unrecorded"] = [v.number for v in check.version.unrecorded_lineage()]
    GoldCheck.objects.filter(id=check.id).update(
        status=GoldCheck.Status.DONE, report=report, finished_at=timezone.now()
    )


# Higher is better for these; lower is better for the others compared.
HIGHER_BETTER = ("expression_accuracy", "au_f1_mean")
LOWER_BETTER = ("va_rmse", "expression_ece")


def worse_grains(version: dict[str, Any], parent: dict[str, Any]) -> list[str]:
    """The measures on which the version does worse than its parent, in words."""
    worse = []
    for key in HIGHER_BETTER:
        if (
            version.get(key) is not None
            and parent.get(key) is not None
            and (version[key] < parent[key])
        ):
            worse.append(f"{key.replace('_', ' ')} {version[key]:.3f} < {parent[key]:.3f}")
    for key in LOWER_BETTER:
        if (
            version.get(key) is not None
            and parent.get(key) is not None
            and (version[key] > parent[key])
        ):
            worse.append(f"{key.replace('_', ' ')} {version[key]:.3f} > {parent[key]:.3f}")
    return worse


def prompt_version_promote(
    *, version: PromptVersion, user: User, override_reason: str = ""
) -> GoldCheck | None:
    """Make ``version`` active, after a gold check; a worse version needs an override."""
    check = version.gold_checks.filter(status=GoldCheck.Status.DONE).first()
    if version.parent is not None:
        if check is None:
            raise FeedbackRefused("run the gold-set check before promoting this version")
        worse = check.report.get("worse", [])
        if worse and not override_reason.strip():
            raise FeedbackRefused(
                "this version is worse than its parent on the gold set ("
                + "; ".join(worse)
                + "): give a reason to override"
            )
    with transaction.atomic():
        PromptVersion.objects.filter(is_active=True).update(is_active=False)
        PromptVersion.objects.filter(id=version.id).update(
            is_active=True, activated_at=timezone.now()
        )
        if check is not None:
            GoldCheck.objects.filter(id=check.id).update(
                promoted_at=timezone.now(),
                promoted_by=user,
                override_reason=override_reason.strip(),
            )
    return check
