"""Where other apps attach to SEKE's workflows without SEKE importing them.

``seke_app`` never imports ``review``; instead ``review`` registers here (in its
AppConfig) what must happen when an annotation is written, and when a run's
review threshold changes; SEKE calls them inside the same transaction. These are
explicit lists, not signals: the one place that calls ``annotation_written`` is
``seke_app.runs.services``, and the one that calls ``threshold_changed`` is
``seke_app.runs.threshold``. A threshold hook returns how many review tasks it
opened and closed. ``audits_requested`` adds more of a run's images to its blind
audit (called by ``seke_app.insights.certificates`` when an audit is too small to
certify anything) and returns how many it added. ``calibration_fitted`` re-ranks
the waiting review tasks of a model and prompt version by its new recalibration
map (called by ``seke_app.insights.certificates.calibration_fit``). ``run_finished``
is told that a run stopped (completed, failed, cancelled or at its cost cap), in the
transaction that stopped it (called by ``seke_app.runs.services``): review announces
a finished run's emptied review queue from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seke_app.models import Annotation, CalibrationFit, GenerationRun

AnnotationHook = Callable[["Annotation"], object]
ThresholdHook = Callable[["GenerationRun"], tuple[int, int]]
AuditHook = Callable[["GenerationRun", int], int]
CalibrationHook = Callable[["CalibrationFit"], object]
RunHook = Callable[["GenerationRun"], object]

annotation_written: list[AnnotationHook] = []
threshold_changed: list[ThresholdHook] = []
audits_requested: list[AuditHook] = []
calibration_fitted: list[CalibrationHook] = []
run_finished: list[RunHook] = []


def on_annotation_written(hook: AnnotationHook) -> AnnotationHook:
    if hook not in annotation_written:
        annotation_written.append(hook)
    return hook


def on_threshold_changed(hook: ThresholdHook) -> ThresholdHook:
    if hook not in threshold_changed:
        threshold_changed.append(hook)
    return hook


def on_audits_requested(hook: AuditHook) -> AuditHook:
    if hook not in audits_requested:
        audits_requested.append(hook)
    return hook


def on_calibration_fitted(hook: CalibrationHook) -> CalibrationHook:
    if hook not in calibration_fitted:
        calibration_fitted.append(hook)
    return hook


def on_run_finished(hook: RunHook) -> RunHook:
    if hook not in run_finished:
        run_finished.append(hook)
    return hook
