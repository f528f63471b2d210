from django.apps import AppConfig


class EdiConfig(AppConfig):
    name = "edi"
    default_auto_field = "django.db.models.BigAutoField"
