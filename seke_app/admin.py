"""Django's admin for admins: datasets, runs and exports, and machine output to look at.

Machine output (annotations and their samples) is never edited (a human decision
is a new row pointing at it), so the admin shows it and refuses to add, change or
delete it. Deleting what it belongs to (a run, an image) is refused too once it
has annotations, since that would delete them with it.
"""

from typing import Any, TypeVar

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from seke_app.models import (
    Annotation,
    AnnotationSample,
    Dataset,
    FaceImage,
    GenerationRun,
    PromptVersion,
    RunBatch,
    RunItem,
)
from seke_app.models.exports import Export

_M = TypeVar("_M", bound=Model)


class ViewOnlyAdmin(admin.ModelAdmin[_M]):
    """An admin that lists and shows its rows (to whoever may view them), nothing more."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin[Dataset]):
    list_display = ["name", "au_vocabulary", "created_at"]
    search_fields = ["name"]


@admin.register(FaceImage)
class FaceImageAdmin(admin.ModelAdmin[FaceImage]):
    list_display = ["original_name", "dataset", "known_expression", "split", "width", "height"]
    list_filter = ["dataset", "known_expression", "split", "rejected"]
    search_fields = ["original_name", "sha256", "subject"]
    readonly_fields = ["code", "sha256", "file", "width", "height", "image_format"]


@admin.register(PromptVersion)
class PromptVersionAdmin(admin.ModelAdmin[PromptVersion]):
    list_display = ["number", "name", "is_active", "parent", "created_by", "created_at"]
    readonly_fields = ["code", "fingerprint"]


_ROUND_FIELDS = (
    "number",
    "batch_id",
    "status",
    "asked",
    "n_lines",
    "n_completed",
    "n_failed",
    "n_expired",
    "error",
    "created_at",
    "finished_at",
    "collected_at",
)


class RunBatchInline(admin.TabularInline[RunBatch, GenerationRun]):
    """A batch run's rounds, read-only: the endpoint's batches are the record."""

    model = RunBatch
    extra = 0
    can_delete = False
    readonly_fields = _ROUND_FIELDS
    fields = _ROUND_FIELDS

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(GenerationRun)
class GenerationRunAdmin(admin.ModelAdmin[GenerationRun]):
    list_display = ["label", "backend", "model_name", "strong_model", "status", "n_done", "n_total"]
    list_filter = ["status", "backend", "batch"]
    list_select_related = ["dataset"]
    readonly_fields = ["code", "number", "job_id"]
    inlines = [RunBatchInline]


@admin.register(RunItem)
class RunItemAdmin(admin.ModelAdmin[RunItem]):
    list_display = ["run", "image", "status", "attempts", "lease_until"]
    list_filter = ["status"]
    raw_id_fields = ["run", "image"]


class SampleInline(admin.TabularInline[AnnotationSample, Annotation]):
    model = AnnotationSample
    extra = 0
    can_delete = False
    readonly_fields = ["index", "kind", "stage", "raw_text", "parsed", "parse_error", "verdict"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Annotation)
class AnnotationAdmin(ViewOnlyAdmin[Annotation]):
    list_display = ["code", "run", "image", "expression", "confidence", "flagged", "stage"]
    list_filter = ["flagged", "stage", "expression"]
    raw_id_fields = ["run", "image", "prompt_version"]
    inlines = [SampleInline]


@admin.register(AnnotationSample)
class AnnotationSampleAdmin(ViewOnlyAdmin[AnnotationSample]):
    list_display = ["annotation", "index", "kind", "stage", "parse_error"]
    raw_id_fields = ["annotation"]


@admin.register(Export)
class ExportAdmin(admin.ModelAdmin[Export]):
    list_display = ["code", "kind", "dataset", "status", "created_at"]
    list_filter = ["kind", "status"]
    readonly_fields = ["code"]
