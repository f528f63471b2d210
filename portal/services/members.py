"""Members and seats: one set of rules for every channel (PORTAL-02, 06..09).

The UI, the API, EDI, SSO just-in-time provisioning and bulk actions all go
through these services. They run in the current tenant's schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Value
from django.db.models.functions import Lower
from django.db.models.lookups import Exact
from django.utils import timezone

from portal.errors import ApplicationError, PermissionDenied
from portal.models import (
    Member,
    MemberGroup,
    MemberSession,
    MemberSource,
    MemberStatus,
    SeatPool,
)
from portal.roles import Role, can, may_assign_role, may_manage_member
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits

User = get_user_model()

EDITABLE_FIELDS = (
    "first_name",
    "last_name",
    "employee_id",
    "job_title",
    "department",
    "location",
    "managed_by_edi",
)


class SeatLimitReached(ApplicationError):
    code = "seat_limit_reached"
    status = 409


class IdentityConflict(ApplicationError):
    """The email belongs to a member with another employee_id (edi.md §2)."""

    code = "identity_conflict"
    status = 409


def _normalise_email(email: str) -> str:
    email = (email or "").strip()
    try:
        validate_email(email)
    except ValidationError:
        raise ApplicationError(
            "Enter a valid email address.",
            details={"email": ["Enter a valid email address."]},
        ) from None
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def _require(actor: Member | None, capability: str) -> None:
    if actor is not None and not can(actor, capability):
        raise PermissionDenied("Your role does not allow this.")


def _require_manage(actor: Member | None, target: Member) -> None:
    if actor is not None and not may_manage_member(actor, target):
        raise PermissionDenied(f"Your role cannot change {target.email}.")


@audit_exempt("read-only: the seat pool row is created by provisioning")
def seat_pool_lock() -> SeatPool:
    """Lock and return the tenant's seat-pool row (one per schema)."""
    pool, _ = SeatPool.objects.select_for_update().get_or_create(id=1)
    return pool


@audit_exempt("read: the identity rules every channel shares")
def member_identify(
    *, email: str, employee_id: str = "", lock: bool = False
) -> Member | None:
    """The member a person with this key is (edi.md §2), or None if new.

    The key is `employee_id` when non-blank, else the email; emails match
    case-insensitively, as PostgreSQL's `lower()` (the unique index) does.
    A new `employee_id` finds the member with the same email and no
    employee_id, whom the caller may adopt. Raises `IdentityConflict` when
    the email belongs to a member with another employee_id. With `lock`,
    the row is locked in the caller's transaction, so what the caller read
    (the status above all) holds until it commits. The EDI import applies
    the same rules set-based (`edi.services.pipeline.Run.resolve`).
    """
    employee_id = employee_id.strip()
    members = Member.objects.select_for_update() if lock else Member.objects.all()
    if employee_id:
        found = members.filter(employee_id=employee_id).first()
        if found is not None:
            return found
    by_email = members.filter(
        Exact(Lower("email"), Lower(Value(email.strip())))
    ).first()
    if by_email is not None and employee_id and by_email.employee_id:
        raise IdentityConflict(
            "This email belongs to a member with another employee id.",
            details={"employee_id": employee_id},
        )
    return by_email


def _check_seats(pool: SeatPool, needed: int) -> None:
    if pool.limit is None or needed <= 0:
        return
    used = Member.objects.filter(has_seat=True).count()
    available = max(0, pool.limit - used)
    if needed > available:
        raise SeatLimitReached(
            f"{needed} seat{'s' if needed != 1 else ''} needed, {available} available.",
            details={"needed": needed, "available": available, "limit": pool.limit},
        )


@audits("portal.member.created")
@transaction.atomic
def member_create(
    *,
    email: str,
    actor: Member | None,
    first_name: str = "",
    last_name: str = "",
    role: str = Role.MEMBER,
    source: str = MemberSource.MANUAL,
    employee_id: str = "",
    job_title: str = "",
    department: str = "",
    location: str = "",
    grant_seat: bool = False,
    status: str = MemberStatus.INVITED,
) -> Member:
    """Add a person. Emails are unique case-insensitively.

    Raises `ApplicationError` (`email_taken`), `PermissionDenied` when the
    actor may not create a member with that role, `SeatLimitReached`.
    """
    _require(actor, "members.edit")
    email = _normalise_email(email)
    if role not in Role.values:
        raise ApplicationError("Unknown role.", details={"role": ["Unknown role."]})
    if role != Role.MEMBER and actor is not None:
        placeholder = Member(role=Role.MEMBER, email=email)
        reason = may_assign_role(actor, placeholder, role)
        if reason:
            raise PermissionDenied(reason)
    if Member.objects.filter(email__iexact=email).exists():
        raise ApplicationError(
            "A member with this email already exists.",
            code="email_taken",
            details={"email": ["A member with this email already exists."]},
        )
    member = Member(
        email=email,
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        role=role,
        source=source,
        employee_id=employee_id.strip(),
        job_title=job_title.strip(),
        department=department.strip(),
        location=location.strip(),
        status=status,
    )
    member.full_clean(exclude=["search_text"])
    try:
        with transaction.atomic():
            member.save()
    except IntegrityError:
        raise ApplicationError(
            "A member with this email or employee id already exists.",
            code="email_taken",
        ) from None
    if grant_seat:
        _check_seats(seat_pool_lock(), 1)
        member.has_seat = True
        member.seat_granted_at = timezone.now()
        member.save(update_fields=["has_seat", "seat_granted_at"])
    audit_event_record(
        action="portal.member.created",
        target=member,
        actor=actor,
        changes={"email": email, "role": role, "seat": grant_seat, "source": source},
    )
    return member


@audits("portal.member.updated")
@transaction.atomic
def member_update(*, member: Member, actor: Member | None, **fields: Any) -> Member:
    """Change a member's profile fields; records before/after of changes."""
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise ApplicationError(f"Cannot change {', '.join(sorted(unknown))}.")
    member = Member.objects.select_for_update().get(pk=member.pk)
    _require_manage(actor, member)
    changes: dict[str, Any] = {}
    for field, value in fields.items():
        value = value.strip() if isinstance(value, str) else value
        before = getattr(member, field)
        if before != value:
            changes[field] = {"before": before, "after": value}
            setattr(member, field, value)
    if not changes:
        return member
    member.full_clean(exclude=["search_text", "user", "manager"])
    try:
        with transaction.atomic():
            member.save(update_fields=[*changes, "updated_at"])
    except IntegrityError:
        raise ApplicationError(
            "Another member already has this employee id.",
            details={"employee_id": ["Another member already has this employee id."]},
        ) from None
    audit_event_record(
        action="portal.member.updated", target=member, actor=actor, changes=changes
    )
    return member


def _active_owner_count(exclude_pk: int | None = None) -> int:
    owners = Member.objects.filter(role=Role.OWNER, status=MemberStatus.ACTIVE)
    if exclude_pk is not None:
        owners = owners.exclude(pk=exclude_pk)
    return owners.count()


def _lock_owners() -> None:
    # Two admins demoting the last two owners at once must not both win.
    list(
        Member.objects.select_for_update()
        .filter(role=Role.OWNER, status=MemberStatus.ACTIVE)
        .values_list("pk", flat=True)
    )


@audits("portal.member.role_changed")
@transaction.atomic
def member_role_set(*, member: Member, role: str, actor: Member | None) -> Member:
    """Give `member` the role `role` under the grant rules (PORTAL-02).

    Only owners make, change or unmake owners; nobody changes their own
    role; the last active owner cannot be demoted. `actor=None` is the
    system (EDI, SSO group mapping), which never touches owners.
    """
    if role not in Role.values:
        raise ApplicationError("Unknown role.", details={"role": ["Unknown role."]})
    _lock_owners()
    member = Member.objects.select_for_update().get(pk=member.pk)
    # The actor's right is checked before the no-op shortcut, so a role that
    # may not change roles is refused even when nothing would change.
    if actor is not None:
        reason = may_assign_role(actor, member, role)
        if reason:
            raise PermissionDenied(reason)
    if member.role == role:
        return member
    if actor is None and Role.OWNER in (member.role, role):
        raise PermissionDenied(
            "Owners are changed only by owners.", code="owner_protected"
        )
    if member.role == Role.OWNER and _active_owner_count(exclude_pk=member.pk) == 0:
        raise ApplicationError(
            "The last owner cannot be demoted. Make someone else an owner first.",
            code="last_owner",
        )
    before = member.role
    member.role = role
    member.save(update_fields=["role", "updated_at"])
    audit_event_record(
        action="portal.member.role_changed",
        target=member,
        actor=actor,
        changes={"role": {"before": before, "after": role}},
    )
    return member


@audits("portal.member.deactivated")
@transaction.atomic
def member_deactivate(
    *, member: Member, actor: Member | None, reason: str = ""
) -> Member:
    """Deactivate: free the seat, end every session, audit (PORTAL-09).

    The row is kept. The last active owner cannot be deactivated. Other
    apps revoke what they own (API tokens, PointDrive links) through
    `MEMBER_DEACTIVATION_HOOKS`.
    """
    _lock_owners()
    member = Member.objects.select_for_update().get(pk=member.pk)
    _require_manage(actor, member)
    if actor is not None and actor.pk == member.pk:
        raise PermissionDenied("You cannot deactivate yourself.")
    if member.status == MemberStatus.DEACTIVATED:
        return member
    if member.role == Role.OWNER and _active_owner_count(exclude_pk=member.pk) == 0:
        raise ApplicationError(
            "The last owner cannot be deactivated.", code="last_owner"
        )
    had_seat = member.has_seat
    member.status = MemberStatus.DEACTIVATED
    member.has_seat = False
    member.seat_granted_at = None
    member.deactivated_at = timezone.now()
    member.save(
        update_fields=[
            "status",
            "has_seat",
            "seat_granted_at",
            "deactivated_at",
            "updated_at",
        ]
    )
    ended = member_sessions_end(member=member)
    for hook in MEMBER_DEACTIVATION_HOOKS:
        hook(member)
    audit_event_record(
        action="portal.member.deactivated",
        target=member,
        actor=actor,
        changes={
            "seat_freed": had_seat,
            "sessions_ended": ended,
            "reason": reason[:200],
        },
    )
    return member


MEMBER_DEACTIVATION_HOOKS: list[Any] = []


@audits("portal.member.reactivated")
@transaction.atomic
def member_reactivate(*, member: Member, actor: Member | None) -> Member:
    """Reactivate a deactivated member (no seat is granted by this)."""
    member = Member.objects.select_for_update().get(pk=member.pk)
    _require_manage(actor, member)
    if member.status != MemberStatus.DEACTIVATED:
        return member
    member.status = MemberStatus.ACTIVE if member.user_id else MemberStatus.INVITED
    member.deactivated_at = None
    member.save(update_fields=["status", "deactivated_at", "updated_at"])
    audit_event_record(action="portal.member.reactivated", target=member, actor=actor)
    return member


@audit_exempt("part of deactivation, which audits")
def member_sessions_end(*, member: Member) -> int:
    """Delete every session of `member` (its open browsers sign out)."""
    keys = list(
        MemberSession.objects.filter(member=member).values_list(
            "session_key", flat=True
        )
    )
    Session.objects.filter(session_key__in=keys).delete()
    MemberSession.objects.filter(member=member).delete()
    return len(keys)


@audits("portal.seat.granted")
@transaction.atomic
def seat_grant(*, member_ids: Iterable[int], actor: Member | None) -> list[Member]:
    """Grant seats to all the given members, or to none (PORTAL-08).

    Locks the seat pool; raises `SeatLimitReached` with "N needed, M
    available" when the grant would pass the limit. Deactivated members
    cannot hold seats.
    """
    pool = seat_pool_lock()
    members = list(Member.objects.select_for_update().filter(pk__in=list(member_ids)))
    for member in members:
        _require_manage(actor, member)
        if member.status == MemberStatus.DEACTIVATED:
            raise ApplicationError(
                f"{member.email} is deactivated; reactivate them first.",
                code="member_deactivated",
            )
    needing = [member for member in members if not member.has_seat]
    _check_seats(pool, len(needing))
    now = timezone.now()
    for member in needing:
        member.has_seat = True
        member.seat_granted_at = now
        member.save(update_fields=["has_seat", "seat_granted_at", "updated_at"])
        audit_event_record(action="portal.seat.granted", target=member, actor=actor)
    return members


@audits("portal.seat.revoked")
@transaction.atomic
def seat_revoke(*, member_ids: Iterable[int], actor: Member | None) -> list[Member]:
    """Revoke seats from the given members (never refused for lack of seats)."""
    members = list(Member.objects.select_for_update().filter(pk__in=list(member_ids)))
    for member in members:
        _require_manage(actor, member)
    for member in members:
        if not member.has_seat:
            continue
        member.has_seat = False
        member.seat_granted_at = None
        member.save(update_fields=["has_seat", "seat_granted_at", "updated_at"])
        audit_event_record(action="portal.seat.revoked", target=member, actor=actor)
    return members


@audits("portal.seat.limit_changed")
@transaction.atomic
def seat_limit_set(*, limit: int | None) -> SeatPool:
    """Set the tenant's seat limit (operators only; lowering removes no seat)."""
    if limit is not None and limit < 0:
        raise ApplicationError("The seat limit cannot be negative.")
    pool = seat_pool_lock()
    before = pool.limit
    pool.limit = limit
    pool.save(update_fields=["limit", "updated_at"])
    audit_event_record(
        action="portal.seat.limit_changed",
        target=pool,
        changes={"limit": {"before": before, "after": limit}},
    )
    return pool


@audits("portal.member.groups_changed")
@transaction.atomic
def member_groups_change(
    *, member_ids: Iterable[int], group_name: str, add: bool, actor: Member | None
) -> int:
    """Add or remove one group on several members; creates the group if new.

    Idempotent: members already in (or out of) the group are left alone and
    get no audit event. Returns how many members changed.
    """
    name = group_name.strip()
    if not name or len(name) > 200:
        raise ApplicationError("Enter a group name (at most 200 characters).")
    members = list(Member.objects.filter(pk__in=list(member_ids)))
    for member in members:
        _require_manage(actor, member)
    group = MemberGroup.objects.filter(name__iexact=name).first()
    if group is None:
        if not add:
            return 0
        group = MemberGroup.objects.create(name=name)
    already = set(
        group.members.filter(pk__in=[m.pk for m in members]).values_list(
            "pk", flat=True
        )
    )
    changed = 0
    for member in members:
        if (member.pk in already) == add:
            continue
        if add:
            member.groups.add(group)
        else:
            member.groups.remove(group)
        changed += 1
        audit_event_record(
            action="portal.member.groups_changed",
            target=member,
            actor=actor,
            changes={"added" if add else "removed": group.name},
        )
    return changed


@audits("portal.member.owner_created")
@transaction.atomic
def member_owner_ensure(*, email: str, password: str) -> Member:
    """Create or reset the tenant's first owner (provisioning; re-runnable)."""
    email = _normalise_email(email)
    member = Member.objects.filter(email__iexact=email).first()
    if member is None:
        member = Member(email=email, role=Role.OWNER, source=MemberSource.PROVISION)
    member.role = Role.OWNER
    member.status = MemberStatus.ACTIVE
    member.managed_by_edi = False
    if member.user_id is None:
        user = User.objects.filter(username=email.lower()).first() or User(
            username=email.lower(), email=email
        )
    else:
        user = member.user  # type: ignore[assignment]
    user.set_password(password)
    user.is_active = True
    user.save()
    member.user = user
    member.save()
    audit_event_record(
        action="portal.member.owner_created", target=member, changes={"email": email}
    )
    return member


@audits("portal.member.password_set")
@transaction.atomic
def member_password_set(
    *, member: Member, password: str, actor: Member | None
) -> Member:
    """Give a member a local password (validated by Django's validators)."""
    from django.contrib.auth.password_validation import validate_password

    member = Member.objects.select_for_update().get(pk=member.pk)
    if actor is not None and actor.pk != member.pk:
        _require_manage(actor, member)
    user = member.user or User(username=member.email.lower(), email=member.email)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ApplicationError(
            " ".join(exc.messages), details={"password": list(exc.messages)}
        ) from None
    user.set_password(password)
    user.save()
    if member.user_id is None:
        member.user = user
        member.save(update_fields=["user", "updated_at"])
    audit_event_record(
        action="portal.member.password_set",
        target=member,
        actor=actor,
        changes={"password": 1},
    )
    return member


@audit_exempt("daily statistics, no change to members")
def seat_snapshot_take() -> None:
    """Record today's seat usage for the 90-day chart (idempotent per day)."""
    from portal.models import SeatSnapshot
    from portal.selectors.members import seat_summary

    summary = seat_summary()
    SeatSnapshot.objects.update_or_create(
        day=timezone.localdate(),
        defaults={"used": summary.used, "limit": summary.limit},
    )
