from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from seke_app import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("datasets/", views.dataset_list, name="dataset_list"),
    path("datasets/upload/", views.dataset_upload, name="dataset_upload"),
    path("datasets/<uuid:code>/", views.dataset_detail, name="dataset_detail"),
    path("images/<uuid:code>/", views.image_detail, name="image_detail"),
    path("images/<uuid:code>/file", views.image_file, name="image_file"),
    path("review/", include("review.urls")),
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
]
