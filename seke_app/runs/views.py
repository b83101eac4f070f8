"""Pages for generation runs (admins only)."""

from __future__ import annotations

from urllib.parse import urlencode
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from seke_app.engine.llm.probe import CAPABILITIES, Answer
from seke_app.insights.cascade import cascade_figures
from seke_app.models import EndpointProbe, GenerationRun, RunItem
from seke_app.queue import QueueUnavailable
from seke_app.roles import admin_required, request_user
from seke_app.runs.backends import model_priced
from seke_app.runs.forms import RunForm
from seke_app.runs.probes import (
    ProbeRefused,
    endpoint_url,
    latest_check,
    model_or_default,
    probe_create,
)
from seke_app.runs.progress import run_progress_of
from seke_app.runs.services import RunRefused, run_cancel, run_resume, run_retry_failed

# The button that queues a stopped run again, and the one that re-queues the
# images of a run at work that no job holds; the stalled notice names the one shown.
RESUME = "Resume"
REQUEUE = "Re-queue waiting images"


def _get_run(code: UUID) -> GenerationRun:
    return get_object_or_404(
        GenerationRun.objects.select_related("dataset", "prompt_version"), code=code
    )


RUN_LIST_LIMIT = 100


def _list_context() -> dict[str, object]:
    runs = list(GenerationRun.objects.select_related("dataset", "prompt_version")[:RUN_LIST_LIMIT])
    # One query for the images in flight of every listed run (``is_settled`` per run).
    in_flight = set(
        RunItem.objects.filter(
            run__in=runs, status=RunItem.Status.LEASED, lease_until__gte=Now()
        ).values_list("run_id", flat=True)
    )
    polling = any(not run.is_finished() or run.id in in_flight for run in runs)
    return {"runs": runs, "polling": polling}


@admin_required
def run_list(request: HttpRequest) -> HttpResponse:
    return render(request, "runs/run_list.html", _list_context())


@admin_required
def run_rows(request: HttpRequest) -> HttpResponse:
    """The live table of the runs page, polled by htmx while a run is at work."""
    return render(request, "runs/_run_rows.html", _list_context())


@admin_required
def run_new(request: HttpRequest) -> HttpResponse:
    # Links (e.g. "re-annotate with this version") may prefill the form.
    prefill = ("dataset", "prompt_version", "backend", "split", "model_name")
    initial: dict[str, object] = {k: request.GET[k] for k in prefill if k in request.GET}
    if request.GET.get("only_unconfident") == "1":
        initial["only_unconfident"] = True
    form = RunForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            run = form.create(user=request_user(request))
        except (RunRefused, QueueUnavailable) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Run started on {run.n_total} images.")
            return redirect("run_detail", code=run.code)
    model_name = request.POST.get("model_name") or request.GET.get("model_name") or ""
    context = {"form": form, **_probe_context(model_name)}
    return render(request, "runs/run_new.html", context)


_MARKS = {Answer.YES: "✓", Answer.NO: "✗", Answer.UNKNOWN: "?"}


def _probe_context(model_name: str, error: str = "") -> dict[str, object]:
    """What the run form says about the endpoint's latest check of ``model_name``."""
    if not settings.OPENAI_API_KEY:
        return {"probe_configured": False, "probe_error": error}
    model = model_or_default(model_name)
    probe = latest_check(endpoint_url(), model)
    findings = []
    if probe is not None and probe.status == EndpointProbe.Status.DONE:
        for name, finding in probe.findings().items():
            # JSON object mode is checked only when the schema is refused.
            if name == "json_object" and finding.evidence == "not checked":
                continue
            findings.append(
                {"label": CAPABILITIES[name], "mark": _MARKS[finding.answer], **vars(finding)}
            )
    return {
        "probe_configured": True,
        "probe": probe,
        "probe_model": model,
        "probe_base_url": endpoint_url(),
        "probe_findings": findings,
        "probe_error": error,
    }


@admin_required
def endpoint_status(request: HttpRequest) -> HttpResponse:
    """The run form's note on the endpoint, polled by htmx while a check is at work."""
    context = _probe_context(request.GET.get("model_name", ""))
    return render(request, "runs/_endpoint_probe.html", context)


@require_POST
@admin_required
def endpoint_check(request: HttpRequest) -> HttpResponse:
    """Queue a check of the endpoint for the form's model; htmx gets the note back."""
    model_name = request.POST.get("model_name", "")
    error = ""
    try:
        probe_create(model_name=model_name, user=request_user(request))
    except (ProbeRefused, QueueUnavailable) as exc:
        error = str(exc)
    if request.headers.get("HX-Request") == "true":
        context = _probe_context(model_name, error)
        return render(request, "runs/_endpoint_probe.html", context)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, "The endpoint is being checked; the answers appear here.")
    query = urlencode({"backend": GenerationRun.Backend.OPENAI, "model_name": model_name})
    return redirect(f"{reverse('run_new')}?{query}")


def _progress_context(run: GenerationRun) -> dict[str, object]:
    progress = run_progress_of(run)
    return {
        "run": run,
        "percent": progress.percent,
        "rate": progress.rate,
        "eta": progress.eta_seconds,
        "in_flight": progress.in_flight,
        # The page refreshes until the run's counters change no more.
        "settled": progress.settled,
        # Images a stopped run will not annotate unless it is resumed.
        "not_started": progress.not_started,
        "awaiting_review": progress.awaiting_review,
        "errors": progress.errors,
        "stalled": progress.stalled,
        "resume_label": {"resume": RESUME, "requeue": REQUEUE}.get(progress.resume or ""),
        "workers": progress.workers_note,
        "rounds": list(run.batches.all()) if run.batch else [],
        # A model without a known price costs "unknown", not $0.
        "cheap_priced": model_priced(run.backend, run.model_name),
        "strong_priced": model_priced(run.backend, run.strong_model),
        "unpriced": [
            model
            for model in (run.model_name, run.strong_model)
            if model and not model_priced(run.backend, model)
        ],
    }


@admin_required
def run_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    run = _get_run(code)
    context = _progress_context(run) | {"cascade": cascade_figures(run=run)}
    return render(request, "runs/run_detail.html", context)


@admin_required
def run_progress(request: HttpRequest, code: UUID) -> HttpResponse:
    """The live part of the run page, polled by htmx."""
    run = _get_run(code)
    return render(request, "runs/_run_progress.html", _progress_context(run))


@require_POST
@admin_required
def run_rename_view(request: HttpRequest, code: UUID) -> HttpResponse:
    run = _get_run(code)
    try:
        run.rename(request.POST.get("name", ""))
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"The run is now called {run.label}.")
    return redirect("run_detail", code=run.code)


def _act(request: HttpRequest, code: UUID, action: str) -> HttpResponse:
    run = _get_run(code)
    try:
        if action == "cancel":
            run_cancel(run=run)
            if run.batch:
                messages.success(
                    request, "Run cancelled: no new round is sent, and its open batch is cancelled."
                )
            else:
                messages.success(request, "Run cancelled: no new image is started.")
        elif action == "resume":
            stopped = run.is_finished()
            count = run_resume(run=run)
            if stopped:
                messages.success(request, f"Run resumed: {count} images queued.")
            else:
                messages.success(
                    request, f"{count} waiting images queued again; the jobs at work go on."
                )
        else:
            count = run_retry_failed(run=run)
            messages.success(request, f"{count} failed images queued again.")
    except (RunRefused, QueueUnavailable) as exc:
        messages.error(request, str(exc))
    return redirect("run_detail", code=run.code)


@require_POST
@admin_required
def run_cancel_view(request: HttpRequest, code: UUID) -> HttpResponse:
    return _act(request, code, "cancel")


@require_POST
@admin_required
def run_resume_view(request: HttpRequest, code: UUID) -> HttpResponse:
    return _act(request, code, "resume")


@require_POST
@admin_required
def run_retry_view(request: HttpRequest, code: UUID) -> HttpResponse:
    return _act(request, code, "retry")
