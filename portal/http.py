"""Small facts about a request that every app's views ask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest

if TYPE_CHECKING:
    from portal.models import Member


def request_member(request: HttpRequest) -> Member:
    """The signed-in member (set by the portal's middleware)."""
    member: Member = request.member  # type: ignore[attr-defined]
    return member


def wants_json(request: HttpRequest) -> bool:
    """A script asking for JSON rather than a browser asking for a page."""
    accept = request.META.get("HTTP_ACCEPT", "")
    return "application/json" in accept and "text/html" not in accept
