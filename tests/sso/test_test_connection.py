"""Test connection (SSO-F14): the SP-initiated flow that signs nobody in.

The report is for the admin who started it only; it shows each check, the
NameID, every attribute, the verifying certificate and what the mapping
would do, and nothing is provisioned, linked, re-roled or signed in. A
response signed by another key fails with `signature_invalid`, naming the
expected and received fingerprints. A pass records `last_test_passed_at`.
"""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from portal.models import AuditEvent, Member
from portal.roles import Role
from sso import models as sso_models
from sso.models import FinishTicket, IdentityProvider, PendingRequest
from sso.services.config import group_mappings_set, idp_policies_set
from tests.conftest import ClientMaker, MemberMaker
from tests.sso.conftest import SamlHarness, default_attrs
from tests.sso.idp import TestIdP, cert_fingerprint
from tests.sso.test_login import (
    ALICE,
    navigation_url,
    signed_in_member,
    snapshot,
)

REPORT = re.compile(r"^/sso/test/([0-9a-f-]{36})/$")


def start_test(h: SamlHarness, admin_client: Client) -> str:
    location = navigation_url(admin_client.post("/sso/test/"))
    assert location.startswith(h.idp.sso_url + "?")
    return location


def run_test(
    h: SamlHarness, admin_client: Client, *, idp: TestIdP | None = None, **kw: Any
) -> tuple[str, Any]:
    """Start a test, answer it, POST it cookie-less; returns (report URL, snapshot)."""
    login_url = start_test(h, admin_client)
    before = snapshot(h)
    attrs = kw.pop("attrs", None) or default_attrs(ALICE, groups=["admins", "staff"])
    saml_response, relay = (idp or h.idp).answer(
        login_url, email=kw.pop("email", ALICE), attrs=attrs, **kw
    )
    acs = h.post(saml_response, relay or "")
    assert acs.status_code == 303, acs.content[:300]
    location = str(acs["Location"])
    assert REPORT.match(location), location
    return location, before


def last_passed(h: SamlHarness) -> Any:
    with tenant_context(h.tenant):
        return IdentityProvider.objects.get().last_test_passed_at


def actions(h: SamlHarness, action: str) -> list[AuditEvent]:
    with tenant_context(h.tenant):
        return list(AuditEvent.objects.filter(action=action))


def test_a_passing_test_reports_everything_and_changes_nothing(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    with tenant_context(saml.tenant):
        group_mappings_set(mappings=[("admins", Role.ADMIN)], actor=None)
        idp_policies_set(actor=None, role_mapping_enabled=True)
    owner_client = client_for(tenant_owner)
    with tenant_context(saml.tenant):
        owner_key = owner_client.session.session_key
    assert last_passed(saml) is None
    url, before = run_test(saml, owner_client)
    with tenant_context(saml.tenant):
        pending_kinds = set(PendingRequest.objects.values_list("kind", flat=True))
        assert not FinishTicket.objects.exists()
    assert PendingRequest.Kind.TEST not in pending_kinds  # spent

    response = owner_client.get(url)
    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    assert re.search(r"Test connection: <span[^>]*>passed</span>", page)
    for label in (
        "Message decoded and well-formed",
        "Signature verified with a configured certificate",
        "Addressed to this portal (Destination, Recipient, Audience)",
        "Attributes and groups map to a person and role",
    ):
        assert label in page
    assert "failed</span>" not in page
    assert ALICE in page
    assert "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress" in page
    for name in ("email", "firstName", "lastName", "groups"):
        assert f"<code>{name}</code>" in page
    assert "admins, staff" in page
    assert cert_fingerprint(saml.idp.cert_pem) in page
    assert "<dt>Role</dt><dd>Admin</dd>" in page
    assert "a new member would be created" in page
    # The decoded Response is shown, escaped.
    raw = response.content.decode()
    assert re.search(r"&lt;\w+:Assertion", raw)
    assert not re.search(r"<\w+:Assertion", raw)

    after = snapshot(saml)
    assert (after.members, after.links, after.sso_sessions) == (
        before.members,
        before.links,
        before.sso_sessions,
    )
    assert after.sessions == before.sessions
    assert after.member_sessions == before.member_sessions
    assert not actions(saml, "sso.login.succeeded")
    with tenant_context(saml.tenant):
        assert not Member.objects.filter(email__iexact=ALICE).exists()
        assert owner_client.session.session_key == owner_key
    assert signed_in_member(saml, owner_client) == tenant_owner
    assert last_passed(saml) is not None
    assert len(actions(saml, "sso.test.passed")) == 1
    with tenant_context(saml.tenant):
        run = sso_models.TestRun.objects.get()
    assert (run.passed, run.member_id) == (True, tenant_owner.pk)


def test_an_existing_member_is_neither_linked_nor_re_roled(
    saml: SamlHarness, tenant_client: Client, make_member: MemberMaker
) -> None:
    alice = make_member(Role.MEMBER, email=ALICE)
    with tenant_context(saml.tenant):
        group_mappings_set(mappings=[("admins", Role.ADMIN)], actor=None)
        idp_policies_set(actor=None, role_mapping_enabled=True)
    url, before = run_test(saml, tenant_client)
    page = html.unescape(tenant_client.get(url).content.decode())
    assert f"existing member {ALICE}" in page
    assert "<dt>Role</dt><dd>Admin</dd>" in page
    after = snapshot(saml)
    assert (after.members, after.links) == (before.members, before.links)
    with tenant_context(saml.tenant):
        assert Member.objects.get(pk=alice.pk).role == Role.MEMBER
        assert not actions(saml, "portal.member.role_changed")


def test_the_report_is_only_for_the_admin_who_started_it(
    saml: SamlHarness,
    tenant_client: Client,
    make_member: MemberMaker,
    client_for: ClientMaker,
) -> None:
    url, _ = run_test(saml, tenant_client)
    assert tenant_client.get(url).status_code == 200
    other_admin = client_for(make_member(Role.ADMIN))
    response = other_admin.get(url)
    assert response.status_code == 404
    assert ALICE not in response.content.decode()
    anonymous = saml.client().get(url)
    assert anonymous.status_code in {302, 403, 404}
    assert ALICE not in anonymous.content.decode()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.READONLY_ADMIN])
def test_only_editors_start_a_test(
    saml: SamlHarness, make_member: MemberMaker, client_for: ClientMaker, role: str
) -> None:
    response = client_for(make_member(role)).post("/sso/test/")
    assert response.status_code == 403
    with tenant_context(saml.tenant):
        assert not PendingRequest.objects.exists()


def test_wrong_certificate_names_expected_and_received_fingerprints(
    saml: SamlHarness,
    tenant_client: Client,
    other_idp_keypair: tuple[str, str],
) -> None:
    impostor = TestIdP(
        saml.idp._sp_metadata,  # noqa: SLF001 - the same SP, another key
        other_idp_keypair[0],
        other_idp_keypair[1],
        entity_id=saml.idp.entity_id,
    )
    url, before = run_test(saml, tenant_client, idp=impostor)
    response = tenant_client.get(url)
    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    assert re.search(r"Test connection: <span[^>]*>failed</span>", page)
    assert "<code>signature_invalid</code>" in page
    expected = cert_fingerprint(saml.idp.cert_pem)
    received = cert_fingerprint(impostor.cert_pem)
    assert expected != received
    expected_at = page.index("<dt>Expected</dt>")
    received_at = page.index("<dt>Received</dt>")
    assert expected_at < page.index(expected, expected_at) < received_at
    assert page.index(received, received_at) > received_at
    assert "Upload the IdP's current signing certificate" in page
    assert re.search(
        r"failed</span>\s*Signature verified with a configured certificate", page
    )
    assert last_passed(saml) is None
    (event,) = actions(saml, "sso.test.failed")
    assert event.changes["reason"] == "signature_invalid"
    after = snapshot(saml)
    assert (after.members, after.links, after.sso_sessions) == (
        before.members,
        before.links,
        before.sso_sessions,
    )


def test_a_failed_mapping_fails_the_test(
    saml: SamlHarness, tenant_client: Client
) -> None:
    url, _ = run_test(
        saml,
        tenant_client,
        attrs={"firstName": ["Alice"]},
        name_id="x",
        name_id_format=None,
    )
    page = html.unescape(tenant_client.get(url).content.decode())
    assert "<code>attribute_missing</code>" in page
    assert last_passed(saml) is None
