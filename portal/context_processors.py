"""Template context every page gets: tenant name, member, `can`."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from portal.roles import CAPABILITIES, can


def portal(request: HttpRequest) -> dict[str, Any]:
    member = getattr(request, "member", None)
    allowed = {cap for cap in CAPABILITIES if can(member, cap)}
    return {
        "tenant": getattr(request, "tenant", None),
        "member": member,
        "caps": allowed,
    }
