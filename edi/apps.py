from django.apps import AppConfig


class EdiConfig(AppConfig):
    name = "edi"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # TenantApiView asks this list for its token authenticators.
        from edi.api import EdiTokenAuthentication
        from portal.api import TOKEN_AUTHENTICATION_CLASSES

        if EdiTokenAuthentication not in TOKEN_AUTHENTICATION_CLASSES:
            TOKEN_AUTHENTICATION_CLASSES.append(EdiTokenAuthentication)
