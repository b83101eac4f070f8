"""VA completed from a known expression carries the completion's own error.

Every sample of such a completion starts from the same class distribution, so the
samples barely disagree; their spread alone would make VA look certain. The
offline annotator reports the error it measured on held-out faces
(``Sample.va_sd``), and SV-UAMC adds it to the spread in the VA confidence.
"""

from __future__ import annotations

import pytest

from seke_app.engine.likelihoods import default_likelihoods
from seke_app.engine.offline.backend import OfflineBackend
from seke_app.engine.types import Answer, KnownLabels, Sample
from seke_app.engine.uamc import UAMCParams, run_uamc
from seke_app.engine.uamc.uncertainty import _va_stats
from tests.test_fusion import FaceBytes, ScriptedModel, _request
from tests.test_uamc import ScriptedBackend, answer, request


def test_a_reported_error_adds_to_the_spread() -> None:
    answers = [Answer("happiness", v, a, {}) for v, a in ((0.60, 0.10), (0.62, 0.12), (0.64, 0.14))]
    plain = _va_stats(answers, UAMCParams())
    reported = _va_stats(answers, UAMCParams(), [(0.3, 0.4)] * 3)
    assert plain.reported_sd is None and plain.total_sd() == pytest.approx(0.02)
    assert reported.reported_sd == pytest.approx((0.3, 0.4))
    # Per axis sqrt(0.02^2 + r^2); the larger axis counts.
    assert reported.total_sd() == pytest.approx((0.02**2 + 0.4**2) ** 0.5)
    # Whether VA is unsure reads only the votes' standard error: more samples of the
    # same completion would not reduce its error.
    assert reported.unsure == plain.unsure


class ReportingBackend(ScriptedBackend):
    """Scripted samples that report the same VA error for every reading."""

    def __init__(self, sd: tuple[float, float] | None, n: int = 5) -> None:
        super().__init__([answer("happiness") for _ in range(n)])
        self.sd = sd

    def sample(self, request: object, k: int, temperature: float) -> list[Sample]:
        drawn = super().sample(request, k, temperature)  # type: ignore[arg-type]
        return [
            Sample(kind=s.kind, raw=s.raw, answer=s.answer, usage=s.usage, va_sd=self.sd)
            for s in drawn
        ]


def test_a_reported_error_lowers_the_va_confidence_and_is_explained() -> None:
    sure = run_uamc(ReportingBackend(None), request(), UAMCParams())
    unsure = run_uamc(ReportingBackend((0.25, 0.25)), request(), UAMCParams(review_threshold=0.9))
    assert unsure.confidence.va < sure.confidence.va
    assert unsure.confidence.components["va"]["agreement"] == pytest.approx(1 - 0.25 / 0.5)
    stored = unsure.to_json()["samples"][0]
    assert stored["va_sd"] == [0.25, 0.25]
    va_reasons = [r for r in unsure.flag_reasons if "valence" in r.lower()]
    assert va_reasons and any("own error of 0.25 and 0.25" in r for r in va_reasons)


def test_the_offline_completion_reports_its_held_out_error(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(ScriptedModel())
    residual = default_likelihoods().head.residual_sd
    completed = backend.sample(_request(face_bytes(), KnownLabels(expression="happiness")), 3, 1.0)
    assert all(s.va_sd == residual for s in completed)
    assert all(
        "typical error on faces it never saw" in s.answer.evidence["va"]
        for s in completed
        if s.answer
    )
    # Image only, or VA known: no completion, nothing reported.
    alone = backend.sample(_request(face_bytes(), KnownLabels()), 3, 1.0)
    known_va = backend.sample(
        _request(face_bytes(), KnownLabels(expression="happiness", valence=0.5, arousal=0.2)),
        2,
        1.0,
    )
    assert all(s.va_sd is None for s in (*alone, *known_va))
