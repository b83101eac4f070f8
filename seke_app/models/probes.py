"""What an OpenAI-compatible endpoint was found to support, per endpoint and model.

An ``EndpointProbe`` is one check (``manage.py seke_check_endpoint`` or the run
form's button) of one model on one endpoint: a job on the ``default`` queue that
fills in each capability's answer (yes / no / unknown), the evidence for every no
or unknown, the latency and whether the model's price is known. The latest
finished check per (base URL, model) decides how runs call that endpoint. The
API key is never stored: the base URL is the configured one, or OpenAI's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import models
from django.utils import timezone

from seke_app.engine.llm.probe import CAPABILITIES, Answer, Finding, ProbeResult
from seke_app.models.jobs import QueuedJob

ANSWER_CHOICES = [(a.value, a.value) for a in Answer]
# A check makes at most seven calls of at most 20 s each (seke_app.runs.probes); one
# still running long after that lost its worker and will never finish.
LOST_AFTER = timedelta(minutes=5)


def _answer_field() -> Any:
    return models.CharField(max_length=10, choices=ANSWER_CHOICES, default=Answer.UNKNOWN.value)


class EndpointProbe(QueuedJob):
    base_url = models.CharField("base URL", max_length=2000)
    model_name = models.CharField("model", max_length=200)
    images = _answer_field()
    n = _answer_field()
    json_schema = _answer_field()
    json_object = _answer_field()
    logprobs = _answer_field()
    batch = _answer_field()
    # Capability name -> why it is a no or unknown, as the endpoint said it.
    evidence = models.JSONField(default=dict, blank=True)
    single_call_s = models.FloatField(null=True, blank=True)
    median_call_s = models.FloatField(null=True, blank=True)
    priced = models.BooleanField(null=True, blank=True)
    # What the probe's own calls cost (USD; 0 when the price is unknown).
    cost_usd = models.FloatField(default=0.0)

    class Meta(QueuedJob.Meta):
        indexes = [
            models.Index(fields=["base_url", "model_name", "-created_at"], name="probe_endpoint")
        ]

    def __str__(self) -> str:
        return f"{self.model_name} at {self.base_url}"

    @property
    def checked_at(self) -> Any:
        return self.finished_at

    def is_lost(self) -> bool:
        """Running for far longer than a check can take: its worker died."""
        started = self.started_at
        running = self.status == self.Status.RUNNING
        return running and started is not None and timezone.now() - started > LOST_AFTER

    def findings(self) -> dict[str, Finding]:
        """Each capability's answer and evidence, in ``CAPABILITIES`` order."""
        return {
            name: Finding(Answer(getattr(self, name)), str(self.evidence.get(name, "")))
            for name in CAPABILITIES
        }

    def record(self, result: ProbeResult) -> None:
        """Copy a probe's result onto the row (not saved)."""
        for name, finding in result.findings.items():
            setattr(self, name, finding.answer.value)
        self.evidence = {
            name: finding.evidence
            for name, finding in result.findings.items()
            if finding.answer != Answer.YES
        }
        self.single_call_s = result.single_call_s
        self.median_call_s = result.median_call_s
        self.priced = result.priced
        self.cost_usd = result.usage.cost_usd
