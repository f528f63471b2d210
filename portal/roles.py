"""Roles and capabilities: the one place that decides who may do what.

PORTAL-01/03. HTML views declare a capability with `capability_required`,
API views with `HasCapability` (portal.api), templates hide controls with
`can()`; hiding never protects. Object rules (a user admin may only touch
members whose role is member; only owners touch owners) are in
`may_manage_member` and `may_assign_role`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from portal.models import Member


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    USER_ADMIN = "user_admin", "User admin"
    READONLY_ADMIN = "readonly_admin", "Read-only admin"
    MEMBER = "member", "Member"


_ALL = frozenset(Role)
_ADMINS = frozenset({Role.OWNER, Role.ADMIN})
_VIEWERS = frozenset({Role.OWNER, Role.ADMIN, Role.READONLY_ADMIN})
_PEOPLE = frozenset({Role.OWNER, Role.ADMIN, Role.USER_ADMIN, Role.READONLY_ADMIN})

CAPABILITIES: dict[str, frozenset[str]] = {
    "dashboard.view": _ALL,
    "dashboard.all_cards": _VIEWERS,
    "members.view": _PEOPLE,
    "members.edit": frozenset({Role.OWNER, Role.ADMIN, Role.USER_ADMIN}),
    "members.change_role": _ADMINS,
    "members.unlock": _ADMINS,
    "audit.view": _VIEWERS,
    "jobs.view": _ALL,
    "settings.view": _VIEWERS,
    "settings.edit": _ADMINS,
    "sso.view": _VIEWERS,
    "sso.edit": _ADMINS,
    "crm.view": _VIEWERS,
    "crm.edit": _ADMINS,
    "crm.purge": _ADMINS,
    "pointdrive.view": _VIEWERS,
    "pointdrive.edit": _ADMINS,
    "pointdrive.purge": _ADMINS,
    "pointdrive.own": _ALL,
    "pointdrive.all_content": _VIEWERS,
    "edi.view": _PEOPLE,
    "edi.upload": _ADMINS,
    "edi.credentials.view": _VIEWERS,
    "edi.credentials.edit": _ADMINS,
    "api.me": _ALL,
}


def role_has(role: str, capability: str) -> bool:
    try:
        return role in CAPABILITIES[capability]
    except KeyError:
        raise KeyError(f"Unknown capability {capability!r}") from None


def can(member: Member | None, capability: str) -> bool:
    """True when `member` is an active member whose role grants `capability`."""
    if member is None or not member.is_active_member:
        return False
    return role_has(member.role, capability)


def may_manage_member(actor: Member, target: Member) -> bool:
    """Object rule for editing, seats, deactivation (PORTAL-01/02)."""
    if not can(actor, "members.edit"):
        return False
    if target.role == Role.OWNER and actor.role != Role.OWNER:
        return False
    if actor.role == Role.USER_ADMIN:
        return target.role == Role.MEMBER
    return True


def may_assign_role(actor: Member, target: Member, new_role: str) -> str | None:
    """Return why `actor` may not give `target` the role, or None if allowed."""
    if not can(actor, "members.change_role"):
        return "Your role cannot change roles."
    if actor.pk == target.pk:
        return "Nobody can change their own role."
    if Role.OWNER in (target.role, new_role) and actor.role != Role.OWNER:
        return "Only owners can make, change or remove owners."
    return None
