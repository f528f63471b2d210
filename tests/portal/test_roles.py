"""Grant rules and object rules for members (PORTAL-01, PORTAL-02).

`member_role_set` is checked over every (actor, target, new role) triple of
the five roles; refusals change no row and add no audit event. The last
active owner is protected on every channel: service, pages and bulk.
"""

from __future__ import annotations

import itertools

import pytest
from django_tenants.utils import tenant_context

from portal.errors import ApplicationError, PermissionDenied
from portal.models import AuditEvent, Member, MemberStatus
from portal.roles import Role, may_manage_member
from portal.services.bulk import member_bulk_request
from portal.services.members import (
    member_deactivate,
    member_role_set,
    member_update,
    seat_grant,
)

ROLES = [role.value for role in Role]
TRIPLES = list(itertools.product(ROLES, ROLES, ROLES))


def _rules_allow(actor_role: str, target_role: str, new_role: str) -> bool:
    """The grant rules of PORTAL-02, written out independently of roles.py."""
    if actor_role not in (Role.OWNER, Role.ADMIN):
        return False
    if Role.OWNER in (target_role, new_role):
        return actor_role == Role.OWNER
    return True


def _audit_count() -> int:
    return AuditEvent.objects.count()


def _sole_owner(tenant) -> Member:
    with tenant_context(tenant):
        owners = Member.objects.filter(role=Role.OWNER, status=MemberStatus.ACTIVE)
        assert owners.count() == 1
        return owners.get()


@pytest.mark.parametrize(
    ("actor_role", "target_role", "new_role"),
    TRIPLES,
    ids=["-".join(triple) for triple in TRIPLES],
)
def test_role_set_triples(tenant, make_member, actor_role, target_role, new_role):
    actor = make_member(actor_role)
    target = make_member(target_role)
    with tenant_context(tenant):
        events_before = _audit_count()
        if _rules_allow(actor_role, target_role, new_role):
            result = member_role_set(member=target, role=new_role, actor=actor)
            target.refresh_from_db()
            assert result.role == new_role
            assert target.role == new_role
            changed = AuditEvent.objects.filter(
                action="portal.member.role_changed", target_id=str(target.pk)
            )
            # A same-role request is a no-op: allowed but not audited.
            assert changed.count() == (0 if target_role == new_role else 1)
            if target_role != new_role:
                event = changed.get()
                assert event.actor_id == str(actor.pk)
                assert event.changes == {
                    "role": {"before": target_role, "after": new_role}
                }
        else:
            with pytest.raises(PermissionDenied):
                member_role_set(member=target, role=new_role, actor=actor)
            target.refresh_from_db()
            assert target.role == target_role
            assert _audit_count() == events_before


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("new_role", ROLES)
def test_nobody_changes_their_own_role(tenant, make_member, role, new_role):
    me = make_member(role)
    with tenant_context(tenant):
        events_before = _audit_count()
        with pytest.raises(PermissionDenied):
            member_role_set(member=me, role=new_role, actor=me)
        me.refresh_from_db()
        assert me.role == role
        assert _audit_count() == events_before


def test_inactive_admin_cannot_change_roles(tenant, make_member):
    actor = make_member(Role.ADMIN, status=MemberStatus.DEACTIVATED)
    target = make_member(Role.MEMBER)
    with tenant_context(tenant), pytest.raises(PermissionDenied):
        member_role_set(member=target, role=Role.ADMIN, actor=actor)


def test_unknown_role_is_refused(tenant, make_member):
    target = make_member(Role.MEMBER)
    with tenant_context(tenant), pytest.raises(ApplicationError):
        member_role_set(member=target, role="superuser", actor=None)


@pytest.mark.parametrize(
    ("target_role", "new_role"),
    [
        (Role.OWNER, Role.ADMIN),
        (Role.OWNER, Role.MEMBER),
        (Role.MEMBER, Role.OWNER),
        (Role.ADMIN, Role.OWNER),
    ],
)
def test_system_never_touches_owners(tenant, make_member, target_role, new_role):
    target = make_member(target_role)
    with tenant_context(tenant):
        events_before = _audit_count()
        with pytest.raises(PermissionDenied):
            member_role_set(member=target, role=new_role, actor=None)
        target.refresh_from_db()
        assert target.role == target_role
        assert _audit_count() == events_before


def test_system_changes_non_owner_roles(tenant, make_member):
    # EDI's admin_permission maps admin -> admin and reporting -> read-only admin.
    target = make_member(Role.MEMBER)
    with tenant_context(tenant):
        member_role_set(member=target, role=Role.ADMIN, actor=None)
        member_role_set(member=target, role=Role.READONLY_ADMIN, actor=None)
        target.refresh_from_db()
        assert target.role == Role.READONLY_ADMIN
        assert (
            AuditEvent.objects.filter(
                action="portal.member.role_changed",
                target_id=str(target.pk),
                actor_type="system",
            ).count()
            == 2
        )


def test_system_cannot_demote_sole_owner(tenant):
    owner = _sole_owner(tenant)
    with tenant_context(tenant):
        events_before = _audit_count()
        with pytest.raises(PermissionDenied):
            member_role_set(member=owner, role=Role.ADMIN, actor=None)
        owner.refresh_from_db()
        assert owner.role == Role.OWNER
        assert _audit_count() == events_before


def test_sole_owner_cannot_demote_themselves(tenant):
    owner = _sole_owner(tenant)
    with tenant_context(tenant):
        with pytest.raises(PermissionDenied):
            member_role_set(member=owner, role=Role.ADMIN, actor=owner)
        owner.refresh_from_db()
        assert owner.role == Role.OWNER


def test_last_owner_cannot_be_deactivated_by_system(tenant):
    owner = _sole_owner(tenant)
    with tenant_context(tenant):
        events_before = _audit_count()
        with pytest.raises(ApplicationError) as caught:
            member_deactivate(member=owner, actor=None)
        assert caught.value.code == "last_owner"
        owner.refresh_from_db()
        assert owner.status == MemberStatus.ACTIVE
        assert _audit_count() == events_before


def test_owner_can_deactivate_another_owner_until_one_is_left(tenant, make_member):
    first = _sole_owner(tenant)
    second = make_member(Role.OWNER)
    with tenant_context(tenant):
        member_deactivate(member=first, actor=second)
        first.refresh_from_db()
        assert first.status == MemberStatus.DEACTIVATED
        # `second` is now the last active owner: nobody may remove them.
        with pytest.raises(PermissionDenied):
            member_deactivate(member=second, actor=second)
        with pytest.raises(ApplicationError) as caught:
            member_deactivate(member=second, actor=None)
        assert caught.value.code == "last_owner"
        second.refresh_from_db()
        assert second.status == MemberStatus.ACTIVE


def test_admin_cannot_deactivate_owner(tenant, tenant_admin):
    owner = _sole_owner(tenant)
    with tenant_context(tenant):
        with pytest.raises(PermissionDenied):
            member_deactivate(member=owner, actor=tenant_admin)
        owner.refresh_from_db()
        assert owner.status == MemberStatus.ACTIVE


def test_page_role_change_of_last_owner_is_refused(tenant, tenant_owner, client_for):
    client = client_for(tenant_owner)
    response = client.post(f"/members/{tenant_owner.pk}/role/", {"role": Role.ADMIN})
    assert response.status_code == 403
    with tenant_context(tenant):
        tenant_owner.refresh_from_db()
        assert tenant_owner.role == Role.OWNER
        assert not AuditEvent.objects.filter(
            action="portal.member.role_changed", target_id=str(tenant_owner.pk)
        ).exists()


def test_page_deactivation_of_last_owner_is_refused(tenant, tenant_owner, client_for):
    client = client_for(tenant_owner)
    response = client.post(f"/members/{tenant_owner.pk}/deactivate/")
    assert response.status_code == 403
    with tenant_context(tenant):
        tenant_owner.refresh_from_db()
        assert tenant_owner.status == MemberStatus.ACTIVE
        assert not AuditEvent.objects.filter(
            action="portal.member.deactivated", target_id=str(tenant_owner.pk)
        ).exists()


@pytest.mark.parametrize("action", ["role", "deactivate"])
def test_page_admin_cannot_touch_owner(
    tenant, tenant_owner, tenant_admin, client_for, action
):
    client = client_for(tenant_admin)
    response = client.post(
        f"/members/{tenant_owner.pk}/{action}/", {"role": Role.MEMBER}
    )
    assert response.status_code == 403
    with tenant_context(tenant):
        tenant_owner.refresh_from_db()
        assert tenant_owner.role == Role.OWNER
        assert tenant_owner.status == MemberStatus.ACTIVE


def test_page_owner_changes_a_role(tenant, tenant_owner, make_member, client_for):
    target = make_member(Role.MEMBER)
    response = client_for(tenant_owner).post(
        f"/members/{target.pk}/role/", {"role": Role.ADMIN}
    )
    assert response.status_code == 302
    with tenant_context(tenant):
        target.refresh_from_db()
        assert target.role == Role.ADMIN


def test_page_user_admin_cannot_change_roles(tenant, make_member, client_for):
    user_admin = make_member(Role.USER_ADMIN)
    target = make_member(Role.MEMBER)
    response = client_for(user_admin).post(
        f"/members/{target.pk}/role/", {"role": Role.USER_ADMIN}
    )
    assert response.status_code == 403
    with tenant_context(tenant):
        target.refresh_from_db()
        assert target.role == Role.MEMBER


def test_bulk_cannot_remove_last_owner(tenant, tenant_owner, tenant_admin):
    with tenant_context(tenant):
        events_before = _audit_count()
        mine = member_bulk_request(
            actor=tenant_owner,
            action="change_role",
            member_ids=[tenant_owner.pk],
            params={"role": Role.ADMIN},
        )
        assert mine.applied == 0
        assert mine.skipped == [(tenant_owner.pk, "Nobody can change their own role.")]
        own_deactivation = member_bulk_request(
            actor=tenant_owner,
            action="deactivate",
            member_ids=[tenant_owner.pk],
            params={},
            confirm_slug=tenant.slug,
            recent_sign_in=True,
        )
        assert own_deactivation.applied == 0
        assert own_deactivation.skipped[0][0] == tenant_owner.pk
        for action, params in (("deactivate", {}), ("change_role", {"role": "member"})):
            outcome = member_bulk_request(
                actor=tenant_admin,
                action=action,
                member_ids=[tenant_owner.pk],
                params=params,
                confirm_slug=tenant.slug,
                recent_sign_in=True,
            )
            assert outcome.applied == 0
            assert outcome.skipped == [
                (tenant_owner.pk, "Your role cannot change this member.")
            ]
        tenant_owner.refresh_from_db()
        assert tenant_owner.role == Role.OWNER
        assert tenant_owner.status == MemberStatus.ACTIVE
        assert _audit_count() == events_before


# --- may_manage_member (PORTAL-01 object rule) ---------------------------------

MANAGE = {
    Role.OWNER: set(ROLES),
    Role.ADMIN: set(ROLES) - {Role.OWNER},
    Role.USER_ADMIN: {Role.MEMBER},
    Role.READONLY_ADMIN: set(),
    Role.MEMBER: set(),
}
PAIRS = list(itertools.product(ROLES, ROLES))


@pytest.mark.parametrize(
    ("actor_role", "target_role"), PAIRS, ids=["-".join(p) for p in PAIRS]
)
def test_may_manage_member_matrix(actor_role, target_role):
    # Unsaved instances: the rule reads roles and status only.
    actor = Member(pk=1, role=actor_role, status=MemberStatus.ACTIVE)
    target = Member(pk=2, role=target_role, status=MemberStatus.ACTIVE)
    allowed: set[str] = set(MANAGE[actor_role])  # type: ignore[call-overload]
    assert may_manage_member(actor, target) is (target_role in allowed)


@pytest.mark.parametrize("actor_role", ROLES)
def test_inactive_actor_manages_nobody(actor_role):
    for status in (MemberStatus.INVITED, MemberStatus.DEACTIVATED):
        actor = Member(pk=1, role=actor_role, status=status)
        target = Member(pk=2, role=Role.MEMBER, status=MemberStatus.ACTIVE)
        assert may_manage_member(actor, target) is False


@pytest.mark.parametrize("target_role", ROLES)
def test_user_admin_edits_only_members(tenant, make_member, target_role):
    user_admin = make_member(Role.USER_ADMIN)
    target = make_member(target_role, job_title="Before")
    with tenant_context(tenant):
        if target_role == Role.MEMBER:
            member_update(member=target, actor=user_admin, job_title="After")
            seat_grant(member_ids=[target.pk], actor=user_admin)
        else:
            with pytest.raises(PermissionDenied):
                member_update(member=target, actor=user_admin, job_title="After")
            with pytest.raises(PermissionDenied):
                seat_grant(member_ids=[target.pk], actor=user_admin)
            with pytest.raises(PermissionDenied):
                member_deactivate(member=target, actor=user_admin)
        target.refresh_from_db()
        allowed = target_role == Role.MEMBER
        assert target.job_title == ("After" if allowed else "Before")
        assert target.has_seat is allowed
        assert target.status == MemberStatus.ACTIVE


@pytest.mark.parametrize("target_role", ROLES)
def test_readonly_admin_changes_nothing(tenant, make_member, target_role):
    viewer = make_member(Role.READONLY_ADMIN)
    target = make_member(target_role, job_title="Before")
    with tenant_context(tenant):
        events_before = _audit_count()
        with pytest.raises(PermissionDenied):
            member_update(member=target, actor=viewer, job_title="After")
        with pytest.raises(PermissionDenied):
            seat_grant(member_ids=[target.pk], actor=viewer)
        with pytest.raises(PermissionDenied):
            member_deactivate(member=target, actor=viewer)
        target.refresh_from_db()
        assert target.job_title == "Before"
        assert not target.has_seat
        assert _audit_count() == events_before


@pytest.mark.parametrize(
    ("actor_role", "target_role", "status"),
    [
        (Role.USER_ADMIN, Role.MEMBER, 302),
        (Role.USER_ADMIN, Role.ADMIN, 403),
        (Role.USER_ADMIN, Role.READONLY_ADMIN, 403),
        (Role.READONLY_ADMIN, Role.MEMBER, 403),
        (Role.ADMIN, Role.USER_ADMIN, 302),
    ],
)
def test_page_edit_follows_object_rule(
    tenant, make_member, client_for, actor_role, target_role, status
):
    actor = make_member(actor_role)
    target = make_member(target_role, job_title="Before")
    response = client_for(actor).post(
        f"/members/{target.pk}/",
        {
            "first_name": target.first_name,
            "last_name": target.last_name,
            "job_title": "After",
        },
    )
    assert response.status_code == status
    with tenant_context(tenant):
        target.refresh_from_db()
        assert target.job_title == ("After" if status == 302 else "Before")
