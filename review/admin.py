from django.contrib import admin

from review.models import GoldCheck, GoldQuestion, ReviewDecision, ReviewTask
from seke_app.admin import ViewOnlyAdmin


# Tasks change only through the review services (claim, decide, skip, close on a
# threshold change, re-review), which keep one live review per image; an edit here
# could break that, so the admin shows them and never writes them.
@admin.register(ReviewTask)
class ReviewTaskAdmin(ViewOnlyAdmin[ReviewTask]):
    list_display = ["code", "kind", "audit", "status", "priority", "holder", "closed_reason"]
    list_filter = ["status", "kind", "audit"]
    raw_id_fields = ["annotation", "holder", "opened_by"]


# Decisions are the audit trail (who decided what, when, over which machine values):
# the admin shows them and never writes them.
@admin.register(ReviewDecision)
class ReviewDecisionAdmin(ViewOnlyAdmin[ReviewDecision]):
    list_display = [
        "code",
        "kind",
        "audit",
        "action",
        "reviewer",
        "expression",
        "created_at",
        "undone_at",
    ]
    list_filter = ["action", "kind", "audit"]
    raw_id_fields = ["task", "annotation", "image", "reviewer"]


@admin.register(GoldQuestion)
class GoldQuestionAdmin(admin.ModelAdmin[GoldQuestion]):
    list_display = ["code", "image", "expression", "active", "created_at"]
    list_filter = ["active", "expression"]
    raw_id_fields = ["image"]


@admin.register(GoldCheck)
class GoldCheckAdmin(admin.ModelAdmin[GoldCheck]):
    list_display = ["code", "version", "parent", "status", "promoted_at"]
    list_filter = ["status"]
