"""Enforcement of `portal.roles` for HTML views and the API (PORTAL-03).

`capability_required` is the one decorator for pages, `HasCapability` the
one DRF permission class. Every tenant route declares a capability; a test
walks the URL resolver and fails on a route that declares none and is not
on the public list.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from portal.db import current_schema
from portal.roles import can

View = Callable[..., HttpResponseBase]


def capability_required(capability: str) -> Callable[[View], View]:
    """Page decorator: login redirect for anonymous, 403 without capability."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapped(
            request: HttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponseBase:
            if current_schema() == "public":
                raise Http404
            member = getattr(request, "member", None)
            if member is None:
                return redirect_to_login(request.get_full_path())
            if not can(member, capability):
                return render(
                    request,
                    "403.html",
                    {"message": "Your role does not give access to this page."},
                    status=403,
                )
            return view(request, *args, **kwargs)

        wrapped.required_capability = capability  # type: ignore[attr-defined]
        return wrapped

    return decorate


def public_view(reason: str) -> Callable[[View], View]:
    """Mark a tenant route as deliberately open (login, health, SAML…)."""

    def decorate(view: View) -> View:
        view.public_reason = reason  # type: ignore[attr-defined]
        return view

    return decorate


class HasCapability(BasePermission):
    """Checks `view.required_capability` (or per-method `capability_map`)."""

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        member = getattr(request._request, "member", None)
        capability = getattr(view, "capability_map", {}).get(
            request.method, getattr(view, "required_capability", None)
        )
        if capability is None:
            return False
        return can(member, capability)


RECENT_SIGN_IN_SECONDS = 15 * 60


def recent_sign_in(request: HttpRequest) -> bool:
    """True when the session signed in within the last 15 minutes.

    Destructive confirmations (PORTAL-22) ask for a fresh sign-in, the way
    GitHub's sudo mode does; the stamp is set by every sign-in path.
    """
    import time

    stamp = request.session.get("auth_at")
    return (
        isinstance(stamp, int | float) and time.time() - stamp < RECENT_SIGN_IN_SECONDS
    )


def mark_signed_in(request: HttpRequest, *, method: str) -> None:
    """Record how and when this session signed in (after `login()`)."""
    import time

    request.session["auth_method"] = method
    request.session["auth_at"] = int(time.time())
