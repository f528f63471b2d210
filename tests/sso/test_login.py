"""SP-initiated (SSO-F5) and IdP-initiated (SSO-F8) sign-in, safe landing.

Also home of the small helpers the other SSO flow tests share: a snapshot
of everything a refusal must leave alone (members, links, sessions) and
`assert_refused`, which checks the house error format, the one audit event
and that nothing changed (sso.md §6).
"""

from __future__ import annotations

import base64
import html
import re
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.test import Client
from django_tenants.utils import tenant_context

from portal.models import AuditEvent, Member, MemberSession
from sso.models import PendingRequest, SsoLink, SsoSession
from sso.services.config import idp_policies_set
from tests.sso import attacks
from tests.sso.conftest import SamlHarness
from tests.sso.idp import NS, IncorrectlySigned, parse_xml

ALICE = "alice@corp.test"
JSON: dict[str, Any] = {"HTTP_ACCEPT": "application/json"}
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")

# SSO-S13: every one of these lands on the default landing path.
OPEN_REDIRECTS = [
    "https://evil.test",
    "//evil.test",
    "/\\evil.test",
    "%2F%2Fevil.test",
    "javascript:alert(1)",
    "\t//evil.test",
]


# --------------------------------------------------------------------------
# Shared helpers (imported by the other SSO flow tests)


@dataclass(frozen=True)
class Snapshot:
    """What a refusal must not change, plus the audit events of one action."""

    members: dict[int, tuple[Any, ...]]
    links: frozenset[tuple[Any, ...]]
    sso_sessions: frozenset[str]
    sessions: frozenset[str]
    member_sessions: frozenset[str]
    events: tuple[int, ...]


def snapshot(h: SamlHarness, action: str = "sso.login.failed") -> Snapshot:
    with tenant_context(h.tenant):
        return Snapshot(
            members={
                m.pk: (
                    m.email,
                    m.role,
                    m.status,
                    m.has_seat,
                    m.source,
                    m.user_id,
                    m.first_name,
                    m.last_name,
                    m.last_sign_in_at,
                )
                for m in Member.objects.all()
            },
            links=frozenset(
                SsoLink.objects.values_list(
                    "member_id", "idp_entity_id", "name_id", "immutable_id"
                )
            ),
            sso_sessions=frozenset(
                SsoSession.objects.values_list("session_key", flat=True)
            ),
            sessions=frozenset(Session.objects.values_list("session_key", flat=True)),
            member_sessions=frozenset(
                MemberSession.objects.values_list("session_key", flat=True)
            ),
            events=tuple(
                AuditEvent.objects.filter(action=action)
                .order_by("pk")
                .values_list("pk", flat=True)
            ),
        )


def assert_refused(
    h: SamlHarness,
    response: Any,
    code: str,
    before: Snapshot,
    *,
    status: int = 403,
    action: str = "sso.login.failed",
) -> AuditEvent:
    """Status, reason code, exactly one new audit event, nothing else changed."""
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()
    assert body["error"]["code"] == code, body
    after = snapshot(h, action)
    new = [pk for pk in after.events if pk not in before.events]
    assert len(new) == 1, (action, new)
    with tenant_context(h.tenant):
        event = AuditEvent.objects.get(pk=new[0])
    assert event.changes["reason"] == code, event.changes
    assert body["error"]["details"]["event_id"] == event.pk
    assert after.members == before.members
    assert after.links == before.links
    assert after.sso_sessions == before.sso_sessions
    assert after.sessions == before.sessions
    assert after.member_sessions == before.member_sessions
    # No session cookie is set; deleting an empty one a client sent is fine.
    cookie = response.cookies.get(settings.SESSION_COOKIE_NAME)
    assert cookie is None or cookie.value == "", cookie
    return event


def finish_json(client: Client, acs_response: Any) -> Any:
    """Follow the ACS's 303 to the finish step, asking for JSON errors."""
    assert acs_response.status_code == 303, (
        acs_response.status_code,
        acs_response.content[:400],
    )
    assert acs_response["Location"].startswith("/sso/saml/finish/?t=")
    return client.get(acs_response["Location"], **JSON)


def sp_attempt(
    h: SamlHarness,
    client: Client,
    email: str,
    *,
    next_path: str | None = None,
    action: str = "sso.login.failed",
    **kw: Any,
) -> tuple[Snapshot, Any]:
    """An SP-initiated sign-in; returns (snapshot after the start, finish)."""
    login_url = h.start(client, next_path)
    before = snapshot(h, action)
    saml_response, relay = h.answer(login_url, email, **kw)
    return before, finish_json(client, h.post(saml_response, relay or ""))


def sp_login(h: SamlHarness, client: Client, email: str, **kw: Any) -> Any:
    """A successful SP-initiated sign-in; returns the finish response (302)."""
    _, response = sp_attempt(h, client, email, **kw)
    assert response.status_code == 302, (response.status_code, response.content)
    return response


def idp_post(
    h: SamlHarness, email: str, relay_state: str = "", **kw: Any
) -> tuple[Snapshot, Any]:
    """An IdP-initiated POST (no InResponseTo) from a cookie-less client."""
    before = snapshot(h)
    xml = h.response_xml(email, **kw)
    return before, h.post_xml(xml, relay_state, **JSON)


def signed_in_member(h: SamlHarness, client: Client) -> Member | None:
    """The member the client's session belongs to, if any."""
    with tenant_context(h.tenant):
        user_id = client.session.get("_auth_user_id")
        if user_id is None:
            return None
        return Member.objects.filter(user_id=int(user_id)).first()


def member_by_email(h: SamlHarness, email: str) -> Member | None:
    with tenant_context(h.tenant):
        return Member.objects.filter(email__iexact=email).first()


def navigation_url(response: Any) -> str:
    """Where a response sends the browser on: a 302, or a continue page.

    After a POST from the portal's own pages (sign-out, test connection)
    the CSP's form-action forbids a redirect to the IdP, so the portal
    answers with a page whose link navigates on (`sso/continue.html`).
    """
    if response.status_code == 302:
        return str(response["Location"])
    assert response.status_code == 200, (response.status_code, response.content[:300])
    found = re.search(r'href="([^"]+)" data-autonavigate', response.content.decode())
    assert found, response.content[:500]
    return html.unescape(found.group(1))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def inflate(value: str) -> str:
    return zlib.decompress(base64.b64decode(value), -15).decode()


def deflate(xml: str) -> str:
    compressor = zlib.compressobj(wbits=-15)
    return base64.b64encode(
        compressor.compress(xml.encode()) + compressor.flush()
    ).decode()


# --------------------------------------------------------------------------
# SSO-F5: the AuthnRequest


def test_authn_request_is_signed_rsa_sha256_and_verified_by_pysaml2(
    saml: SamlHarness,
) -> None:
    client = saml.client()
    login_url = saml.start(client)
    assert login_url.startswith(saml.idp.sso_url + "?")
    params = query(login_url)
    assert params["SigAlg"] == RSA_SHA256
    assert params["Signature"]
    info = saml.idp.parse_authn_request_url(login_url)
    assert info.sp_id == saml.sp_entity_id
    assert info.acs == saml.acs_url
    root = parse_xml(info.xml)
    assert root.get("AssertionConsumerServiceURL") == saml.acs_url
    assert root.get("Destination") == saml.idp.sso_url
    with tenant_context(saml.tenant):
        pending = PendingRequest.objects.get(request_id=info.id)
    assert pending.kind == PendingRequest.Kind.LOGIN


def test_no_requested_authn_context(saml: SamlHarness) -> None:
    """AADSTS75011: Entra ID and ADFS refuse MFA sign-ins otherwise."""
    info = saml.idp.parse_authn_request_url(saml.start(saml.client()))
    root = parse_xml(info.xml)
    assert root.find("samlp:RequestedAuthnContext", NS) is None
    assert "RequestedAuthnContext" not in info.xml


@pytest.mark.parametrize("part", ["Signature", "SAMLRequest", "RelayState", "SigAlg"])
def test_tampered_authn_request_is_refused_by_pysaml2(
    saml: SamlHarness, part: str
) -> None:
    client = saml.client()
    login_url = saml.start(client)
    other = query(saml.start(client))  # a second, equally valid request
    if part == "Signature":
        original = base64.b64decode(query(login_url)["Signature"])
        flipped = bytes([original[0] ^ 1]) + original[1:]
        tampered = attacks.redirect_with_param(
            login_url, "Signature", base64.b64encode(flipped).decode()
        )
    elif part == "SAMLRequest":
        xml = inflate(query(login_url)["SAMLRequest"]).replace(
            saml.acs_url, saml.acs_url + "extra/"
        )
        tampered = attacks.redirect_with_param(login_url, "SAMLRequest", deflate(xml))
        # Swapping in another genuine request fails as well.
        swapped = attacks.redirect_with_param(
            login_url, "SAMLRequest", other["SAMLRequest"]
        )
        with pytest.raises((IncorrectlySigned, ValueError)):
            saml.idp.parse_authn_request_url(swapped)
    elif part == "RelayState":
        tampered = attacks.redirect_with_param(
            login_url, "RelayState", other["RelayState"]
        )
    else:
        tampered = attacks.redirect_without_param(login_url, "Signature", "SigAlg")
    with pytest.raises((IncorrectlySigned, ValueError)):
        saml.idp.parse_authn_request_url(tampered)
    saml.idp.parse_authn_request_url(login_url)  # the original still verifies


def test_relay_state_is_an_opaque_one_time_token(saml: SamlHarness) -> None:
    client = saml.client()
    login_url = saml.start(client, "/members/?page=2")
    relay = query(login_url)["RelayState"]
    assert TOKEN.match(relay)
    assert "members" not in relay
    assert relay not in login_url.split("RelayState=")[0]
    second = query(saml.start(client, "/members/?page=2"))["RelayState"]
    assert second != relay
    with tenant_context(saml.tenant):
        rows = list(PendingRequest.objects.order_by("created_at", "pk"))
    # Only the token's hash is stored; the next path stays on the server.
    assert [r.next_path for r in rows] == ["/members/?page=2"] * 2
    assert all(r.token_hash != relay and len(r.token_hash) == 64 for r in rows)
    response = sp_login(saml, client, ALICE, next_path="/members/")
    assert response["Location"] == "/members/"


def test_turning_request_signing_off_is_audited_and_unsigned(
    saml: SamlHarness, tenant_owner: Member
) -> None:
    with tenant_context(saml.tenant):
        before = AuditEvent.objects.filter(action="sso.policy.changed").count()
        idp_policies_set(actor=tenant_owner, sign_authn_requests=False)
        events = list(
            AuditEvent.objects.filter(action="sso.policy.changed").order_by("pk")
        )
    assert len(events) == before + 1
    assert events[-1].changes["sign_authn_requests"] == {
        "before": True,
        "after": False,
    }
    assert events[-1].actor_id == str(tenant_owner.pk)
    login_url = saml.start(saml.client())
    params = query(login_url)
    assert "Signature" not in params
    assert "SigAlg" not in params
    assert TOKEN.match(params["RelayState"])
    xml = inflate(params["SAMLRequest"])
    assert parse_xml(xml).find(".//{{{}}}Signature".format(NS["ds"])) is None
    # The IdP (WantAuthnRequestsSigned) refuses it, as a real IdP would.
    with pytest.raises((IncorrectlySigned, ValueError)):
        saml.idp.parse_authn_request_url(login_url)


# --------------------------------------------------------------------------
# SSO-F8: IdP-initiated sign-in


def test_idp_initiated_is_refused_while_off(saml: SamlHarness) -> None:
    before, response = idp_post(saml, ALICE)
    event = assert_refused(saml, response, "idp_initiated_disabled", before)
    assert event.changes["flow"] == "idp"
    assert member_by_email(saml, ALICE) is None


@pytest.fixture
def idp_initiated(saml: SamlHarness) -> SamlHarness:
    with tenant_context(saml.tenant):
        idp_policies_set(actor=None, allow_idp_initiated=True)
    return saml


def idp_login(
    h: SamlHarness, email: str, relay_state: str = "", **kw: Any
) -> tuple[Client, Any]:
    """A complete IdP-initiated sign-in; returns (client, finish response)."""
    client = h.client()
    xml = h.response_xml(email, **kw)
    acs = h.post_xml(xml, relay_state)
    return client, finish_json(client, acs)


def test_idp_initiated_lands_on_the_default_landing_path(
    idp_initiated: SamlHarness,
) -> None:
    client, response = idp_login(idp_initiated, ALICE)
    assert response.status_code == 302
    assert response["Location"] == "/"
    member = signed_in_member(idp_initiated, client)
    assert member is not None
    assert member.email == ALICE
    assert client.get("/").status_code == 200


def test_idp_initiated_relay_state_path_is_honoured(idp_initiated: SamlHarness) -> None:
    client, response = idp_login(idp_initiated, ALICE, "/members/")
    assert response.status_code == 302
    assert response["Location"] == "/members/"
    assert signed_in_member(idp_initiated, client) is not None


def test_idp_initiated_response_with_in_response_to_is_unsolicited(
    idp_initiated: SamlHarness,
) -> None:
    before, response = idp_post(idp_initiated, ALICE, in_response_to="_id-forged")
    assert_refused(idp_initiated, response, "unsolicited_response", before)


@pytest.mark.parametrize("payload", OPEN_REDIRECTS)
def test_idp_initiated_open_redirect_lands_on_root(
    idp_initiated: SamlHarness, payload: str
) -> None:
    client, response = idp_login(idp_initiated, ALICE, payload)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert signed_in_member(idp_initiated, client) is not None


def test_open_redirect_lands_on_the_configured_landing_path(
    idp_initiated: SamlHarness,
) -> None:
    with tenant_context(idp_initiated.tenant):
        idp_policies_set(actor=None, landing_path="/members/")
    _, response = idp_login(idp_initiated, ALICE, "//evil.test")
    assert response["Location"] == "/members/"
    _, response = idp_login(idp_initiated, "bob@corp.test")
    assert response["Location"] == "/members/"


@pytest.mark.parametrize("payload", OPEN_REDIRECTS)
def test_sp_initiated_next_open_redirect_lands_on_root(
    saml: SamlHarness, payload: str
) -> None:
    client = saml.client()
    # As the literal value of `next`, and as the raw query string's bytes.
    for url in (
        "/sso/saml/login/?next=" + quote(payload, safe=""),
        "/sso/saml/login/?next=" + payload.replace("\t", "%09"),
    ):
        start = client.get(url)
        assert start.status_code == 302
        relay = query(start["Location"])["RelayState"]
        assert TOKEN.match(relay)
    with tenant_context(saml.tenant):
        assert set(PendingRequest.objects.values_list("next_path", flat=True)) == {"/"}
    response = sp_login(saml, client, ALICE, next_path=quote(payload, safe=""))
    assert response["Location"] == "/"
    assert signed_in_member(saml, client) is not None
