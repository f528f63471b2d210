from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants and the platform console"
    default_auto_field = "django.db.models.BigAutoField"
