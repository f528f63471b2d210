"""Enforce SSO and break-glass (SSO-F13).

With enforcement on, password sign-in is refused to everyone but owners
(pointing to SSO); an owner's password sign-in is break-glass: audited,
every owner emailed, a banner all session. Enforcement is switched on only
after a test connection passed within 24 hours (operators excepted), and
members created by SSO have no usable password.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from portal.errors import ApplicationError
from portal.models import AuditEvent, Member
from portal.roles import Role
from sso.models import IdentityProvider
from sso.services.config import idp_policies_set
from tests.conftest import OWNER_PASSWORD, ClientMaker, MemberMaker
from tests.factories import TEST_PASSWORD
from tests.sso.conftest import SamlHarness
from tests.sso.test_login import (
    ALICE,
    signed_in_member,
    sp_login,
)

BANNER = "Break-glass sign-in"


def enforce(h: SamlHarness) -> None:
    with tenant_context(h.tenant):
        idp_policies_set(actor=None, operator=True, enforce_sso=True)


def passed_test_at(h: SamlHarness, when: dt.datetime | None) -> None:
    with tenant_context(h.tenant):
        IdentityProvider.objects.update(last_test_passed_at=when)


def enforced(h: SamlHarness) -> bool:
    with tenant_context(h.tenant):
        return IdentityProvider.objects.get().enforce_sso


def events(h: SamlHarness, action: str) -> list[AuditEvent]:
    with tenant_context(h.tenant):
        return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def password_login(h: SamlHarness, email: str, password: str) -> tuple[Client, object]:
    client = h.client()
    response = client.post(
        "/accounts/login/", {"username": email, "password": password}
    )
    return client, response


# --------------------------------------------------------------------------
# Switching enforcement on


@pytest.mark.parametrize("age", [None, dt.timedelta(hours=24, minutes=1)])
def test_enforcing_needs_a_fresh_passed_test(
    saml: SamlHarness, tenant_owner: Member, age: dt.timedelta | None
) -> None:
    passed_test_at(saml, None if age is None else timezone.now() - age)
    with tenant_context(saml.tenant):
        with pytest.raises(ApplicationError) as caught:
            idp_policies_set(actor=tenant_owner, enforce_sso=True)
    assert caught.value.code == "test_required"
    assert not enforced(saml)
    assert not events(saml, "sso.enforcement.changed")


def test_enforcing_after_a_passed_test(saml: SamlHarness, tenant_owner: Member) -> None:
    passed_test_at(saml, timezone.now() - dt.timedelta(hours=23))
    with tenant_context(saml.tenant):
        idp_policies_set(actor=tenant_owner, enforce_sso=True)
    assert enforced(saml)
    (event,) = events(saml, "sso.enforcement.changed")
    assert event.actor_id == str(tenant_owner.pk)
    assert event.changes == {
        "enforce_sso": {"before": False, "after": True},
        "operator": False,
    }


def test_enforce_toggle_on_the_page_is_blocked_until_a_test_passes(
    saml: SamlHarness, tenant_client: Client
) -> None:
    response = tenant_client.post("/sso/enforce/", {"enforce_sso": "on"}, follow=True)
    assert response.status_code == 200
    assert "test connection" in response.content.decode()
    assert not enforced(saml)
    passed_test_at(saml, timezone.now())
    response = tenant_client.post("/sso/enforce/", {"enforce_sso": "on"})
    assert response.status_code == 302
    assert enforced(saml)


def test_operator_enforcement_is_audited_without_a_test(saml: SamlHarness) -> None:
    enforce(saml)
    assert enforced(saml)
    (event,) = events(saml, "sso.enforcement.changed")
    assert event.changes["operator"] is True


# --------------------------------------------------------------------------
# Password sign-in under enforcement


@pytest.mark.parametrize("role", [Role.ADMIN, Role.USER_ADMIN, Role.MEMBER])
def test_non_owner_password_login_refused_pointing_to_sso(
    saml: SamlHarness, make_member: MemberMaker, role: str
) -> None:
    enforce(saml)
    person = make_member(role)
    client, response = password_login(saml, person.email, TEST_PASSWORD)
    assert response.status_code == 400  # type: ignore[attr-defined]
    page = response.content.decode()  # type: ignore[attr-defined]
    assert "single sign-on" in page
    assert "/sso/saml/login/" in page
    assert signed_in_member(saml, client) is None
    failed = events(saml, "portal.login.failed")
    assert len(failed) == 1
    assert failed[0].target_id == str(person.pk)
    assert "single sign-on" in failed[0].changes["reason"]
    assert not events(saml, "sso.break_glass.used")
    assert mail.outbox == []


def test_admin_password_login_works_without_enforcement(
    saml: SamlHarness, make_member: MemberMaker
) -> None:
    admin = make_member(Role.ADMIN)
    client, response = password_login(saml, admin.email, TEST_PASSWORD)
    assert response.status_code == 302  # type: ignore[attr-defined]
    assert signed_in_member(saml, client) == admin
    assert BANNER not in client.get("/").content.decode()
    assert not events(saml, "sso.break_glass.used")


def test_owner_password_login_is_break_glass(
    saml: SamlHarness, tenant_owner: Member, make_member: MemberMaker
) -> None:
    second_owner = make_member(Role.OWNER)
    admin = make_member(Role.ADMIN)
    enforce(saml)
    client, response = password_login(saml, tenant_owner.email, OWNER_PASSWORD)
    assert response.status_code == 302  # type: ignore[attr-defined]
    assert signed_in_member(saml, client) == tenant_owner
    (event,) = events(saml, "sso.break_glass.used")
    assert (event.target_id, event.actor_id) == (
        str(tenant_owner.pk),
        str(tenant_owner.pk),
    )
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == sorted([tenant_owner.email, second_owner.email])
    assert admin.email not in message.to
    assert tenant_owner.email in message.body
    # The banner stays for the whole session.
    for path in ("/", "/members/", "/sso/"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert BANNER in page.content.decode(), path


def test_owner_sso_login_is_not_break_glass(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    enforce(saml)
    domain = tenant_owner.email.split("@")[1]
    with tenant_context(saml.tenant):
        idp_policies_set(actor=None, allowed_email_domains=["corp.test", domain])
    client = client_for(tenant_owner)
    sp_login(saml, client, tenant_owner.email)
    assert signed_in_member(saml, client) == tenant_owner
    assert BANNER not in client.get("/").content.decode()
    assert not events(saml, "sso.break_glass.used")
    assert mail.outbox == []


# --------------------------------------------------------------------------
# Members created by SSO


def test_sso_created_members_have_unusable_passwords(saml: SamlHarness) -> None:
    client = saml.client()
    sp_login(saml, client, ALICE)
    member = signed_in_member(saml, client)
    assert member is not None
    with tenant_context(saml.tenant):
        user = Member.objects.select_related("user").get(pk=member.pk).user
        assert user is not None
        assert not user.has_usable_password()
        assert not user.check_password("")
    _, response = password_login(saml, ALICE, "")
    assert response.status_code == 400  # type: ignore[attr-defined]
    _, response = password_login(saml, ALICE, "!")
    assert response.status_code == 400  # type: ignore[attr-defined]
