"""A run's quality certificate through the API (admins only, as the run's pages are).

Mounted at ``/api/v1/runs`` beside the runs' own router (``seke_app/runs/api.py``):
ninja joins two routers at one prefix as long as their paths differ.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Router, Schema

from seke_app.api.core import ADMINS_ONLY, ErrorOut
from seke_app.insights.certificates import run_certificate_latest
from seke_app.models import GenerationRun, RunCertificate

router = Router(tags=["runs"], auth=ADMINS_ONLY)


class CertificateOut(Schema):
    """A certified auto-accept threshold, or the finding that none can be certified yet."""

    code: UUID
    run: UUID
    sentence: str = Field(description="The certificate in one sentence, as the run page says.")
    certified: bool = Field(description="Whether a threshold was certified.")
    in_force: bool = Field(description="Whether the run's threshold is still the certified one.")
    threshold: float | None = Field(description="The certified threshold; null: none.")
    grains: list[str] = Field(description="The grains that must be right.")
    alpha: float = Field(description="The error allowed among auto-accepted annotations.")
    delta: float = Field(description="One minus the confidence level.")
    va_distance: float | None = Field(
        description="How far valence and arousal may each be off and be right."
    )
    upper_bound: float | None = Field(description="The certified bound on that error.")
    coverage: float = Field(description="Share of the run's annotations auto-accepted.")
    n_references: int = Field(description="Blind audit references used.")
    n_accepted_references: int = Field(description="Those above the threshold.")
    errors_accepted: int = Field(description="Errors among those above the threshold.")
    n_given: int = Field(description="References where a stated grain was a given known label.")
    n_earlier: int = Field(
        description="References resting on a decision the image had before the run drew it."
    )
    n_earlier_blind: int = Field(description="Of those, the ones resting on blind reviews only.")
    needed: int | None = Field(description="Audit references needed in all, when none certified.")
    more_needed: int | None = Field(description="Audit references needed beyond those used.")
    method: str
    model_name: str
    prompt_version: int = Field(description="The prompt version's number.")
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_run(certificate: RunCertificate) -> UUID:
        return certificate.run.code

    @staticmethod
    def resolve_prompt_version(certificate: RunCertificate) -> int:
        return certificate.prompt_version.number

    @staticmethod
    def resolve_created_by(certificate: RunCertificate) -> str | None:
        return certificate.created_by.get_username() if certificate.created_by else None

    @staticmethod
    def resolve_in_force(certificate: RunCertificate) -> bool:
        return certificate.in_force()


@router.get(
    "/{code}/certificate",
    response={200: CertificateOut, 404: ErrorOut},
    summary="A run's latest quality certificate",
)
def run_certificate(request: HttpRequest, code: UUID) -> RunCertificate:
    """The run's latest certificate, certified or not, as its run page and dashboard
    show it. 404 when it has none: certify on the run's dashboard."""
    run = get_object_or_404(GenerationRun.objects.select_related("dataset"), code=code)
    certificate = run_certificate_latest(run)
    if certificate is None:
        dashboard = reverse("run_dashboard", args=[run.code])
        raise Http404(
            f"Run {run.label} has no certificate. Issue one on its dashboard"
            f" ({dashboard}#certificate): state the grains that must be right, the error"
            " allowed and the confidence level, then Certify. A certificate of another run,"
            " model or prompt version does not carry over."
        )
    certificate.run = run
    return certificate
