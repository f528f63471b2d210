"""From a verified assertion to a member (SSO-F9, F10, F11, F12).

NameID formats and the identity key, linking and just-in-time provisioning,
the attribute presets and group → role mapping, each through the whole
SP-initiated flow against the pysaml2 test IdP.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from saml2.saml import (
    NAMEID_FORMAT_EMAILADDRESS,
    NAMEID_FORMAT_PERSISTENT,
    NAMEID_FORMAT_TRANSIENT,
    NAMEID_FORMAT_UNSPECIFIED,
)

from portal.errors import ApplicationError
from portal.models import AuditEvent, Member, MemberSource, MemberStatus
from portal.roles import Role
from portal.services.members import seat_limit_set
from sso.models import SsoLink, SsoSession
from sso.services.config import group_mappings_set, idp_policies_set
from tenants.models import Tenant
from tests.conftest import ClientMaker, MemberMaker
from tests.sso.conftest import SamlHarness, default_attrs
from tests.sso.test_login import (
    ALICE,
    assert_refused,
    member_by_email,
    signed_in_member,
    snapshot,
    sp_attempt,
    sp_login,
)

BOB = "bob@corp.test"
ENTRA_CLAIMS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
ENTRA_GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
ENTRA_OID = "http://schemas.microsoft.com/identity/claims/objectidentifier"
ADFS_GROUPS = "http://schemas.xmlsoap.org/claims/Group"
ENTRA_OVERAGE = "http://schemas.microsoft.com/claims/groups.link"


def policies(h: SamlHarness, **changes: Any) -> None:
    with tenant_context(h.tenant):
        idp_policies_set(actor=None, **changes)


def mappings(h: SamlHarness, *pairs: tuple[str, str], **changes: Any) -> None:
    with tenant_context(h.tenant):
        group_mappings_set(mappings=list(pairs), actor=None)
        idp_policies_set(actor=None, role_mapping_enabled=True, **changes)


def link_of(h: SamlHarness, member: Member) -> SsoLink | None:
    with tenant_context(h.tenant):
        return SsoLink.objects.filter(member=member).first()


def refresh(h: SamlHarness, member: Member) -> Member:
    with tenant_context(h.tenant):
        return Member.objects.get(pk=member.pk)


def login_as(h: SamlHarness, email: str, **kw: Any) -> tuple[Client, Member]:
    """A successful sign-in from a fresh client; returns it and the member."""
    client = h.client()
    sp_login(h, client, email, **kw)
    member = signed_in_member(h, client)
    assert member is not None
    return client, member


def refused(h: SamlHarness, email: str, code: str, **kw: Any) -> AuditEvent:
    before, response = sp_attempt(h, h.client(), email, **kw)
    return assert_refused(h, response, code, before)


# --------------------------------------------------------------------------
# SSO-F9: NameID


@pytest.mark.parametrize(
    ("setting", "uri", "name_id"),
    [
        ("unspecified", NAMEID_FORMAT_UNSPECIFIED, "alice"),
        ("email", NAMEID_FORMAT_EMAILADDRESS, ALICE),
        ("persistent", NAMEID_FORMAT_PERSISTENT, "00u1abcDEF42"),
    ],
)
def test_each_name_id_format(
    saml: SamlHarness, setting: str, uri: str, name_id: str
) -> None:
    policies(saml, name_id_format=setting)
    client = saml.client()
    login_url = saml.start(client)
    assert saml.idp.parse_authn_request_url(login_url).name_id_format == uri
    saml_response, relay = saml.answer(
        login_url, ALICE, name_id=name_id, name_id_format=uri, session_index="s-1"
    )
    response = client.get(saml.post(saml_response, relay or "")["Location"])
    assert response.status_code == 302
    member = signed_in_member(saml, client)
    assert member is not None
    assert member.email == ALICE
    link = link_of(saml, member)
    assert link is not None
    assert (link.idp_entity_id, link.name_id, link.name_id_format) == (
        saml.idp.entity_id,
        name_id,
        uri,
    )
    with tenant_context(saml.tenant):
        row = SsoSession.objects.get(member=member)
    assert (row.name_id, row.name_id_format, row.session_index) == (
        name_id,
        uri,
        "s-1",
    )
    # The same NameID signs the same member in again.
    _, again = login_as(saml, ALICE, name_id=name_id, name_id_format=uri)
    assert again.pk == member.pk


def test_persistent_name_id_differing_in_case_is_another_person(
    saml: SamlHarness,
) -> None:
    policies(saml, name_id_format="persistent")
    persistent = {"name_id_format": NAMEID_FORMAT_PERSISTENT}
    _, alice = login_as(saml, ALICE, name_id="AbC-123", **persistent)
    # Same email, NameID differing only in case: never merged into Alice.
    event = refused(saml, ALICE, "identity_conflict", name_id="abc-123", **persistent)
    assert "AbC-123" in event.changes["expected"]
    assert "abc-123" in event.changes["received"]
    # Another email: a separate member with its own link.
    _, other = login_as(saml, BOB, name_id="abc-123", **persistent)
    assert other.pk != alice.pk
    with tenant_context(saml.tenant):
        links = dict(SsoLink.objects.values_list("name_id", "member_id"))
    assert links == {"AbC-123": alice.pk, "abc-123": other.pk}


def test_transient_name_id_without_immutable_id_is_unresolved(
    saml: SamlHarness,
) -> None:
    refused(
        saml,
        ALICE,
        "identity_unresolved",
        name_id="_t-9c1e",
        name_id_format=NAMEID_FORMAT_TRANSIENT,
    )
    assert member_by_email(saml, ALICE) is None


def test_transient_name_id_with_immutable_id_links_by_it(saml: SamlHarness) -> None:
    policies(saml, immutable_id_attribute="objectId")
    transient = {"name_id_format": NAMEID_FORMAT_TRANSIENT}
    attrs = default_attrs(ALICE, objectId=["oid-1"])
    _, first = login_as(saml, ALICE, name_id="_t-1", attrs=attrs, **transient)
    _, second = login_as(saml, ALICE, name_id="_t-2", attrs=attrs, **transient)
    assert first.pk == second.pk
    link = link_of(saml, first)
    assert link is not None
    assert link.immutable_id == "oid-1"
    assert link.name_id == "_t-2"  # kept current for SLO
    # Without the attribute: attribute_missing, naming it.
    event = refused(
        saml, ALICE, "attribute_missing", name_id="_t-3", attrs=default_attrs(ALICE)
    )
    assert "objectId" in event.changes["expected"]


def test_immutable_id_configured_later_adopts_existing_links(
    saml: SamlHarness,
) -> None:
    persistent = {"name_id_format": NAMEID_FORMAT_PERSISTENT}
    _, alice = login_as(saml, ALICE, name_id="p-alice", **persistent)
    link = link_of(saml, alice)
    assert link is not None
    assert link.immutable_id == ""
    policies(saml, immutable_id_attribute="objectId")
    attrs = default_attrs(ALICE, objectId=["oid-alice"])
    _, again = login_as(saml, ALICE, name_id="p-alice", attrs=attrs, **persistent)
    assert again.pk == alice.pk
    link = link_of(saml, alice)
    assert link is not None
    assert link.immutable_id == "oid-alice"
    # From now on the immutable ID is the key, whatever the NameID.
    _, moved = login_as(saml, ALICE, name_id="p-alice-2", attrs=attrs, **persistent)
    assert moved.pk == alice.pk
    # A changed NameID without the old link's immutable ID is still no merge.
    other = default_attrs(ALICE, objectId=["oid-other"])
    refused(saml, ALICE, "identity_conflict", name_id="p-x", attrs=other, **persistent)


def test_invalid_email_is_refused_with_its_reason(saml: SamlHarness) -> None:
    event = refused(saml, "bad..dots@corp.test", "attribute_missing")
    assert "valid email" in event.changes["expected"]
    # The NameID is logged (verified); the attribute value is not.
    for key in ("expected", "received", "message"):
        assert "bad..dots" not in event.changes[key]
    assert member_by_email(saml, "bad..dots@corp.test") is None


def _expiry_age(h: SamlHarness, client: Client) -> int:
    with tenant_context(h.tenant):
        return int(client.session.get_expiry_age())


def test_session_ends_at_session_not_on_or_after(saml: SamlHarness) -> None:
    soon = timezone.now() + dt.timedelta(hours=1)
    client, member = login_as(saml, ALICE, session_not_on_or_after=soon)
    assert 3500 <= _expiry_age(saml, client) <= 3600
    with tenant_context(saml.tenant):
        row = SsoSession.objects.get(member=member)
    assert abs((row.expires_at - soon).total_seconds()) < 2


@pytest.mark.parametrize("hours", [None, 24])
def test_session_never_outlives_twelve_hours(
    saml: SamlHarness, hours: int | None
) -> None:
    kw: dict[str, Any] = {}
    if hours is not None:
        kw["session_not_on_or_after"] = timezone.now() + dt.timedelta(hours=hours)
    client, _ = login_as(saml, ALICE, **kw)
    assert 12 * 3600 - 60 <= _expiry_age(saml, client) <= 12 * 3600


def test_admin_resets_a_link_audited(
    saml: SamlHarness, make_member: MemberMaker, client_for: ClientMaker
) -> None:
    policies(saml, name_id_format="persistent")
    persistent = {"name_id_format": NAMEID_FORMAT_PERSISTENT}
    _, alice = login_as(saml, ALICE, name_id="old-id", **persistent)
    refused(saml, ALICE, "identity_conflict", name_id="new-id", **persistent)
    # A plain member may not reset links.
    nobody = client_for(make_member(Role.MEMBER))
    response = nobody.post(f"/sso/links/{alice.pk}/reset/")
    assert response.status_code == 403
    assert link_of(saml, alice) is not None
    admin = make_member(Role.ADMIN)
    response = client_for(admin).post(f"/sso/links/{alice.pk}/reset/")
    assert response.status_code == 302
    assert response["Location"] == f"/members/{alice.pk}/"
    assert link_of(saml, alice) is None
    with tenant_context(saml.tenant):
        event = AuditEvent.objects.get(action="sso.link.reset")
    assert (event.target_id, event.actor_id) == (str(alice.pk), str(admin.pk))
    # The next sign-in links the new NameID to the same member.
    _, again = login_as(saml, ALICE, name_id="new-id", **persistent)
    assert again.pk == alice.pk
    link = link_of(saml, alice)
    assert link is not None
    assert link.name_id == "new-id"


# --------------------------------------------------------------------------
# SSO-F10: linking and JIT


def test_jit_creates_once(saml: SamlHarness) -> None:
    _, first = login_as(saml, ALICE)
    assert (first.source, first.role, first.status) == (
        MemberSource.SSO,
        Role.MEMBER,
        MemberStatus.ACTIVE,
    )
    assert (first.first_name, first.last_name) == ("Alice", "Doe")
    _, second = login_as(saml, ALICE)
    assert second.pk == first.pk
    with tenant_context(saml.tenant):
        assert Member.objects.filter(email__iexact=ALICE).count() == 1
        assert SsoLink.objects.filter(member=first).count() == 1
        assert AuditEvent.objects.filter(action="portal.member.created").count() == 1
        assert AuditEvent.objects.filter(action="sso.link.created").count() == 1
        assert AuditEvent.objects.filter(action="sso.login.succeeded").count() == 2


def test_edi_member_linked_by_employee_id(
    saml: SamlHarness, make_member: MemberMaker
) -> None:
    edi = make_member(
        email="a.doe@corp.test",
        employee_id="E-1001",
        source=MemberSource.EDI,
        first_name="Alicia",
        last_name="Doe-Smith",
        job_title="Engineer",
    )
    policies(saml, employee_id_attribute="employeeNumber")
    attrs = default_attrs(ALICE, employeeNumber=["E-1001"])
    _, member = login_as(saml, ALICE, attrs=attrs)
    assert member.pk == edi.pk
    member = refresh(saml, member)
    # EDI-set fields are kept.
    assert (member.email, member.first_name, member.last_name, member.job_title) == (
        "a.doe@corp.test",
        "Alicia",
        "Doe-Smith",
        "Engineer",
    )
    assert member_by_email(saml, ALICE) is None


def test_existing_member_linked_by_email_on_a_listed_domain(
    saml: SamlHarness, make_member: MemberMaker
) -> None:
    bob = make_member(email=BOB)
    policies(saml, jit_enabled=False)
    _, member = login_as(saml, BOB)
    assert member.pk == bob.pk
    assert link_of(saml, bob) is not None


def test_existing_member_on_an_unlisted_domain_is_refused(
    saml: SamlHarness, make_member: MemberMaker
) -> None:
    make_member(email="carol@partner.test")
    event = refused(saml, "carol@partner.test", "email_domain_not_allowed")
    assert event.changes["received"] == "partner.test"


def test_jit_on_an_unlisted_domain_is_refused(saml: SamlHarness) -> None:
    refused(saml, "dave@partner.test", "email_domain_not_allowed")
    assert member_by_email(saml, "dave@partner.test") is None


def test_unknown_person_without_jit_is_refused(saml: SamlHarness) -> None:
    policies(saml, jit_enabled=False)
    refused(saml, ALICE, "user_unknown")
    assert member_by_email(saml, ALICE) is None


def test_deactivated_member_is_refused_and_stays_deactivated(
    saml: SamlHarness, make_member: MemberMaker
) -> None:
    eve = make_member(email="eve@corp.test", status=MemberStatus.DEACTIVATED)
    refused(saml, "eve@corp.test", "member_deactivated")
    assert refresh(saml, eve).status == MemberStatus.DEACTIVATED
    # Linked first, deactivated later: refused too.
    _, alice = login_as(saml, ALICE)
    with tenant_context(saml.tenant):
        Member.objects.filter(pk=alice.pk).update(status=MemberStatus.DEACTIVATED)
    refused(saml, ALICE, "member_deactivated")
    assert refresh(saml, alice).status == MemberStatus.DEACTIVATED


def test_owner_links_only_while_signed_in(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    owner_email = tenant_owner.email
    policies(saml, allowed_email_domains=["corp.test", owner_email.split("@")[1]])
    refused(saml, owner_email, "identity_conflict")
    assert link_of(saml, tenant_owner) is None
    client = client_for(tenant_owner)
    sp_login(saml, client, owner_email)
    link = link_of(saml, tenant_owner)
    assert link is not None
    assert link.name_id == owner_email
    assert signed_in_member(saml, client) == tenant_owner
    # From now on the owner signs in with SSO like anyone else.
    _, member = login_as(saml, owner_email)
    assert member.pk == tenant_owner.pk
    assert refresh(saml, member).role == Role.OWNER


def test_same_email_in_another_tenant_is_untouched(
    saml: SamlHarness,
    other_saml: SamlHarness,
    other_tenant: Tenant,
    make_member: MemberMaker,
) -> None:
    theirs = make_member(email=ALICE, in_tenant=other_tenant)
    before = snapshot(other_saml)
    _, ours = login_as(saml, ALICE)
    assert ours.source == MemberSource.SSO
    assert snapshot(other_saml) == before
    with tenant_context(other_tenant):
        assert not SsoLink.objects.exists()
        assert Member.objects.get(email=ALICE).last_sign_in_at is None
    # And a sign-in at the other tenant links its own Alice only.
    before = snapshot(saml)
    _, mine = login_as(other_saml, ALICE)
    with tenant_context(other_tenant):
        assert mine.pk == Member.objects.get(email=ALICE).pk
        assert SsoLink.objects.get().member_id == theirs.pk
    after = snapshot(saml)
    assert (after.members, after.links) == (before.members, before.links)


def test_jit_grants_a_seat_within_the_limit_only(saml: SamlHarness) -> None:
    with tenant_context(saml.tenant):
        used = Member.objects.filter(has_seat=True).count()
        seat_limit_set(limit=used + 1)
    _, alice = login_as(saml, ALICE)
    assert refresh(saml, alice).has_seat
    _, bob = login_as(saml, BOB)
    bob = refresh(saml, bob)
    assert not bob.has_seat
    assert bob.source == MemberSource.SSO
    with tenant_context(saml.tenant):
        assert Member.objects.filter(has_seat=True).count() == used + 1


# --------------------------------------------------------------------------
# SSO-F11: attribute presets


PRESET_ATTRS: dict[str, tuple[list[tuple[str, list[str]]], str]] = {
    "entra": (
        [
            (ENTRA_CLAIMS + "emailaddress", ["Alice@Corp.test"]),
            (ENTRA_CLAIMS + "givenname", ["Alice"]),
            (ENTRA_CLAIMS + "surname", ["Doe"]),
            (ENTRA_GROUPS, ["3f2504e0-4f89-11d3-9a0c-0305e82c3301"]),
            (ENTRA_OID, ["9b2a1c3d-0000-4e5f-8a7b-1234567890ab"]),
        ],
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    ),
    "okta": (
        [
            ("email", [ALICE]),
            ("firstName", ["Alice"]),
            ("lastName", ["Doe"]),
            ("groups", ["Portal Admins"]),
        ],
        "Portal Admins",
    ),
    "google": (
        [
            ("email", [ALICE]),
            ("firstName", ["Alice"]),
            ("lastName", ["Doe"]),
            ("groups", ["portal-admins@corp.test"]),
        ],
        "portal-admins@corp.test",
    ),
    "adfs": (
        [
            (ENTRA_CLAIMS + "emailaddress", [ALICE]),
            (ENTRA_CLAIMS + "givenname", ["Alice"]),
            (ENTRA_CLAIMS + "surname", ["Doe"]),
            (ADFS_GROUPS, ["CORP\\Portal Admins"]),
        ],
        "CORP\\Portal Admins",
    ),
}


@pytest.mark.parametrize("preset", sorted(PRESET_ATTRS))
def test_each_preset_yields_the_profile(saml: SamlHarness, preset: str) -> None:
    attrs, group = PRESET_ATTRS[preset]
    policies(saml, preset=preset, name_id_format="persistent")
    mappings(saml, (group, Role.ADMIN))
    _, member = login_as(
        saml,
        ALICE,
        attrs=attrs,
        name_id="opaque-7Hq2",
        name_id_format=NAMEID_FORMAT_PERSISTENT,
    )
    member = refresh(saml, member)
    assert (member.email, member.first_name, member.last_name, member.role) == (
        ALICE,
        "Alice",
        "Doe",
        Role.ADMIN,
    )
    link = link_of(saml, member)
    assert link is not None
    expected_immutable = attrs[-1][1][0] if preset == "entra" else ""
    assert link.immutable_id == expected_immutable
    # Another IdP's attribute names do not stand in for the preset's.
    other = "okta" if preset in {"entra", "adfs"} else "entra"
    event = refused(
        saml,
        BOB,
        "attribute_missing",
        attrs=[(n, v) for n, v in PRESET_ATTRS[other][0] if "mail" in n],
        name_id="opaque-bob",
        name_id_format=NAMEID_FORMAT_PERSISTENT,
    )
    assert event.changes["received"].startswith("attributes: ")


def test_repeated_attributes_are_merged(saml: SamlHarness) -> None:
    mappings(saml, ("staff", Role.READONLY_ADMIN), ("admins", Role.ADMIN))
    repeated = [
        ("email", [ALICE]),
        ("groups", ["staff"]),
        ("firstName", ["Alice"]),
        ("groups", ["admins"]),
    ]
    _, member = login_as(saml, ALICE, attrs=repeated)
    assert refresh(saml, member).role == Role.ADMIN
    # The first occurrence counts too.
    mappings(saml, ("staff", Role.USER_ADMIN))
    _, member = login_as(saml, ALICE, attrs=repeated)
    assert refresh(saml, member).role == Role.USER_ADMIN


def test_missing_email_lists_the_attributes_received(saml: SamlHarness) -> None:
    attrs = {"firstName": ["Alice"], "lastName": ["Doe"], "groups": ["staff"]}
    event = refused(
        saml,
        ALICE,
        "attribute_missing",
        attrs=attrs,
        name_id="alice",
        name_id_format=NAMEID_FORMAT_UNSPECIFIED,
    )
    assert event.changes["received"] == "attributes: firstName, groups, lastName"
    assert "email" in event.changes["expected"]


def test_email_falls_back_to_an_email_name_id(saml: SamlHarness) -> None:
    attrs = {"firstName": ["Dave"], "lastName": ["Roe"]}
    _, member = login_as(saml, "dave@corp.test", attrs=attrs)
    assert (member.email, member.first_name) == ("dave@corp.test", "Dave")


# --------------------------------------------------------------------------
# SSO-F12: group → role mapping


def groups(email: str, *values: str) -> dict[str, list[str]]:
    return default_attrs(email, groups=list(values))


def test_multi_valued_groups_highest_match_wins(saml: SamlHarness) -> None:
    mappings(
        saml,
        ("staff", Role.MEMBER),
        ("helpdesk", Role.USER_ADMIN),
        ("auditors", Role.READONLY_ADMIN),
    )
    attrs = groups(ALICE, "staff", "auditors", "helpdesk", "unmapped")
    _, member = login_as(saml, ALICE, attrs=attrs)
    assert refresh(saml, member).role == Role.USER_ADMIN


def test_lost_group_demotes_at_next_login_audited(saml: SamlHarness) -> None:
    mappings(saml, ("admins", Role.ADMIN), ("staff", Role.READONLY_ADMIN))
    _, member = login_as(saml, ALICE, attrs=groups(ALICE, "staff", "admins"))
    assert refresh(saml, member).role == Role.ADMIN
    with tenant_context(saml.tenant):
        seen = set(
            AuditEvent.objects.filter(action="portal.member.role_changed").values_list(
                "pk", flat=True
            )
        )
    login_as(saml, ALICE, attrs=groups(ALICE, "staff"))
    assert refresh(saml, member).role == Role.READONLY_ADMIN
    with tenant_context(saml.tenant):
        events = list(
            AuditEvent.objects.filter(action="portal.member.role_changed").exclude(
                pk__in=seen
            )
        )
    assert len(events) == 1
    assert events[0].target_id == str(member.pk)
    assert events[0].changes["role"] == {
        "before": Role.ADMIN,
        "after": Role.READONLY_ADMIN,
    }
    # No groups at all: the default role.
    login_as(saml, ALICE, attrs=default_attrs(ALICE))
    assert refresh(saml, member).role == Role.MEMBER


def test_no_match_gives_the_default_role(saml: SamlHarness) -> None:
    mappings(saml, ("admins", Role.ADMIN), default_role=Role.READONLY_ADMIN)
    _, member = login_as(saml, ALICE, attrs=groups(ALICE, "staff"))
    assert refresh(saml, member).role == Role.READONLY_ADMIN


def test_no_match_refused_when_a_group_is_required(saml: SamlHarness) -> None:
    mappings(saml, ("admins", Role.ADMIN), group_required=True)
    event = refused(saml, ALICE, "no_matching_group", attrs=groups(ALICE, "staff"))
    assert "admins" in event.changes["expected"]
    assert "staff" in event.changes["received"]
    assert member_by_email(saml, ALICE) is None


def test_mapping_never_grants_or_removes_owner(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    with tenant_context(saml.tenant):
        with pytest.raises(ApplicationError) as caught:
            group_mappings_set(mappings=[("owners", Role.OWNER)], actor=None)
        assert caught.value.code == "role_invalid"
        with pytest.raises(ApplicationError) as caught:
            idp_policies_set(actor=None, default_role=Role.OWNER)
        assert caught.value.code == "owner_protected"
    owner_email = tenant_owner.email
    policies(saml, allowed_email_domains=["corp.test", owner_email.split("@")[1]])
    mappings(saml, ("staff", Role.MEMBER))
    sp_login(saml, client_for(tenant_owner), owner_email)  # links the owner
    _, member = login_as(saml, owner_email, attrs=groups(owner_email, "staff"))
    assert member.pk == tenant_owner.pk
    assert refresh(saml, member).role == Role.OWNER


@pytest.mark.parametrize(
    ("match", "role"), [("exact", Role.MEMBER), ("iexact", Role.ADMIN)]
)
def test_case_insensitive_matching_option(
    saml: SamlHarness, match: str, role: str
) -> None:
    mappings(saml, ("Portal-Admins", Role.ADMIN), group_match=match)
    _, member = login_as(saml, ALICE, attrs=groups(ALICE, "portal-ADMINS"))
    assert refresh(saml, member).role == role


def test_entra_overage_claim_is_refused(saml: SamlHarness) -> None:
    policies(saml, preset="entra")
    mappings(saml, ("3f2504e0", Role.ADMIN))
    attrs = [
        (ENTRA_CLAIMS + "emailaddress", [ALICE]),
        (ENTRA_OID, ["oid-1"]),
        (
            ENTRA_OVERAGE,
            ["https://graph.microsoft.com/v1.0/users/oid-1/getMemberObjects"],
        ),
    ]
    event = refused(saml, ALICE, "groups_overage", attrs=attrs)
    assert event.changes["received"] == ENTRA_OVERAGE
