"""A cheap-to-strong cascade: SV-UAMC on a cheap model, the unsure images again on a strong one.

A run may name two models. Every image is annotated by SV-UAMC on the cheap
model first. An image whose result would go to review under the run's rule
(``accepted``: not held, and an overall confidence at least the review
threshold) is *escalated*: SV-UAMC runs again on the strong model, with the same
parameters, and the strong model's result decides: its answer is the one kept,
and its confidence and flags decide whether the image is auto-accepted or
reviewed. The cheap result is kept beside it, so that each stage's cost is
known exactly.

Escalation reads exactly the rule that sends an annotation to review, on the
same raw overall confidence and the run's threshold as it stands when the image
is annotated (a recalibration map changes what the pages show and the review
queue's order, never which annotations are accepted, so it changes no
escalation either). The combined output is therefore accepted by one rule: the
run's blind audit and its certificate judge the images as stored, whichever
model answered them. An escalated image reaches review only when the strong
model is unsure as well.

The rule lives here, in the engine, so that a run (``seke_app.runs``) and the
benchmark (``bench/cascade.py``) escalate the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

from seke_app.engine.types import AnnotationRequest, Backend, Usage
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc

CHEAP, STRONG = "cheap", "strong"


def accepted(confidence: float, held: bool, threshold: float) -> bool:
    """Whether a machine label stands without review: not held, and confident enough.

    The one rule behind ``Annotation.is_confident`` and ``models.runs.confident``.
    """
    return not held and confidence >= threshold


def escalates(result: UAMCResult, threshold: float) -> bool:
    """Whether the cheap stage leaves the image unsure: it would go to review."""
    return not accepted(result.overall_confidence, result.held, threshold)


@dataclass(frozen=True)
class CascadeResult:
    """Both stages of one image: ``strong`` is None when the cheap result was accepted."""

    cheap: UAMCResult
    strong: UAMCResult | None

    @property
    def escalated(self) -> bool:
        return self.strong is not None

    @property
    def final(self) -> UAMCResult:
        """The result that decides: the strong model's where the image was escalated."""
        return self.strong if self.strong is not None else self.cheap

    @property
    def stage(self) -> str:
        return STRONG if self.escalated else CHEAP

    @property
    def usage(self) -> Usage:
        """Both stages' calls together."""
        return self.cheap.usage + (self.strong.usage if self.strong is not None else Usage())


def run_cascade(
    cheap: Backend,
    strong: Backend,
    request: AnnotationRequest,
    params: UAMCParams,
    *,
    threshold: float,
) -> CascadeResult:
    """Annotate one image on ``cheap``; escalate it to ``strong`` if ``escalates``."""
    first = run_uamc(cheap, request, params)
    if not escalates(first, threshold):
        return CascadeResult(cheap=first, strong=None)
    return CascadeResult(cheap=first, strong=run_uamc(strong, request, params))
