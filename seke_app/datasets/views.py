"""Pages for datasets and images."""

from __future__ import annotations

import tempfile
from pathlib import Path
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from seke_app.datasets.forms import UploadForm
from seke_app.datasets.services import ImportRefused, dataset_import
from seke_app.engine.vocab import AU_NAMES
from seke_app.models import Dataset, FaceImage
from seke_app.roles import admin_required, annotator_required


def _get_image(code: UUID) -> FaceImage:
    return get_object_or_404(FaceImage.objects.select_related("dataset"), code=code)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    datasets = Dataset.objects.annotate(n_images=Count("images"))[:20]
    return render(request, "home.html", {"datasets": datasets})


@admin_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    datasets = Dataset.objects.annotate(
        n_images=Count("images"),
        n_expression=Count("images", filter=Q(images__known_expression__isnull=False)),
        n_va=Count("images", filter=Q(images__known_valence__isnull=False)),
        n_aus=Count("images", filter=Q(images__known_aus__isnull=False)),
    )
    return render(request, "datasets/dataset_list.html", {"datasets": datasets})


@admin_required
def dataset_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    dataset = get_object_or_404(Dataset, code=code)
    images = dataset.images.order_by("id")
    split = request.GET.get("split", "")
    if split:
        images = images.filter(split=split)
    page = Paginator(images, 60).get_page(request.GET.get("page"))
    splits = dataset.images.exclude(split="").values_list("split", flat=True).distinct().order_by()
    context = {"dataset": dataset, "page": page, "splits": sorted(splits), "split": split}
    return render(request, "datasets/dataset_detail.html", context)


@admin_required
def dataset_upload(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    report = None
    if request.method == "POST" and form.is_valid():
        with tempfile.TemporaryDirectory(dir=settings.DATA_DIR) as tmp:
            folder = Path(tmp)
            source = form.save_uploads(folder)
            try:
                report = dataset_import(
                    path=source,
                    dataset_name=form.cleaned_data["dataset"],
                    au_vocabulary=form.cleaned_data["au_vocabulary"] or None,
                    licence_note=form.cleaned_data["licence_note"],
                    user=request.user,  # type: ignore[arg-type]
                )
            except ImportRefused as exc:
                form.add_error(None, str(exc))
        if report is not None:
            messages.success(request, report.summary().splitlines()[0])
    return render(request, "datasets/dataset_upload.html", {"form": form, "report": report})


@annotator_required
def image_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    """The face, its known labels and its full history: machine answers and decisions."""
    image = _get_image(code)
    annotations = image.annotations.select_related("run", "prompt_version").order_by("-created_at")
    decisions = image.decisions.select_related("reviewer").order_by("-created_at")
    vocabulary = image.dataset.vocabulary()
    context = {
        "image": image,
        "annotations": annotations,
        "decisions": decisions,
        "expressions": vocabulary.expressions,
        "au_names": [(au, AU_NAMES[au]) for au in vocabulary.aus],
    }
    return render(request, "datasets/image_detail.html", context)


@annotator_required
def image_file(request: HttpRequest, code: UUID) -> FileResponse:
    image = _get_image(code)
    response = FileResponse(image.file.open("rb"))
    response["Cache-Control"] = "private, max-age=86400"
    return response
