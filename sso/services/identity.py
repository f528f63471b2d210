"""From a verified assertion to a member: profile, linking, JIT, roles.

SSO-F9 (identity key), SSO-F10 (JIT and linking), SSO-F11 (attribute
presets), SSO-F12 (group → role mapping). Every value here comes from
python3-saml's getters after a successful validation (SSO-S2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.db import row_first
from portal.errors import ApplicationError
from portal.models import Member, MemberSource, MemberStatus
from portal.roles import Role
from portal.services.audit import audit_event_record
from portal.services.members import (
    IdentityConflict,
    SeatLimitReached,
    member_create,
    member_identify,
    member_role_set,
    seat_grant,
    seat_pool_lock,
)
from portal.services.registry import audit_exempt, audits
from sso.errors import SamlError
from sso.models import GroupMatch, IdentityProvider, SsoLink

NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
ENTRA_OVERAGE = "http://schemas.microsoft.com/claims/groups.link"
ROLE_RANK: dict[str, int] = {
    Role.ADMIN: 4,
    Role.USER_ADMIN: 3,
    Role.READONLY_ADMIN: 2,
    Role.MEMBER: 1,
}


@dataclass(frozen=True)
class VerifiedIdentity:
    """What python3-saml verified; serialisable into the finish ticket."""

    idp_entity_id: str
    name_id: str
    name_id_format: str
    name_qualifier: str
    sp_name_qualifier: str
    session_index: str
    session_expires_at: str  # ISO timestamp or ""
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Profile:
    email: str
    first_name: str
    last_name: str
    groups: tuple[str, ...]
    immutable_id: str
    employee_id: str


def _first(attributes: dict[str, list[str]], name: str) -> str:
    if not name:
        return ""
    values = attributes.get(name) or []
    return str(values[0]).strip() if values else ""


@audit_exempt("pure: reads verified attributes")
def profile_from_identity(
    *, idp: IdentityProvider, identity: VerifiedIdentity
) -> Profile:
    """Apply the attribute mapping; `attribute_missing` lists what arrived."""
    attrs = identity.attributes
    if ENTRA_OVERAGE in attrs:
        raise SamlError(
            "groups_overage",
            expected=f"group values in {idp.groups_attribute}",
            received=ENTRA_OVERAGE,
        )
    email = _first(attrs, idp.email_attribute)
    if not email and identity.name_id_format == NAMEID_EMAIL:
        email = identity.name_id.strip()
    if not email or "@" not in email:
        raise SamlError(
            "attribute_missing",
            expected=f"an email in attribute {idp.email_attribute or '(none)'}",
            received="attributes: " + (", ".join(sorted(attrs)) or "none"),
        )
    try:
        validate_email(email)
    except ValidationError:
        # Caught here, not by member_create's ApplicationError, so the refusal
        # has its reason code and audit event (the value is not logged).
        raise SamlError(
            "attribute_missing",
            expected=f"a valid email address in {idp.email_attribute or 'the NameID'}",
            received="a value that is not an email address",
        ) from None
    immutable_id = _first(attrs, idp.immutable_id_attribute)
    if idp.immutable_id_attribute and not immutable_id:
        raise SamlError(
            "attribute_missing",
            expected=f"the immutable ID attribute {idp.immutable_id_attribute}",
            received="attributes: " + (", ".join(sorted(attrs)) or "none"),
        )
    if identity.name_id_format == NAMEID_TRANSIENT and not immutable_id:
        raise SamlError(
            "identity_unresolved",
            expected="a persistent or email NameID, or an immutable ID attribute",
            received=identity.name_id_format,
        )
    groups: list[str] = []
    if idp.groups_attribute:
        for value in attrs.get(idp.groups_attribute) or []:
            text = str(value).strip()
            if text and text not in groups:
                groups.append(text)
    return Profile(
        email=email.lower()[:254],
        first_name=_first(attrs, idp.first_name_attribute)[:150],
        last_name=_first(attrs, idp.last_name_attribute)[:150],
        groups=tuple(groups),
        immutable_id=immutable_id[:256],
        employee_id=_first(attrs, idp.employee_id_attribute)[:128],
    )


@audit_exempt("pure: computes a role")
def role_for_groups(
    *,
    idp: IdentityProvider,
    mappings: tuple[tuple[str, str], ...],
    groups: tuple[str, ...],
) -> str | None:
    """The highest mapped role, `None` when mapping is off (roles untouched)."""
    if not idp.role_mapping_enabled:
        return None
    if idp.group_match == GroupMatch.IEXACT:
        table = {g.casefold(): r for g, r in mappings}
        found = [table[g.casefold()] for g in groups if g.casefold() in table]
    else:
        exact = dict(mappings)
        found = [exact[g] for g in groups if g in exact]
    found = [r for r in found if r in ROLE_RANK]
    if not found:
        if idp.group_required:
            raise SamlError(
                "no_matching_group",
                expected="one of: " + ", ".join(g for g, _ in mappings)[:250],
                received=", ".join(groups)[:250] or "no groups",
            )
        return idp.default_role if idp.default_role != Role.OWNER else Role.MEMBER
    return max(found, key=lambda r: ROLE_RANK[r])


def _domain_allowed(idp: IdentityProvider, email: str) -> bool:
    domain = email.rsplit("@", 1)[-1].lower()
    return domain in (idp.allowed_email_domains or [])


def _domain_refused(idp: IdentityProvider, email: str) -> SamlError:
    return SamlError(
        "email_domain_not_allowed",
        expected="a domain on the SSO domain list: "
        + (", ".join(idp.allowed_email_domains) or "(empty)"),
        received=email.rsplit("@", 1)[-1],
    )


def _link_key(
    idp: IdentityProvider, identity: VerifiedIdentity, profile: Profile
) -> dict[str, str]:
    if idp.immutable_id_attribute:
        return {
            "idp_entity_id": identity.idp_entity_id,
            "immutable_id": profile.immutable_id,
        }
    return {"idp_entity_id": identity.idp_entity_id, "name_id": identity.name_id}


def _link_locked(key: dict[str, str]) -> SsoLink | None:
    """The link with these column values, locked, with its member (locked
    too: a file deactivating them meanwhile must win) and user.

    Every SSO sign-in runs this; `row_first` keeps it to about 1 ms where
    the ORM's select_related query cost about 3 ms of CPU.
    """
    link = row_first(
        SsoLink,
        " AND ".join(f"{column} = %s" for column in key),
        list(key.values()),
        for_update=True,
    )
    if link is None:
        return None
    member = row_first(Member, "id = %s", [link.member_id], for_update=True)
    if member is None:  # pragma: no cover - the foreign key forbids it
        return None
    user = row_first(User, "id = %s", [member.user_id]) if member.user_id else None
    if user is not None:
        member.user = user
    link.member = member
    return link


def _find_candidate(idp: IdentityProvider, profile: Profile) -> Member | None:
    """The existing member by the shared lookup (edi.md §2, SSO-F10 (2)).

    The member's row is locked until the sign-in commits, so an EDI file
    that deactivates them either finished first (and the sign-in sees it)
    or waits. A member found by `employee_id` is used whatever the email's
    domain; one found by email only when the domain is on the SSO list.
    """
    try:
        member = member_identify(
            email=profile.email, employee_id=profile.employee_id, lock=True
        )
    except IdentityConflict:
        raise SamlError(
            "identity_conflict",
            expected="the employee ID of the member with this email",
            received=f"employee ID {profile.employee_id}",
        ) from None
    if member is None:
        return None
    if profile.employee_id and member.employee_id == profile.employee_id:
        return member
    if not _domain_allowed(idp, profile.email):
        raise _domain_refused(idp, profile.email)
    return member


def _jit_member(
    idp: IdentityProvider, profile: Profile, role: str | None
) -> tuple[Member, bool]:
    """Create the member (with a seat if one is free), or return the one an
    EDI file or another sign-in made meanwhile; `(member, created)`.

    Every grant takes the seat-pool lock (edi.md §2). Taking it before the
    INSERT keeps one lock order with the EDI apply (pool, then new members),
    so the two never deadlock, and an import that held it has committed its
    members by the time the lookup runs again. The unique constraints are
    the backstop for whoever inserts without the lock.
    """
    seat_pool_lock()
    existing = _find_candidate(idp, profile)
    if existing is not None:
        return existing, False
    try:
        member = member_create(
            email=profile.email,
            actor=None,
            first_name=profile.first_name,
            last_name=profile.last_name,
            role=role
            or (idp.default_role if idp.default_role != Role.OWNER else Role.MEMBER),
            source=MemberSource.SSO,
            employee_id=profile.employee_id,
            status=MemberStatus.ACTIVE,
        )
    except ApplicationError as error:
        if error.code != "email_taken":
            raise
        existing = _find_candidate(idp, profile)
        if existing is None:
            raise SamlError("identity_conflict", received=profile.email) from None
        return existing, False
    try:
        with transaction.atomic():
            seat_grant(member_ids=[member.pk], actor=None)
    except SeatLimitReached:
        pass  # the member exists without a seat; admins see it
    return member, True


def _user_for(member: Member) -> User:
    if member.user_id is not None:
        return member.user  # type: ignore[return-value]
    user = User.objects.filter(username=member.email.lower()).first()
    if user is None:
        user = User(username=member.email.lower(), email=member.email)
        user.set_unusable_password()
        user.save()
    member.user = user
    member.save(update_fields=["user", "updated_at"])
    return user


@audits("sso.link.created", "portal.member.created", "portal.member.role_changed")
@transaction.atomic(savepoint=False)  # its caller's transaction, if any
def sso_member_resolve(
    *,
    idp: IdentityProvider,
    mappings: tuple[tuple[str, str], ...],
    identity: VerifiedIdentity,
    signed_in: Member | None = None,
) -> tuple[Member, User, bool]:
    """Link, provision and map roles in one transaction (SSO-F10, F12).

    Returns `(member, user, created)`. Raises `SamlError` with the reason
    code; the caller's transaction then rolls back everything (no member,
    link, role or seat survives a refusal).
    """
    profile = profile_from_identity(idp=idp, identity=identity)
    # Owners are never changed by SSO, so a required group does not apply to
    # them; everyone else is refused before anything is written.
    role_error: SamlError | None = None
    try:
        role = role_for_groups(idp=idp, mappings=mappings, groups=profile.groups)
    except SamlError as error:
        role, role_error = None, error
    key = _link_key(idp, identity, profile)
    rekeyed = False  # a new link, or a changed key that may now collide
    link = _link_locked(key)
    if link is None and idp.immutable_id_attribute:
        # A link made before the immutable ID attribute was configured: the
        # same (IdP, NameID) without an immutable ID is the same identity, so
        # it adopts the ID (not a merge; a changed NameID still conflicts).
        link = _link_locked(
            {
                "idp_entity_id": identity.idp_entity_id,
                "name_id": identity.name_id,
                "immutable_id": "",
            }
        )
        if link is not None:
            link.immutable_id = profile.immutable_id
            rekeyed = True
    created = False
    if link is not None:
        member = link.member
        if idp.immutable_id_attribute and link.name_id != identity.name_id:
            link.name_id = identity.name_id
            rekeyed = True
    else:
        # Keyed by NameID (or immutable ID): a person arriving under another
        # identity is never merged into an existing link (identity_conflict).
        member_or_none = _find_candidate(idp, profile)
        if member_or_none is None and idp.jit_enabled:
            if role_error is not None:
                raise role_error
            if not _domain_allowed(idp, profile.email):
                raise _domain_refused(idp, profile.email)
            member_or_none, created = _jit_member(idp, profile, role)
        if member_or_none is None:
            raise SamlError(
                "user_unknown",
                expected="an existing member, or just-in-time provisioning on",
                received=profile.email,
            )
        member = member_or_none
        if not created:
            existing = SsoLink.objects.filter(member=member).first()
            if existing is not None:
                raise SamlError(
                    "identity_conflict",
                    expected=f"NameID {existing.name_id}",
                    received=f"NameID {identity.name_id}",
                )
            if member.role == Role.OWNER and (
                signed_in is None or signed_in.pk != member.pk
            ):
                raise SamlError(
                    "identity_conflict",
                    detail="Owners link their SSO identity by signing in with SSO "
                    "while signed in with their password.",
                    received=profile.email,
                )
        rekeyed = True
        link = SsoLink(
            member=member,
            idp_entity_id=identity.idp_entity_id,
            name_id=identity.name_id,
            name_id_format=identity.name_id_format[:256],
            immutable_id=profile.immutable_id,
        )
        audit_event_record(
            action="sso.link.created",
            target=member,
            changes={
                "idp": identity.idp_entity_id[:200],
                "name_id": identity.name_id[:200],
            },
        )
    if member.status == MemberStatus.DEACTIVATED:
        raise SamlError("member_deactivated", received=member.email)
    link.last_used_at = timezone.now()
    if rekeyed:
        try:
            with transaction.atomic():
                link.save()
        except IntegrityError:
            raise SamlError("identity_conflict", received=identity.name_id) from None
    else:
        link.save(update_fields=["last_used_at"])
    updates: list[str] = []
    if member.status == MemberStatus.INVITED:
        member.status = MemberStatus.ACTIVE
        updates.append("status")
    if member.source != MemberSource.EDI and not created:
        # Only blanks are filled: a value an EDI file or an admin set is
        # never overwritten by the IdP's (edi.md §2, SSO-F10).
        for attr in ("first_name", "last_name"):
            value = getattr(profile, attr)
            if value and not getattr(member, attr):
                setattr(member, attr, value)
                updates.append(attr)
    member.last_sign_in_at = timezone.now()
    updates.append("last_sign_in_at")
    member.save(update_fields=[*updates, "updated_at"])
    if role_error is not None and member.role != Role.OWNER:
        raise role_error
    if role is not None and member.role != Role.OWNER and member.role != role:
        member = member_role_set(member=member, role=role, actor=None)
    user = _user_for(member)
    if not user.is_active:
        raise SamlError("member_deactivated", received=member.email)
    return member, user, created


@audits("sso.link.reset")
@transaction.atomic
def sso_link_reset(*, member: Member, actor: Member) -> bool:
    """Forget a member's IdP identity so the next SSO sign-in links afresh."""
    from portal.errors import PermissionDenied
    from portal.roles import can, may_manage_member

    if not can(actor, "sso.edit") or not may_manage_member(actor, member):
        raise PermissionDenied("Your role cannot reset this member's SSO link.")
    deleted, _ = SsoLink.objects.filter(member=member).delete()
    if deleted:
        audit_event_record(action="sso.link.reset", target=member, actor=actor)
    return bool(deleted)
