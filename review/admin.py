from django.contrib import admin

from review.models import ReviewDecision, ReviewTask


@admin.register(ReviewTask)
class ReviewTaskAdmin(admin.ModelAdmin[ReviewTask]):
    list_display = ["code", "status", "priority", "holder", "lease_until"]
    list_filter = ["status"]
    raw_id_fields = ["annotation", "holder"]


@admin.register(ReviewDecision)
class ReviewDecisionAdmin(admin.ModelAdmin[ReviewDecision]):
    list_display = ["code", "action", "reviewer", "expression", "created_at", "undone_at"]
    list_filter = ["action"]
    raw_id_fields = ["task", "annotation", "image", "reviewer"]
