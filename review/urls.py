from django.urls import path

from review.feedback import views as feedback_views
from review.quality import views as quality_views
from review.tasks import views

app_name = "review"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("start", views.start, name="start"),
    path("undo", views.undo, name="undo"),
    path("task/<uuid:code>/", views.task_page, name="task"),
    path("task/<uuid:code>/decide", views.decide, name="decide"),
    path("task/<uuid:code>/skip", views.skip, name="skip"),
    path("task/<uuid:code>/panel", views.task_panel, name="panel"),
    path("task/<uuid:code>/ahead", views.ahead, name="ahead"),
    path("release", views.release, name="release"),
    path("image/<uuid:code>/rereview", views.rereview, name="rereview"),
    path("quality/", quality_views.quality, name="quality"),
    path("gold/image/<uuid:code>", quality_views.gold_mark, name="gold_mark"),
    path("gold/<uuid:code>/retire", quality_views.gold_retire, name="gold_retire"),
    path("versions/", feedback_views.version_list, name="version_list"),
    path("versions/new/", feedback_views.version_new, name="version_new"),
    path("versions/<uuid:code>/", feedback_views.version_detail, name="version_detail"),
    path(
        "versions/<uuid:code>/gold-check",
        feedback_views.version_gold_check,
        name="version_gold_check",
    ),
    path("versions/<uuid:code>/promote", feedback_views.version_promote, name="version_promote"),
    path("versions/<uuid:code>/checks", feedback_views.version_checks, name="version_checks"),
]
