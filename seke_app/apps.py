from django.apps import AppConfig


class SekeConfig(AppConfig):
    name = "seke_app"
    verbose_name = "SEKE"
    default_auto_field = "django.db.models.BigAutoField"
