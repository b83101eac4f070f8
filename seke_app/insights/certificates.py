"""Certified auto-accept thresholds, more audits, and the figures a dataset card states.

A certificate answers: at which review threshold is the error among the run's
auto-accepted annotations at most ``alpha``, with probability at least
``1 - delta`` over the random audit? It rests only on the run's *audit*
references (``audit_rows``): the human labels of a uniform random sample of the
run's images (``RunItem.audit``), labelled without seeing the machine's answer
on the run's blind audit tasks. An audited image that already had a decision or
a waiting task gets no audit task (one image, one review) and its decision
serves: leaving it out would no longer be a uniform sample. Flagged reviews of
images not drawn are chosen by the very confidence being judged, and dataset
labels may have been given to the model to copy; neither is used here.

One threshold, several grains. A run has one review threshold, compared with
the overall confidence (the lowest of the grains' confidences). The admin states
which grains must be right (expression equal; valence and arousal each within a
stated distance; every AU of the vocabulary equal) and one ``alpha``; an audit
reference counts as an *error* when any stated grain is wrong, and
``engine.certify`` certifies the overall confidence against that error. Since
each grain's error is contained in "any stated grain wrong", every stated grain's
error rate among auto-accepted annotations is at most ``alpha`` as well.

Conservative reading of the references (each can only raise the bound): an
audited image a human rejected, or whose stated grain is disputed between
standing decisions, counts as an error; so does a missing machine answer. A
grain the model was given as a known label (``Annotation.known_grains``) is not
scored on that annotation; an annotation whose stated grains were all given is
left out of the certified population (audited or not): the model was told to
copy those labels, so their agreement says nothing about its annotation.
Annotations ``held`` (flagged for a reason no threshold changes) are never
auto-accepted, so they are left out too.

The dataset card's intervals (``run_quality``) use the same references: the
accuracy of the machine-accepted labels per grain and the expression
distribution, each with a PPI++ interval (``engine.ppi``; the prediction is the
raw confidence or the machine's own label, never fitted on the audit) and the
audit-only interval beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from seke_app.engine import quality
from seke_app.engine.calibration import CalibrationMap, fit_calibration
from seke_app.engine.certify import certify
from seke_app.engine.formats.card import RunQuality, Stated
from seke_app.engine.ppi import Interval, classical_mean, ppi_mean
from seke_app.engine.vocab import Vocabulary
from seke_app.insights.references import (
    GRAINS,
    Decision,
    Reference,
    decision_store,
    grain_agrees,
    human_references,
    parse_aus,
    standing,
    va_pair,
)
from seke_app.models import Annotation, CalibrationFit, GenerationRun, RunCertificate, RunItem
from seke_app.models.runs import ThresholdChange
from seke_app.runs import hooks
from seke_app.runs.threshold import run_threshold_set
from seke_app.webhooks import events as webhook_events

# The level of the card's intervals (95 %).
INTERVAL_ALPHA = 0.05


class CertificateRefused(Exception):
    """The targets or the request cannot be used; the message says why. Nothing changed."""


@dataclass(frozen=True)
class Targets:
    """What the admin states: the grains that must be right, ``alpha`` and ``delta``."""

    grains: tuple[str, ...]
    alpha: float
    delta: float
    va_distance: float = quality.VA_TOLERANCE

    def __post_init__(self) -> None:
        if not self.grains:
            raise CertificateRefused("State at least one grain that must be right.")
        unknown = [g for g in self.grains if g not in GRAINS]
        if unknown:
            raise CertificateRefused(f"Unknown grains: {', '.join(unknown)}.")
        if not 0.0 < self.alpha < 1.0:
            raise CertificateRefused("The error allowed lies strictly between 0 and 100 %.")
        if not 0.0 < self.delta < 1.0:
            raise CertificateRefused("The confidence level lies strictly between 0 and 100 %.")
        if not 0.0 < self.va_distance <= 2.0:
            raise CertificateRefused("The valence-arousal distance lies between 0 and 2.")


@dataclass(frozen=True)
class AuditRow:
    """One audited annotation: its confidences and, per grain, whether it was right.

    ``right[grain]`` is None where the grain is not scored (given as a known label).
    ``earlier`` says that the run's own audit task on the image was never decided
    (it had none): the reference is a decision the image already had, or got from
    a task already waiting, when the run drew it (see ``audit_rows``); ``blind``
    that every decision standing on the image was made blind.
    """

    annotation_id: int
    expression: str | None
    confidence: float
    grain_confidence: dict[str, float]
    held: bool
    confident: bool
    right: dict[str, bool | None]
    truth_expression: str | None
    earlier: bool = False
    blind: bool = True


_ROW_FIELDS = (
    "id",
    "image_id",
    "expression",
    "valence",
    "arousal",
    "aus",
    "confidence",
    "expression_confidence",
    "va_confidence",
    "au_confidence",
    "held",
    "known_grains",
)


def _audit_truth_aus(reference: Reference, vocabulary: Vocabulary) -> Any:
    """The AU truth: a blind audit codes every AU of the vocabulary (the boxes ticked).

    The contract reads an AU grain left empty as standing behind the machine's AUs,
    which a blind reviewer never saw; for an audit it means "no AU present".
    """
    decision: Decision | None = reference.decisions.get("aus")
    if decision is not None and decision.audit:
        ticked = decision.decided.aus or {}
        return {au: bool(ticked.get(au)) for au in vocabulary.aus}
    return reference.labels.aus


def _grain_right(
    grain: str, machine: Any, reference: Reference | None, vocabulary: Vocabulary, va: float
) -> bool:
    if reference is None or reference.rejected or grain in reference.unresolved:
        return False
    truth = (
        _audit_truth_aus(reference, vocabulary) if grain == "aus" else reference.labels.grain(grain)
    )
    if truth is None or machine is None:
        return False
    if grain == "va":
        return quality.va_agrees(machine, truth, va)
    return grain_agrees(grain, machine, truth)


def audit_rows(run: GenerationRun, *, va_distance: float = quality.VA_TOLERANCE) -> list[AuditRow]:
    """The run's audited annotations that have a human reference, scored per grain.

    The audit is the run's uniform draw of images (``RunItem.audit``), and an
    audited image's reference is the human label standing on it
    (``human_references``), whichever task it came from. Usually that is the blind
    decision on the run's own audit task. But an image gets one review: one that
    already had a decision when the run drew it gets no audit task, and the
    decision standing on it is the reference; one that had a task waiting gets none
    either, and that task (made blind if nobody had claimed it yet, by ``review``)
    gives the reference once decided. Leaving those images out would make the audit
    no longer uniform: images decided earlier are often hard, flagged ones, and
    their absence would flatter the certificate. Such rows are marked ``earlier``,
    and whether their decisions were blind is kept. An audited image no decision
    stands on yet (its task is waiting) is not a reference yet.
    """
    items = RunItem.objects.filter(run=run, audit=True)
    annotations = Annotation.objects.filter(run=run, image_id__in=items.values("image_id"))
    image_ids = annotations.values("image_id")
    decided = {
        image_id: list(group)
        for image_id, group in groupby(
            decision_store().decisions(image_ids=image_ids), key=attrgetter("image_id")
        )
    }
    if not decided:
        return []
    references = human_references(image_ids)
    vocabulary = run.dataset.vocabulary()
    rows = []
    for values in annotations.order_by("id").values_list(*_ROW_FIELDS):
        (pk, image_id, expression, valence, arousal, aus, conf, e_conf, va_conf, au_conf) = values[
            :10
        ]
        held, given = values[10], set(values[11] or ())
        if image_id not in decided:
            continue
        decisions = decided[image_id]
        reference = references.get(image_id)
        machine = {"expression": expression, "va": va_pair(valence, arousal), "aus": parse_aus(aus)}
        right: dict[str, bool | None] = {
            g: None
            if g in given
            else _grain_right(g, machine[g], reference, vocabulary, va_distance)
            for g in GRAINS
        }
        usable = reference is not None and not reference.rejected
        truth = reference.labels.expression if usable and reference is not None else None
        rows.append(
            AuditRow(
                annotation_id=pk,
                expression=expression,
                confidence=conf,
                grain_confidence={"expression": e_conf, "va": va_conf, "aus": au_conf},
                held=held,
                confident=not held and conf >= run.review_threshold,
                right=right,
                truth_expression=None if "expression" in given else truth,
                earlier=not any(d.audit and d.annotation_id == pk for d in decisions),
                blind=all(d.audit for d in standing(decisions)),
            )
        )
    return rows


def _population(run: GenerationRun, grains: Sequence[str]) -> list[float]:
    """Overall confidences of the annotations a certificate covers (see the module doc)."""
    rows = Annotation.objects.filter(run=run, held=False).values_list("confidence", "known_grains")
    return [conf for conf, given in rows.iterator() if not set(grains) <= set(given or ())]


def run_certify(
    *, run: GenerationRun, targets: Targets, user: AbstractBaseUser | None = None
) -> RunCertificate:
    """Certify the run's threshold for the targets, store the certificate, apply it.

    When a threshold is certified it becomes the run's review threshold through
    ``run_threshold_set`` (source "certificate"), in the same transaction; when
    none is, the certificate records how many audit references would be needed and
    the threshold stays. A refused threshold change stores nothing.
    """
    population = _population(run, targets.grains)
    if not population:
        raise CertificateRefused(
            "The run has no annotation that could be auto-accepted on the stated grains."
        )
    rows = [
        r
        for r in audit_rows(run, va_distance=targets.va_distance)
        if not r.held and any(r.right[g] is not None for g in targets.grains)
    ]
    errors = [any(r.right[g] is False for g in targets.grains) for r in rows]
    found = certify(
        audit_confidence=[r.confidence for r in rows],
        audit_error=errors,
        all_confidence=population,
        alpha=targets.alpha,
        delta=targets.delta,
    )
    n_given = sum(any(r.right[g] is None for g in targets.grains) for r in rows)
    earlier = [r for r in rows if r.earlier]
    with transaction.atomic():
        change = None
        if found.threshold is not None:
            change = run_threshold_set(
                run=run,
                threshold=found.threshold,
                source=ThresholdChange.Source.CERTIFICATE,
                user=user,
                note=f"certified: error at most {targets.alpha:.1%} at {1 - targets.delta:.0%}",
            )
        calibration_fit(run=run, targets=targets, user=user)
        total = Annotation.objects.filter(run=run).count()
        threshold = found.threshold
        accepted = 0 if threshold is None else sum(conf >= threshold for conf in population)
        certificate = RunCertificate.objects.create(
            run=run,
            model_name=run.model_name,
            strong_model=run.strong_model,
            prompt_version=run.prompt_version,
            grains=list(targets.grains),
            alpha=targets.alpha,
            delta=targets.delta,
            va_distance=targets.va_distance if "va" in targets.grains else None,
            threshold=found.threshold,
            coverage=accepted / total if total else 0.0,
            upper_bound=found.upper_bound,
            n_references=found.n_references,
            n_accepted_references=found.n_accepted_references,
            errors_accepted=found.errors_accepted,
            n_given=n_given,
            n_earlier=len(earlier),
            n_earlier_blind=sum(r.blind for r in earlier),
            needed=found.needed,
            method=found.method,
            change=change,
            created_by=user,  # type: ignore[misc]
        )
        if certificate.threshold is not None:
            webhook_events.certificate_issued(certificate)
        return certificate


def run_certificate_latest(run: GenerationRun) -> RunCertificate | None:
    """The run's latest certificate (certified or not)."""
    return run.certificates.select_related("created_by", "prompt_version").first()


def run_audits_request(*, run: GenerationRun, n: int) -> int:
    """Add up to ``n`` more of the run's images to its blind audit (through ``review``'s
    hook, which opens their blind audit tasks); how many it added."""
    if n < 1:
        raise CertificateRefused("Ask for at least one more audit review.")
    with transaction.atomic():
        return sum(hook(run, n) for hook in hooks.audits_requested)


def _intervals(
    truth: list[float], pred: list[float], unlabelled: list[float]
) -> tuple[Interval | None, Interval | None]:
    classical = (
        classical_mean(labelled_truth=truth, alpha=INTERVAL_ALPHA) if len(truth) >= 2 else None
    )
    if len(truth) < 2 or len(unlabelled) < 2:
        return None, classical
    ppi = ppi_mean(
        labelled_truth=truth, labelled_pred=pred, unlabelled_pred=unlabelled, alpha=INTERVAL_ALPHA
    )
    return ppi, classical


def _accuracy(run: GenerationRun, rows: list[AuditRow], audited: set[int]) -> list[Stated]:
    """Per grain: the accuracy of the machine-accepted labels (confident now)."""
    fields = ("id", "expression_confidence", "va_confidence", "au_confidence", "known_grains")
    accepted = list(
        Annotation.objects.filter(run=run, held=False, confidence__gte=run.review_threshold)
        .values_list(*fields)
        .iterator()
    )
    found = []
    for index, grain in enumerate(GRAINS):
        labelled = [r for r in rows if r.confident and r.right[grain] is not None]
        truth = [float(bool(r.right[grain])) for r in labelled]
        pred = [r.grain_confidence[grain] for r in labelled]
        rest = [v[1 + index] for v in accepted if v[0] not in audited and grain not in v[4]]
        ppi, classical = _intervals(truth, pred, rest)
        name = RunCertificate.GRAIN_NAMES[grain]
        found.append(Stated(f"accuracy of accepted {name}", ppi, classical))
    return found


def _distribution(run: GenerationRun, rows: list[AuditRow], audited: set[int]) -> list[Stated]:
    """Per expression: its share among the run's images (truth from the audit)."""
    labelled = [r for r in rows if r.truth_expression is not None]
    machine = list(
        Annotation.objects.filter(run=run)
        .exclude(id__in=audited)
        .values_list("expression", flat=True)
        .iterator()
    )
    found = []
    for expression in run.dataset.vocabulary().expressions:
        truth = [float(r.truth_expression == expression) for r in labelled]
        pred = [float(r.expression == expression) for r in labelled]
        rest = [float(e == expression) for e in machine]
        ppi, classical = _intervals(truth, pred, rest)
        found.append(Stated(f"share of {expression}", ppi, classical))
    return found


def run_quality(run: GenerationRun) -> RunQuality:
    """What the dataset card states about one run whose machine labels are exported."""
    certificate = run_certificate_latest(run)
    if certificate is None:
        sentence, note = None, "No certificate: this run was never certified."
    elif not certificate.certified:
        sentence, note = None, "No certificate in force. " + certificate.sentence()
    elif not certificate.in_force():
        sentence = None
        note = (
            "No certificate in force: the review threshold was changed after the last "
            f"certificate (now {run.review_threshold:.3f})."
        )
    else:
        sentence, note = certificate.sentence(), ""
    rows = audit_rows(run)
    audited = {r.annotation_id for r in rows}
    return RunQuality(
        run=str(run.code),
        model=run.model_name,
        prompt_version=run.prompt_version.number,
        certificate=sentence,
        note=note,
        n_audit=len(rows),
        n_annotations=Annotation.objects.filter(run=run).count(),
        accuracy=_accuracy(run, rows, audited),
        distribution=_distribution(run, rows, audited),
    )


# --- Recalibration -----------------------------------------------------------------
#
# A map per model and prompt version, fitted on the audit references of every run
# of that pair: the raw overall confidence against "every stated grain right" (the
# certificate's targets). Every map SEKE applies is non-decreasing (isotonic, the
# identity, or Platt with a positive slope; a Platt fit that decreases is not
# applied), so within one run the order of annotations by confidence, and which
# side of a threshold each falls on, are the same in raw and calibrated terms:
# curation and the run's threshold keep comparing raw values, and the page shows
# the calibrated value beside each. The review queue is different: it mixes runs
# of different models and prompt versions, whose raw confidences are not on one
# scale, so it ranks by the calibrated confidence where the pair has a map and by
# the raw one otherwise (``calibrated_confidence``; ``review`` stores it as the
# task's priority when a task opens, and re-ranks the pair's waiting tasks when a
# map is fitted, through ``hooks.calibration_fitted``). Certification reads the
# raw confidence: a map fitted on the audit would let the audit's labels choose
# the candidate thresholds, which Learn then Test forbids.

OUT_OF_FOLD = 5


@dataclass(frozen=True)
class Recalibration:
    """The applied map of a run's (model, prompt version) and its reliability diagrams.

    ``before`` is the raw confidence on the audit references; ``after`` the
    calibrated one, each reference mapped by a map fitted without it (five folds),
    so that it is not scored in-sample.
    """

    fit: CalibrationFit
    calibration: CalibrationMap
    before: quality.Reliability | None
    after: quality.Reliability | None
    threshold: float
    calibrated_threshold: float

    @property
    def diagrams(self) -> list[tuple[str, quality.Reliability | None, str]]:
        return [
            ("Raw confidence", self.before, "before"),
            ("Calibrated (out of fold)", self.after, "after"),
        ]


def _monotone(found: CalibrationMap) -> CalibrationMap:
    if found.method == "platt" and found.params["a"] <= 0:
        reason = "the Platt fit decreased with the confidence, so it is not applied"
        return CalibrationMap("identity", {}, found.n_references, reason, found.scores)
    return found


def _references(
    run: GenerationRun, grains: Sequence[str], va_distance: float
) -> tuple[list[float], list[bool]]:
    """Raw overall confidence and rightness of the audits of every run of the pair.

    A cascade's pair is its two models: its confidences are partly the strong
    model's, so its audits are pooled only with runs of the same cascade.
    """
    runs = GenerationRun.objects.filter(
        model_name=run.model_name, strong_model=run.strong_model, prompt_version=run.prompt_version
    ).select_related("dataset")
    confidence, right = [], []
    for each in runs.order_by("id"):
        for row in audit_rows(each, va_distance=va_distance):
            scored = [row.right[g] for g in grains if row.right[g] is not None]
            if scored and not row.held:
                confidence.append(min(max(row.confidence, 0.0), 1.0))
                right.append(all(scored))
    return confidence, right


def calibration_fit(
    *, run: GenerationRun, targets: Targets, user: AbstractBaseUser | None = None
) -> CalibrationFit:
    """Fit and store the recalibration map of the run's model and prompt version.

    In the same transaction, the pair's waiting review tasks are re-ranked by it
    (``hooks.calibration_fitted``).
    """
    confidence, right = _references(run, targets.grains, targets.va_distance)
    found = _monotone(fit_calibration(confidence, right))
    with transaction.atomic():
        fit = CalibrationFit.objects.create(
            model_name=run.model_name,
            strong_model=run.strong_model,
            prompt_version=run.prompt_version,
            grains=list(targets.grains),
            va_distance=targets.va_distance if "va" in targets.grains else None,
            calibration=found.to_json(),
            n_references=len(confidence),
            created_by=user,  # type: ignore[misc]
        )
        for hook in hooks.calibration_fitted:
            hook(fit)
    return fit


def calibrated_confidences(calibration: CalibrationMap | None, raw: Sequence[float]) -> list[float]:
    """Raw overall confidences in calibrated terms by ``calibration``; as they are without one.

    The maps were fitted on confidences clipped to [0, 1], so they are applied to
    those; without a map the raw values stay, unclipped, as the queue always had them.
    """
    if calibration is None:
        return [float(v) for v in raw]
    clipped = np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)
    return [float(v) for v in calibration.apply(clipped)]


def calibrated_confidence(annotation: Annotation) -> float:
    """The annotation's overall confidence in calibrated terms, by its run's model and
    prompt version's map; the raw confidence where the pair has none."""
    fit = calibration_current(annotation.run)
    calibration = None if fit is None else CalibrationMap.from_json(fit.calibration)
    return calibrated_confidences(calibration, [annotation.confidence])[0]


def calibration_current(run: GenerationRun) -> CalibrationFit | None:
    """The latest map of the run's model and prompt version, if any."""
    return CalibrationFit.objects.filter(
        model_name=run.model_name, strong_model=run.strong_model, prompt_version=run.prompt_version
    ).first()


def out_of_fold(
    confidence: list[float], right: list[bool], folds: int = OUT_OF_FOLD
) -> list[float]:
    """Each reference's calibrated confidence from a map fitted on the other folds."""
    conf = np.asarray(confidence, dtype=np.float64)
    truth = np.asarray(right, dtype=bool)
    mapped = conf.copy()
    order = np.random.default_rng(0).permutation(conf.size)
    for held in np.array_split(order, folds):
        kept = np.setdiff1d(order, held)
        mapped[held] = _monotone(fit_calibration(conf[kept], truth[kept])).apply(conf[held])
    return [float(v) for v in mapped]


def run_recalibration(run: GenerationRun) -> Recalibration | None:
    """The dashboard's recalibration figures; None before any map was fitted."""
    fit = calibration_current(run)
    if fit is None:
        return None
    va_distance = quality.VA_TOLERANCE if fit.va_distance is None else fit.va_distance
    confidence, right = _references(run, fit.grains, va_distance)
    calibration = CalibrationMap.from_json(fit.calibration)
    before = after = None
    if confidence:
        before = quality.reliability_diagram(right, confidence)
        if len(confidence) >= 2 * OUT_OF_FOLD:
            after = quality.reliability_diagram(right, out_of_fold(confidence, right))
    threshold = min(max(run.review_threshold, 0.0), 1.0)
    return Recalibration(
        fit=fit,
        calibration=calibration,
        before=before,
        after=after,
        threshold=threshold,
        calibrated_threshold=float(calibration.apply([threshold])[0]),
    )
