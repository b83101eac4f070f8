"""Pages for exports (admins only): the form per dataset, the list, progress, download."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from seke_app.exports.forms import ExportForm
from seke_app.exports.options import describe_options
from seke_app.exports.progress import export_progress_of
from seke_app.exports.services import ExportRefused, export_cancel, export_create, export_file
from seke_app.media import download_response, exports_storage
from seke_app.models import Dataset
from seke_app.models.exports import Export
from seke_app.queue import QueueUnavailable
from seke_app.roles import admin_required

LIST_LIMIT = 100


def _get_export(code: UUID) -> Export:
    return get_object_or_404(Export.objects.select_related("dataset", "created_by"), code=code)


def _recent_exports() -> list[Export]:
    return list(Export.objects.select_related("dataset", "created_by")[:LIST_LIMIT])


def _list_context() -> dict[str, object]:
    exports = _recent_exports()
    return {"exports": exports, "polling": any(not e.is_settled() for e in exports)}


@admin_required
def export_list(request: HttpRequest) -> HttpResponse:
    context = _list_context() | {"datasets": Dataset.objects.all()}
    return render(request, "exports/export_list.html", context)


@admin_required
def export_rows(request: HttpRequest) -> HttpResponse:
    """The live table of the exports page, polled by htmx while an export runs."""
    return render(request, "exports/_export_rows.html", _list_context())


@admin_required
def export_new(request: HttpRequest, code: UUID) -> HttpResponse:
    dataset = get_object_or_404(Dataset, code=code)
    form = ExportForm(request.POST or None, dataset=dataset)
    if request.method == "POST" and form.is_valid():
        try:
            export = export_create(
                dataset=dataset,
                kind=form.cleaned_data["kind"],
                options=form.options(),
                user=request.user,  # type: ignore[arg-type]
            )
        except (ExportRefused, QueueUnavailable) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Export queued.")
            return redirect("export_detail", code=export.code)
    return render(request, "exports/export_new.html", {"form": form, "dataset": dataset})


def _progress_context(export: Export) -> dict[str, object]:
    progress = export_progress_of(export)
    return {
        "export": export,
        "settled": progress.settled,
        "percent": progress.percent,
        "n_images": progress.n_images,
        "options": describe_options(export),
        "awaiting_review": progress.awaiting_review,
    }


@admin_required
def export_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    context = _progress_context(_get_export(code))
    return render(request, "exports/export_detail.html", context)


@admin_required
def export_progress(request: HttpRequest, code: UUID) -> HttpResponse:
    """The live part of the export page, polled by htmx."""
    context = _progress_context(_get_export(code))
    return render(request, "exports/_export_progress.html", context)


@require_POST
@admin_required
def export_cancel_view(request: HttpRequest, code: UUID) -> HttpResponse:
    export = _get_export(code)
    try:
        export_cancel(export=export)
    except ExportRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Export cancelled.")
    return redirect("export_detail", code=export.code)


@admin_required
def export_download(request: HttpRequest, code: UUID) -> HttpResponseBase:
    export = _get_export(code)
    try:
        return export_file_response(export)
    except ExportRefused as exc:
        messages.error(request, str(exc))
        return redirect("export_detail", code=export.code)


def export_file_response(export: Export) -> HttpResponseBase:
    """The export's file as a download, or ExportRefused saying why there is none.

    The page's download and ``GET /api/v1/exports/{code}/download`` both answer with it:
    the file itself from a local folder, a redirect to a short-lived link from a bucket
    (``seke_app.media.download_response`` says why).
    """
    name = export_file(export)
    return download_response(exports_storage(), name, filename=export.file_name())
