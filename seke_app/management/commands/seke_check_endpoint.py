"""``manage.py seke_check_endpoint [--model M]``: what the configured endpoint supports.

Makes the probe's few cheap calls (``seke_app.engine.llm.probe``) in this process,
stores the answers (runs of the model then start from them) and prints them as a
table. Exits non-zero, with the reason, when no key is configured or the endpoint
does not answer a plain question (unreachable, key refused, model unknown).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from seke_app.engine.llm.probe import CAPABILITIES
from seke_app.models import EndpointProbe
from seke_app.runs.probes import ProbeRefused, probe_create, probe_run


class Command(BaseCommand):
    help = "Check what the configured OpenAI-compatible endpoint supports, and store it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", default="", help="the model to check (default SEKE_MODEL)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            probe = probe_create(model_name=options["model"], enqueue=False)
        except ProbeRefused as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Checking {probe.model_name} at {probe.base_url}…")
        probe_run(probe_id=probe.id)
        probe.refresh_from_db()
        if probe.status != EndpointProbe.Status.DONE:
            raise CommandError(probe.error or f"the check ended {probe.status}")
        self._table(probe)

    def _table(self, probe: EndpointProbe) -> None:
        out = self.stdout
        out.write(f"{probe.model_name} at {probe.base_url}")
        width = max(len(label) for label in CAPABILITIES.values()) + 2
        out.write(f"  {'capability':<{width}}{'answer':<9}evidence")
        for name, finding in probe.findings().items():
            row = f"  {CAPABILITIES[name]:<{width}}{finding.answer.value:<9}{finding.evidence}"
            out.write(row.rstrip())
        out.write(
            f"latency: {probe.single_call_s:.2f} s for one small call,"
            f" median {probe.median_call_s:.2f} s per call"
        )
        price = "price known" if probe.priced else "price unknown (costs are counted as 0)"
        out.write(f"{price}; this check cost USD {probe.cost_usd:.6f}")
