"""Dashboards (admins only): a run's figures and calibration, and comparisons."""

from __future__ import annotations

import math
from uuid import UUID

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.http import require_POST

from seke_app.insights.cascade import cascade_figures
from seke_app.insights.certificates import (
    CertificateRefused,
    Targets,
    run_audits_request,
    run_certificate_latest,
    run_certify,
    run_recalibration,
)
from seke_app.insights.comparisons import Side, compare
from seke_app.insights.dashboards import (
    run_dashboard,
    run_set_threshold,
    run_set_threshold_from_curve,
)
from seke_app.insights.forms import AuditsForm, CertifyForm, CompareForm, ThresholdForm
from seke_app.models import GenerationRun
from seke_app.models.runs import ThresholdChange
from seke_app.roles import admin_required, request_user
from seke_app.runs.threshold import ThresholdRefused


def _get_run(code: UUID) -> GenerationRun:
    return get_object_or_404(
        GenerationRun.objects.select_related("dataset", "prompt_version"), code=code
    )


@admin_required
def run_dashboard_view(request: HttpRequest, code: UUID) -> HttpResponse:
    run = _get_run(code)
    dashboard = run_dashboard(run=run)
    context = {
        "run": run,
        "dashboard": dashboard,
        "charts": dashboard.chart_data(),
        "threshold_form": ThresholdForm(),
        "certify_form": CertifyForm(),
        "certificate": run_certificate_latest(run),
        "recalibration": run_recalibration(run),
        "cascade": cascade_figures(run=run),
        # Until the run is settled the page reloads itself (its figures still move).
        "settled": run.is_settled(),
    }
    return render(request, "insights/run_dashboard.html", context)


@require_POST
@admin_required
def run_certify_view(request: HttpRequest, code: UUID) -> HttpResponse:
    run = _get_run(code)
    back = reverse("run_dashboard", args=[run.code]) + "#certificate"
    form = CertifyForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(str(e) for errors in form.errors.values() for e in errors)
        messages.error(request, f"Not certified: {problems}")
        return redirect(back)
    try:
        certificate = run_certify(
            run=run, targets=Targets(**form.targets()), user=request_user(request)
        )
    except (CertificateRefused, ThresholdRefused) as exc:
        messages.error(request, f"Not certified: {exc}")
        return redirect(back)
    if certificate.certified:
        assert certificate.change is not None
        messages.success(
            request,
            f"{certificate.sentence()} The threshold is set: {_tasks_moved(certificate.change)}",
        )
    else:
        messages.warning(request, certificate.sentence())
    return redirect(back)


@require_POST
@admin_required
def run_audits_view(request: HttpRequest, code: UUID) -> HttpResponse:
    run = _get_run(code)
    back = reverse("run_dashboard", args=[run.code]) + "#certificate"
    form = AuditsForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Nothing opened: give a whole number of audit reviews, at least 1.")
        return redirect(back)
    try:
        opened = run_audits_request(run=run, n=form.cleaned_data["n"])
    except CertificateRefused as exc:
        messages.error(request, f"Nothing opened: {exc}")
        return redirect(back)
    messages.success(
        request,
        f"{opened} image{pluralize(opened)} drawn at random from this run added to the blind "
        "audit; certify again once they are reviewed.",
    )
    return redirect(back)


@require_POST
@admin_required
def run_threshold_view(request: HttpRequest, code: UUID) -> HttpResponse:
    run = _get_run(code)
    if "threshold" in request.POST:
        return _set_threshold_by_hand(request, run)
    form = ThresholdForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Not changed: give a percentage between 0 and 100.")
    else:
        old = run.review_threshold
        try:
            point = run_set_threshold_from_curve(
                run=run, user=request_user(request), **form.fractions()
            )
        except ThresholdRefused as exc:
            messages.error(request, f"Not changed: {exc}")
        else:
            error = "—" if point.error_rate is None else f"{point.error_rate:.1%}"
            change = run.threshold_changes.first()
            assert change is not None
            messages.success(
                request,
                f"Review threshold changed from {old:.3f} to {point.threshold:.3f}: "
                f"{point.review_share:.1%} of the scored annotations fall under it "
                f"({error} errors among those auto-accepted); {_tasks_moved(change)}",
            )
    return redirect(reverse("run_dashboard", args=[run.code]) + "#calibration")


def _tasks_moved(change: ThresholdChange) -> str:
    return (
        f"{change.n_opened} review task{pluralize(change.n_opened)} opened, "
        f"{change.n_closed} closed as now confident."
    )


def _set_threshold_by_hand(request: HttpRequest, run: GenerationRun) -> HttpResponse:
    back = reverse("run_dashboard", args=[run.code]) + "#calibration"
    try:
        threshold = float(request.POST.get("threshold", ""))
    except ValueError:
        messages.error(request, "Not changed: give the threshold as a number between 0 and 1.")
        return redirect(back)
    if not math.isfinite(threshold):
        messages.error(request, "Not changed: give the threshold as a number between 0 and 1.")
        return redirect(back)
    old = run.review_threshold
    try:
        change = run_set_threshold(run=run, threshold=threshold, user=request_user(request))
    except ThresholdRefused as exc:
        messages.error(request, f"Not changed: {exc}")
        return redirect(back)
    messages.success(
        request,
        f"Review threshold changed from {old:.3f} to {threshold:.3f}: {_tasks_moved(change)}",
    )
    return redirect(back)


@admin_required
def compare_view(request: HttpRequest) -> HttpResponse:
    form = CompareForm(request.GET or None)
    comparison = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        if data.get("a") is not None:
            comparison = compare(a=Side.of_run(data["a"]), b=Side.of_run(data["b"]))
        elif data.get("va") is not None:
            comparison = compare(a=Side.of_version(data["va"]), b=Side.of_version(data["vb"]))
    context = {
        "form": form,
        "comparison": comparison,
        "charts": comparison.chart_data() if comparison else None,
    }
    return render(request, "insights/compare.html", context)
