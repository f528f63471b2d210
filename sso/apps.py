"""The SSO app: a SAML 2.0 service provider per tenant (specs/sso.md)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


def libxml2_versions() -> tuple[tuple[int, ...], tuple[int, ...]]:
    import lxml.etree
    import xmlsec

    return tuple(lxml.etree.LIBXML_VERSION), tuple(xmlsec.get_libxml_version())


def check_libxml2(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """SSO-S19: lxml and xmlsec must use the same libxml2 (python-xmlsec #351)."""
    lxml_version, xmlsec_version = libxml2_versions()
    if lxml_version != xmlsec_version:
        return [
            checks.Critical(
                f"lxml is built against libxml2 {lxml_version} but xmlsec against "
                f"{xmlsec_version}; SAML signature checks are unreliable.",
                hint="Install the tested pair (lxml 6.1.3, xmlsec 1.3.17) together.",
                id="sso.E001",
            )
        ]
    return []


class SsoConfig(AppConfig):
    name = "sso"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from onelogin.saml2.constants import OneLogin_Saml2_Constants

        from portal.selectors import dashboard
        from portal.services import auth
        from sso import hooks

        checks.register(check_libxml2, deploy=False)
        problems = check_libxml2()
        if problems:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(problems[0].msg)
        # SSO-S14: one drift for the whole process, set once at startup.
        OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT = settings.SSO_CLOCK_DRIFT_SECONDS
        if hooks.sso_login_policy not in auth.LOGIN_POLICIES:
            auth.LOGIN_POLICIES.append(hooks.sso_login_policy)
        if hooks.sso_password_sign_in not in auth.PASSWORD_SIGN_IN_HOOKS:
            auth.PASSWORD_SIGN_IN_HOOKS.append(hooks.sso_password_sign_in)
        if hooks.sso_logout not in auth.LOGOUT_HANDLERS:
            auth.LOGOUT_HANDLERS.append(hooks.sso_logout)
        if hooks.sso_login_available not in auth.LOGIN_ALTERNATIVES:
            auth.LOGIN_ALTERNATIVES.append(hooks.sso_login_available)
        dashboard.CARD_PROVIDERS["sso"] = hooks.sso_card
