"""Pages for datasets and images."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from seke_app.datasets.faces import face_rows
from seke_app.datasets.forms import UploadForm
from seke_app.datasets.listing import datasets_counted
from seke_app.datasets.services import (
    ImportRefused,
    dataset_import_cancel,
    dataset_import_create,
    upload_too_large,
)
from seke_app.datasets.uploads import (
    ImportUploadHandler,
    content_length,
    discard_folder,
    incoming_folder,
)
from seke_app.engine.ingest import mib
from seke_app.engine.vocab import AU_NAMES
from seke_app.insights.overview import home_overview
from seke_app.models import Dataset, FaceImage
from seke_app.models.datasets import DatasetImport
from seke_app.queue import QueueUnavailable
from seke_app.roles import admin_required, annotator_required, is_admin, request_user

RECENT_IMPORTS = 20
FACES_PER_PAGE = 60


def _get_image(code: UUID) -> FaceImage:
    return get_object_or_404(FaceImage.objects.select_related("dataset"), code=code)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    overview = home_overview(admin=is_admin(request.user))
    return render(request, "home.html", {"overview": overview})


def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for whatever a page links: the SVG icon."""
    return redirect(static("favicon.svg"))


@admin_required
def home_live(request: HttpRequest) -> HttpResponse:
    """The home page's live part (runs at work, review, exports), polled by htmx."""
    return render(request, "_home_live.html", {"overview": home_overview(admin=True)})


@admin_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    return render(request, "datasets/dataset_list.html", {"datasets": datasets_counted()})


@admin_required
def dataset_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    dataset = get_object_or_404(Dataset, code=code)
    images = dataset.images.order_by("id")
    split = request.GET.get("split", "")
    if split:
        images = images.filter(split=split)
    page = Paginator(images, FACES_PER_PAGE).get_page(request.GET.get("page"))
    splits = dataset.images.exclude(split="").values_list("split", flat=True).distinct().order_by()
    context = {
        "dataset": dataset,
        "page": page,
        "faces": face_rows(list(page)),
        "splits": sorted(splits),
        "split": split,
    }
    return render(request, "datasets/dataset_detail.html", context)


def _get_import(code: UUID) -> DatasetImport:
    return get_object_or_404(DatasetImport.objects.select_related("created_by"), code=code)


def _recent_imports() -> dict[str, object]:
    imports = list(DatasetImport.objects.select_related("created_by", "dataset")[:RECENT_IMPORTS])
    return {"imports": imports, "polling": any(not job.is_settled() for job in imports)}


def _upload_page(
    request: HttpRequest, form: UploadForm, *, refusal: str = "", status: int = 200
) -> HttpResponse:
    context = {"form": form, "refusal": refusal, **_recent_imports()}
    return render(request, "datasets/dataset_upload.html", context, status=status)


@admin_required
def import_rows(request: HttpRequest) -> HttpResponse:
    """The recent imports on the import page, polled by htmx while one is at work."""
    return render(request, "datasets/_import_rows.html", _recent_imports())


# The CSRF check reads the form, which makes Django read the whole body through
# its upload handlers. This view first refuses a body over SEKE_MAX_UPLOAD_MB
# unread and installs the handler that writes to the data directory; the CSRF
# check follows in ``_dataset_upload_post`` (Django's documented pattern for
# changing upload handlers). A refusal changes nothing, so it needs no token.
@csrf_exempt
@admin_required
def dataset_upload(request: HttpRequest) -> HttpResponse:
    """The import form; a valid upload becomes a background import, followed on its page."""
    if request.method != "POST":
        return _upload_page(request, UploadForm())
    refusal = upload_too_large(content_length(request))
    if refusal:
        return _upload_page(request, UploadForm(), refusal=refusal, status=413)
    folder = incoming_folder()
    request.upload_handlers = [ImportUploadHandler(request, folder)]
    try:
        return _dataset_upload_post(request)
    finally:
        discard_folder(folder)


@csrf_protect
def _dataset_upload_post(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _upload_page(request, form)
    try:
        job = dataset_import_create(
            uploads=form.cleaned_data["files"],
            dataset_name=form.cleaned_data["dataset"],
            au_vocabulary=form.cleaned_data["au_vocabulary"] or None,
            licence_note=form.cleaned_data["licence_note"],
            user=request_user(request),
        )
    except (ImportRefused, QueueUnavailable) as exc:
        form.add_error(None, str(exc))
        return _upload_page(request, form)
    return redirect("import_detail", code=job.code)


def _import_context(job: DatasetImport) -> dict[str, object]:
    dataset = job.dataset or Dataset.objects.filter(name=job.dataset_name).first()
    return {
        "job": job,
        "dataset": dataset,
        "settled": job.is_settled(),
        "percent": round(job.progress * 100, 1),
        # In MiB, the unit SEKE_MAX_UPLOAD_MB is set in.
        "upload_size": mib(job.upload_size),
    }


@admin_required
def import_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    context = _import_context(_get_import(code))
    return render(request, "datasets/import_detail.html", context)


@admin_required
def import_progress(request: HttpRequest, code: UUID) -> HttpResponse:
    """The live part of the import page, polled by htmx until the import ends."""
    context = _import_context(_get_import(code))
    return render(request, "datasets/_import_progress.html", context)


@require_POST
@admin_required
def import_cancel_view(request: HttpRequest, code: UUID) -> HttpResponse:
    job = _get_import(code)
    try:
        dataset_import_cancel(job=job)
    except ImportRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Import cancelled.")
    return redirect("import_detail", code=job.code)


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
    """The face's file, read from the media storage (a local folder or a bucket) and
    relayed, never a redirect to the bucket: every image is checked against the
    reader's role, its URL stays the same (so the browser's cache keeps it), faces
    are small, and the bucket need not be reachable from reviewers' browsers."""
    image = _get_image(code)
    response = FileResponse(image.file.open("rb"))
    response["Cache-Control"] = "private, max-age=86400"
    return response
