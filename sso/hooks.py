"""Glue between the portal core's extension points and the SSO services.

These are interfaces (they take the request where the core passes one);
the rules live in `sso.services`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase

from portal.models import Member
from portal.selectors.dashboard import Card
from sso.services.config import fingerprint_display, idp_get
from sso.services.maintenance import (
    certificates_expiring,
    sso_break_glass_check,
    sso_login_policy,
)
from sso.services.slo import saml_logout_start, sso_session_for, sso_session_forget

__all__ = [
    "sso_card",
    "sso_login_available",
    "sso_login_policy",
    "sso_logout",
    "sso_password_sign_in",
]


def sso_password_sign_in(request: HttpRequest, member: Member) -> None:
    """After a password sign-in: break-glass when SSO is enforced (SSO-F13)."""
    if sso_break_glass_check(member=member):
        request.session["break_glass"] = True


def sso_login_available() -> bool:
    return idp_get() is not None


def sso_logout(request: HttpRequest) -> Callable[[], HttpResponseBase | None] | None:
    """Before the local logout: remember the IdP session; after it: SLO."""
    row = sso_session_for(session_key=request.session.session_key)
    if row is None:
        return None
    sso_session_forget(session_key=row.session_key)

    def after() -> HttpResponseBase | None:
        from django.contrib import messages

        try:
            start = saml_logout_start(sso_session=row)
        except Exception:  # noqa: BLE001 - the local sign-out already happened
            messages.warning(
                request,
                "You are signed out here, but the identity provider could not be "
                "asked to end its session.",
            )
            return None
        if start is None:
            return None
        from sso.views import idp_navigation

        return idp_navigation(request, start.url, start.post_fields, after_form=True)

    return after


def sso_card() -> Card:
    idp = idp_get()
    if idp is None:
        return Card(
            "sso",
            "Single sign-on",
            state="not_set_up",
            data={"hint": "No identity provider connected."},
        )
    expiring: list[dict[str, Any]] = [
        {**c, "display": fingerprint_display(c["fingerprint"])}
        for c in certificates_expiring()
    ]
    return Card(
        "sso",
        "Single sign-on",
        data={
            "entity_id": idp.entity_id,
            "enforced": idp.enforce_sso,
            "jit": idp.jit_enabled,
            "expiring": expiring,
        },
    )
