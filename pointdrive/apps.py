from django.apps import AppConfig


class PointdriveConfig(AppConfig):
    name = "pointdrive"
    default_auto_field = "django.db.models.BigAutoField"
