"""Pages for generation runs (admins only)."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from seke_app.insights.cascade import cascade_figures, priced
from seke_app.models import GenerationRun, RunItem
from seke_app.queue import QueueUnavailable
from seke_app.roles import admin_required, request_user
from seke_app.runs.forms import RunForm
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
    prefill = ("dataset", "prompt_version", "backend", "split")
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
    return render(request, "runs/run_new.html", {"form": form})


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
        # A model without a known price costs "unknown", not $0.
        "cheap_priced": priced(run.model_name),
        "strong_priced": priced(run.strong_model),
        "unpriced": [
            model
            for model in (run.model_name, run.strong_model)
            if model and run.backend == GenerationRun.Backend.OPENAI and not priced(model)
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
