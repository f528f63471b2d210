from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from portal.services.auth import session_index_on_login

        user_logged_in.connect(
            session_index_on_login, dispatch_uid="portal.session_index_on_login"
        )
