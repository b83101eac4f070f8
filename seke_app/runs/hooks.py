"""Where other apps attach to SEKE's workflows without SEKE importing them.

``seke_app`` never imports ``review``; instead ``review`` registers here (in its
AppConfig) what must happen when an annotation is written, and when a run's
review threshold changes; SEKE calls them inside the same transaction. These are
explicit lists, not signals: the one place that calls ``annotation_written`` is
``seke_app.runs.services``, and the one that calls ``threshold_changed`` is
``seke_app.runs.threshold``. A threshold hook returns how many review tasks it
opened and closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seke_app.models import Annotation, GenerationRun

AnnotationHook = Callable[["Annotation"], object]
ThresholdHook = Callable[["GenerationRun"], tuple[int, int]]

annotation_written: list[AnnotationHook] = []
threshold_changed: list[ThresholdHook] = []


def on_annotation_written(hook: AnnotationHook) -> AnnotationHook:
    if hook not in annotation_written:
        annotation_written.append(hook)
    return hook


def on_threshold_changed(hook: ThresholdHook) -> ThresholdHook:
    if hook not in threshold_changed:
        threshold_changed.append(hook)
    return hook
