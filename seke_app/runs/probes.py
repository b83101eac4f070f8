"""Checking what the configured OpenAI-compatible endpoint supports, and using it.

A check (``probe_create``) is an ``EndpointProbe`` row and one job on the
``default`` queue, enqueued after commit; the job (``probe_run``) makes the few
cheap calls of ``seke_app.engine.llm.probe`` and stores the answers. It is a job
rather than part of the web request because a real endpoint takes seconds per
call and a slow one up to the probe's timeout for each; the run form follows it
and shows the answers when they are in. The command runs the same service in
its own process (``enqueue=False``).

``latest_probe`` is the latest finished check of a model on an endpoint;
``configured_for`` turns it into the client's starting settings, so that runs do
not send ``n``, a JSON schema or log-probability requests the endpoint lacks.
"""

from __future__ import annotations

import dataclasses
import logging

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from seke_app.engine.llm.client import OPENAI_BASE_URL, ClientConfig, VLLMClient
from seke_app.engine.llm.probe import STEPS, Answer, ProbeFailed, format_mode, probe_endpoint
from seke_app.models.probes import EndpointProbe
from seke_app.queue import get_queue

log = logging.getLogger("seke.probes")

CHECK_ENDPOINT = "seke_app.runs.jobs.check_endpoint"
# Each probe call gives up after this long (or SEKE_OPENAI_TIMEOUT if shorter) and
# is not retried: a check is a handful of calls, and no answer is itself an answer.
PROBE_TIMEOUT_S = 20.0

Status = EndpointProbe.Status


class ProbeRefused(Exception):
    """A check cannot be made as asked; the message says what to change."""


def endpoint_url() -> str:
    """The configured endpoint's base URL (OpenAI's when none is set), as stored."""
    return (settings.OPENAI_BASE_URL or OPENAI_BASE_URL).rstrip("/")


def model_or_default(model_name: str) -> str:
    return model_name.strip() or settings.SEKE_MODEL


def probe_create(
    *, model_name: str = "", user: AbstractBaseUser | None = None, enqueue: bool = True
) -> EndpointProbe:
    """Record a check of ``model_name`` (empty: SEKE_MODEL) on the configured endpoint
    and queue its job once committed (``enqueue=False``: run ``probe_run`` yourself)."""
    if not settings.OPENAI_API_KEY:
        raise ProbeRefused(
            "no OPENAI_API_KEY is configured: set it (and OPENAI_BASE_URL for a"
            " compatible server) to check the endpoint"
        )
    if enqueue:
        # Checked before anything is written: a check that cannot be queued is not made.
        get_queue("default")
    with transaction.atomic():
        probe = EndpointProbe.objects.create(
            base_url=endpoint_url(),
            model_name=model_or_default(model_name),
            n_total=STEPS,
            created_by=user,  # type: ignore[misc]
        )
        if enqueue:
            transaction.on_commit(lambda: probe.enqueue("default", CHECK_ENDPOINT))
    return probe


def probe_client(model_name: str) -> VLLMClient:
    """A client for checking ``model_name``: short timeouts, no retries, one call at a time."""
    return VLLMClient(
        ClientConfig(
            base_url=settings.OPENAI_BASE_URL,
            api_key=settings.OPENAI_API_KEY,
            model=model_name,
            timeout_s=min(settings.OPENAI_TIMEOUT, PROBE_TIMEOUT_S),
            max_retries=0,
            max_concurrency=1,
        )
    )


def probe_run(*, probe_id: int) -> None:
    """Make the check's calls and store the answers; the job's one call."""
    probe = EndpointProbe.objects.get(id=probe_id)
    if not probe.claim():
        return
    rows = EndpointProbe.objects.filter(id=probe_id, status=Status.RUNNING)

    def progress(done: int) -> None:
        rows.update(n_done=done)

    try:
        with probe_client(probe.model_name) as client:
            result = probe_endpoint(client, progress=progress)
    except ProbeFailed as exc:
        rows.update(status=Status.FAILED, finished_at=timezone.now(), error=str(exc))
        return
    except Exception as exc:
        log.exception("endpoint check %s failed", probe.code)
        rows.update(
            status=Status.FAILED, finished_at=timezone.now(), error=f"{type(exc).__name__}: {exc}"
        )
        return
    probe.record(result)
    fields = ["evidence", "single_call_s", "median_call_s", "priced", "cost_usd"]
    values = {name: getattr(probe, name) for name in fields}
    values.update({name: finding.answer.value for name, finding in result.findings.items()})
    rows.update(status=Status.DONE, finished_at=timezone.now(), n_done=STEPS, **values)


def latest_probe(base_url: str, model_name: str) -> EndpointProbe | None:
    """The latest finished check of ``model_name`` at ``base_url``, or None."""
    return (
        EndpointProbe.objects.filter(
            base_url=base_url.rstrip("/"), model_name=model_name, status=Status.DONE
        )
        .order_by("-finished_at", "-id")
        .first()
    )


def latest_check(base_url: str, model_name: str) -> EndpointProbe | None:
    """The latest check of ``model_name`` at ``base_url`` whatever its state, or None."""
    return (
        EndpointProbe.objects.filter(base_url=base_url.rstrip("/"), model_name=model_name)
        .order_by("-created_at", "-id")
        .first()
    )


def configured_for(config: ClientConfig, probe: EndpointProbe | None) -> ClientConfig:
    """``config`` starting with what ``probe`` found: no ``n``, the format mode that
    works, log-probabilities off, where the endpoint lacks them. Unknown answers
    (and no probe) leave the client to find out as it goes."""
    if probe is None:
        return config
    known = {Answer.YES.value: True, Answer.NO.value: False}
    mode = format_mode(probe.findings())
    return dataclasses.replace(
        config,
        supports_n=known.get(probe.n),
        supports_logprobs=known.get(probe.logprobs),
        format_mode=mode if mode is not None else config.format_mode,
    )


def images_refused(probe: EndpointProbe | None) -> str | None:
    """Why a run cannot use the endpoint (it refused images when checked), or None."""
    found = _found_no(probe, "images")
    if probe is None or found is None:
        return None
    when, reason = found
    return (
        f"{probe.model_name} did not take images when checked at {when} ({reason}); every"
        " face is sent as an image: choose a vision model, or check the endpoint again"
    )


def batch_refused(probe: EndpointProbe | None) -> str | None:
    """Why a batch run cannot use the endpoint (it had no Batch API when checked), or None."""
    found = _found_no(probe, "batch")
    if probe is None or found is None:
        return None
    when, reason = found
    return (
        f"the endpoint had no Batch API when {probe.model_name} was checked at {when}"
        f" ({reason}): run without the Batch API, or check the endpoint again"
    )


def _found_no(probe: EndpointProbe | None, capability: str) -> tuple[str, str] | None:
    """When ``probe`` found the endpoint without ``capability``, and its evidence."""
    if probe is None or getattr(probe, capability) != Answer.NO.value:
        return None
    when = timezone.localtime(probe.finished_at).strftime("%Y-%m-%d %H:%M")
    return when, str(probe.evidence.get(capability, ""))
