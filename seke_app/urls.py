from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from seke_app.api import views as api_views
from seke_app.api.core import mounted_api, not_found_view
from seke_app.datasets import views as dataset_views
from seke_app.exports import views as export_views
from seke_app.health import healthz
from seke_app.insights import views as insight_views
from seke_app.runs import views as run_views
from seke_app.webhooks import views as webhook_views

urlpatterns = [
    path("", dataset_views.home, name="home"),
    path("home/live", dataset_views.home_live, name="home_live"),
    path("favicon.ico", dataset_views.favicon, name="favicon"),
    # For load balancers and monitors: no log-in, never cached (seke_app/health.py).
    path("healthz", healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("datasets/", dataset_views.dataset_list, name="dataset_list"),
    path("datasets/upload/", dataset_views.dataset_upload, name="dataset_upload"),
    path("imports/rows", dataset_views.import_rows, name="import_rows"),
    path("imports/<uuid:code>/", dataset_views.import_detail, name="import_detail"),
    path("imports/<uuid:code>/progress", dataset_views.import_progress, name="import_progress"),
    path("imports/<uuid:code>/cancel", dataset_views.import_cancel_view, name="import_cancel"),
    path("datasets/<uuid:code>/", dataset_views.dataset_detail, name="dataset_detail"),
    path("images/<uuid:code>/", dataset_views.image_detail, name="image_detail"),
    path("images/<uuid:code>/file", dataset_views.image_file, name="image_file"),
    path("runs/", run_views.run_list, name="run_list"),
    path("runs/rows", run_views.run_rows, name="run_rows"),
    path("runs/new/", run_views.run_new, name="run_new"),
    path("runs/endpoint/check", run_views.endpoint_check, name="endpoint_check"),
    path("runs/endpoint/status", run_views.endpoint_status, name="endpoint_status"),
    path("runs/<uuid:code>/", run_views.run_detail, name="run_detail"),
    path("runs/<uuid:code>/progress", run_views.run_progress, name="run_progress"),
    path("runs/<uuid:code>/cancel", run_views.run_cancel_view, name="run_cancel"),
    path("runs/<uuid:code>/resume", run_views.run_resume_view, name="run_resume"),
    path("runs/<uuid:code>/retry", run_views.run_retry_view, name="run_retry"),
    path("runs/<uuid:code>/rename", run_views.run_rename_view, name="run_rename"),
    path("review/", include("review.urls")),
    path("account/", api_views.account, name="account"),
    path("account/tokens/<int:pk>/revoke", api_views.token_revoke_view, name="token_revoke"),
    path("api/", mounted_api().urls),
    re_path(r"^api/(?P<rest>.*)$", not_found_view),
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
]

# Exports of the curated dataset.

urlpatterns += [
    path("exports/", export_views.export_list, name="export_list"),
    path("exports/rows", export_views.export_rows, name="export_rows"),
    path("datasets/<uuid:code>/export/", export_views.export_new, name="export_new"),
    path("exports/<uuid:code>/", export_views.export_detail, name="export_detail"),
    path("exports/<uuid:code>/progress", export_views.export_progress, name="export_progress"),
    path("exports/<uuid:code>/cancel", export_views.export_cancel_view, name="export_cancel"),
    path("exports/<uuid:code>/download", export_views.export_download, name="export_download"),
]

# Dashboards and comparisons.

urlpatterns += [
    path("runs/<uuid:code>/dashboard", insight_views.run_dashboard_view, name="run_dashboard"),
    path("runs/<uuid:code>/threshold", insight_views.run_threshold_view, name="run_threshold"),
    path("runs/<uuid:code>/certify", insight_views.run_certify_view, name="run_certify"),
    path("runs/<uuid:code>/audits", insight_views.run_audits_view, name="run_audits"),
    path("compare", insight_views.compare_view, name="compare"),
]

# Webhooks: URLs told about events (admins).

urlpatterns += [
    path("webhooks/", webhook_views.webhook_list, name="webhook_list"),
    path("webhooks/new/", webhook_views.webhook_new, name="webhook_new"),
    path("webhooks/<uuid:code>/", webhook_views.webhook_detail, name="webhook_detail"),
    path("webhooks/<uuid:code>/ping", webhook_views.webhook_ping_view, name="webhook_ping"),
    path("webhooks/<uuid:code>/enable", webhook_views.webhook_enable_view, name="webhook_enable"),
    path(
        "webhooks/<uuid:code>/disable", webhook_views.webhook_disable_view, name="webhook_disable"
    ),
    path(
        "webhooks/<uuid:code>/rotate-secret",
        webhook_views.webhook_rotate_view,
        name="webhook_rotate",
    ),
    path("webhooks/<uuid:code>/delete", webhook_views.webhook_delete_view, name="webhook_delete"),
    path(
        "webhooks/deliveries/<uuid:code>/",
        webhook_views.delivery_detail,
        name="webhook_delivery",
    ),
    path(
        "webhooks/deliveries/<uuid:code>/redeliver",
        webhook_views.delivery_redeliver_view,
        name="webhook_redeliver",
    ),
]
