"""Where other apps attach to SEKE's workflows without SEKE importing them.

``seke_app`` never imports ``review``; instead ``review`` registers here (in its
AppConfig) what must happen when an annotation is written, and the runs service
calls it inside the same transaction. This is an explicit list, not a signal:
the one place that calls it is ``seke_app.runs.services``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seke_app.models import Annotation

AnnotationHook = Callable[["Annotation"], None]

annotation_written: list[AnnotationHook] = []


def on_annotation_written(hook: AnnotationHook) -> AnnotationHook:
    if hook not in annotation_written:
        annotation_written.append(hook)
    return hook
