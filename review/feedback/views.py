"""Pages for prompt versions: history, proposals from reviews, gold checks, promotion."""

from __future__ import annotations

import difflib
import json
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from review.feedback.services import (
    FeedbackRefused,
    gold_check_create,
    prompt_version_create,
    prompt_version_promote,
    prompt_version_propose,
)
from seke_app.engine.feedback import FeedbackOptions
from seke_app.models import GenerationRun, PromptVersion
from seke_app.queue import QueueUnavailable
from seke_app.roles import admin_required, request_user
from seke_app.runs.backends import default_model
from seke_app.runs.prompts import prompt_version_active


def _get_version(code: UUID) -> PromptVersion:
    return get_object_or_404(
        PromptVersion.objects.select_related("parent", "created_by"), code=code
    )


# The runs the form offers to learn from: the latest ones.
RUN_CHOICES = 50


@admin_required
def version_list(request: HttpRequest) -> HttpResponse:
    prompt_version_active()
    versions = PromptVersion.objects.select_related("parent", "created_by").order_by("-number")
    return render(request, "review/feedback/version_list.html", {"versions": versions})


def _diff(parent: PromptVersion | None, version: PromptVersion) -> list[str]:
    if parent is None:
        return []

    def lines(v: PromptVersion) -> list[str]:
        exemplars = json.dumps(v.exemplars, indent=1, sort_keys=True).splitlines()
        return [*v.knowledge_text.splitlines(), "", *v.rule_notes.splitlines(), "", *exemplars]

    return list(
        difflib.unified_diff(
            lines(parent), lines(version), f"v{parent.number}", f"v{version.number}", lineterm=""
        )
    )


def _checks_context(version: PromptVersion) -> dict[str, Any]:
    checks = list(version.gold_checks.select_related("parent", "promoted_by"))
    return {
        "version": version,
        "checks": checks,
        "checks_polling": any(not check.is_settled() for check in checks),
    }


@admin_required
def version_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    version = _get_version(code)
    rerun = reverse("run_new") + f"?prompt_version={version.code}&only_unconfident=1"
    context = _checks_context(version) | {
        "diff": _diff(version.parent, version),
        "rerun_url": rerun,
        "default_model": default_model("offline"),
    }
    return render(request, "review/feedback/version_detail.html", context)


@admin_required
def version_checks(request: HttpRequest, code: UUID) -> HttpResponse:
    """The version's gold-set checks, polled by htmx until every one has ended."""
    context = _checks_context(_get_version(code))
    return render(request, "review/feedback/_gold_checks.html", context)


def _runs_from(request: HttpRequest) -> list[GenerationRun]:
    codes = request.GET.getlist("runs") or request.POST.getlist("runs")
    return list(GenerationRun.objects.filter(code__in=codes).select_related("dataset"))


def _options(request: HttpRequest) -> FeedbackOptions:
    try:
        max_exemplars = int(request.GET.get("max_exemplars", "6"))
    except ValueError:
        max_exemplars = 6
    return FeedbackOptions(
        max_exemplars=max(0, min(max_exemplars, 20)),
        send_images=request.GET.get("send_images") == "1",
    )


@admin_required
def version_new(request: HttpRequest) -> HttpResponse:
    parent = prompt_version_active()
    runs = _runs_from(request)
    context: dict[str, Any] = {
        "parent": parent,
        "all_runs": GenerationRun.objects.select_related("dataset")[:RUN_CHOICES],
        "chosen": {str(r.code) for r in runs},
        "options": _options(request),
    }
    if request.method == "POST":
        return _create(request, parent, context)
    if runs:
        try:
            proposal = prompt_version_propose(runs=runs, options=_options(request))
        except FeedbackRefused as exc:
            messages.error(request, str(exc))
        else:
            context["proposal"] = proposal
            context["exemplars_json"] = json.dumps(proposal.exemplars, indent=1)
            context["calibration_json"] = json.dumps(proposal.calibration, indent=1)
    return render(request, "review/feedback/version_new.html", context)


def _create(request: HttpRequest, parent: PromptVersion, context: dict[str, Any]) -> HttpResponse:
    try:
        exemplars = json.loads(request.POST.get("exemplars") or "[]")
        calibration = json.loads(request.POST.get("calibration") or "{}")
        if not isinstance(exemplars, list) or not isinstance(calibration, dict):
            raise ValueError("exemplars must be a JSON list and calibration a JSON object")
        version = prompt_version_create(
            parent=parent,
            name=request.POST.get("name", ""),
            knowledge_text=request.POST.get("knowledge_text", ""),
            rule_notes=request.POST.get("rule_notes", ""),
            exemplars=exemplars,
            calibration=calibration,
            user=request_user(request),
            runs=_runs_from(request),
        )
    except (ValueError, FeedbackRefused) as exc:
        messages.error(request, f"Not saved: {exc}")
        context.update(
            posted=request.POST,
            exemplars_json=request.POST.get("exemplars", ""),
            calibration_json=request.POST.get("calibration", ""),
        )
        return render(request, "review/feedback/version_new.html", context, status=400)
    messages.success(
        request, f"Saved v{version.number}. Check it on the gold set before promoting."
    )
    return redirect("review:version_detail", code=version.code)


@require_POST
@admin_required
def version_gold_check(request: HttpRequest, code: UUID) -> HttpResponse:
    version = _get_version(code)
    backend = request.POST.get("backend", "offline")
    try:
        gold_check_create(
            version=version,
            backend=backend,
            model_name=request.POST.get("model_name") or default_model(backend),
            include_imported=request.POST.get("include_imported") == "on",
            user=request_user(request),
        )
    except (FeedbackRefused, QueueUnavailable) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, "Gold-set check queued: the version and its parent run side by side."
        )
    return redirect("review:version_detail", code=version.code)


@require_POST
@admin_required
def version_promote(request: HttpRequest, code: UUID) -> HttpResponse:
    version = _get_version(code)
    try:
        prompt_version_promote(
            version=version,
            user=request_user(request),
            override_reason=request.POST.get("override_reason", ""),
        )
    except FeedbackRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"v{version.number} is now the active prompt version.")
    return redirect("review:version_detail", code=version.code)
