"""Single logout both ways (SSO-F7), against the pysaml2 test IdP.

SP-initiated: `/accounts/logout/` ends the local session first, then sends
a signed LogoutRequest the IdP verifies; the IdP's signed LogoutResponse is
checked (signature, InResponseTo). IdP-initiated: a signed LogoutRequest
ends that NameID's sessions (narrowed by SessionIndex) through the session
index, and a signed LogoutResponse answers; Redirect signatures are checked
over the raw query string, so lower-case escapes pass.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django_tenants.utils import tenant_context
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NAMEID_FORMAT_PERSISTENT, NameID

from portal.models import AuditEvent, Member
from sso.models import SsoSession
from sso.services.config import idp_configure_from_metadata
from tests.sso import attacks
from tests.sso.conftest import SamlHarness
from tests.sso.idp import (
    NS,
    STATUS_SUCCESS,
    TestIdP,
    inflate_b64,
    parse_xml,
    post_form,
    to_xml,
)
from tests.sso.test_login import (
    ALICE,
    JSON,
    TOKEN,
    assert_refused,
    navigation_url,
    query,
    signed_in_member,
    snapshot,
    sp_login,
)

BOB = "bob@corp.test"
FAILED = "sso.logout.failed"
STATUS_UNKNOWN_PRINCIPAL = "urn:oasis:names:tc:SAML:2.0:status:UnknownPrincipal"


def local(url: str) -> str:
    """The path and query of an absolute SP URL (for the test client)."""
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def login_as(
    h: SamlHarness, email: str, session_index: str | None = None
) -> tuple[Client, Member]:
    client = h.client()
    kw: dict[str, Any] = {}
    if session_index is not None:
        kw["session_index"] = session_index
    sp_login(h, client, email, **kw)
    member = signed_in_member(h, client)
    assert member is not None
    return client, member


def session_key(h: SamlHarness, client: Client) -> str:
    with tenant_context(h.tenant):
        key = client.session.session_key
    assert key
    return key


def alive(h: SamlHarness, key: str) -> bool:
    """Is the Django session (and its SSO index row) still there?

    `MemberSession` rows of ended sessions may linger until housekeeping
    (portal's `auth_housekeeping` removes orphans), so they are not checked.
    """
    with tenant_context(h.tenant):
        rows = (
            Session.objects.filter(session_key=key).exists(),
            SsoSession.objects.filter(session_key=key).exists(),
        )
    assert len(set(rows)) == 1, rows  # both or neither
    return rows[0]


def events(h: SamlHarness, action: str) -> list[AuditEvent]:
    with tenant_context(h.tenant):
        return list(AuditEvent.objects.filter(action=action).order_by("pk"))


# --------------------------------------------------------------------------
# SP-initiated


def sp_logout(h: SamlHarness, client: Client) -> str:
    """POST /accounts/logout/; returns the IdP's SLO URL it redirects to."""
    key = session_key(h, client)
    response = client.post("/accounts/logout/")
    # The local session is over before the IdP is even asked.
    assert not alive(h, key)
    assert signed_in_member(h, client) is None
    location = navigation_url(response)
    assert location.startswith(h.idp.slo_url + "?")
    return location


def test_sp_initiated_logout_sends_a_signed_request(saml: SamlHarness) -> None:
    client, alice = login_as(saml, ALICE, session_index="idx-A")
    _, bob = login_as(saml, BOB)
    location = sp_logout(saml, client)
    assert query(location)["SigAlg"].endswith("rsa-sha256")
    info = saml.idp.parse_logout_request(location)  # verifies the signature
    assert info.issuer == saml.sp_entity_id
    assert info.destination == saml.idp.slo_url
    assert (info.name_id, info.name_id_format) == (ALICE, NAMEID_FORMAT_EMAILADDRESS)
    assert info.session_indexes == ["idx-A"]
    assert info.relay_state
    assert TOKEN.match(info.relay_state)
    started = events(saml, "sso.logout.started")
    assert len(started) == 1
    assert started[0].target_id == str(alice.pk)
    assert started[0].changes["request_id"] == info.id
    with tenant_context(saml.tenant):
        assert SsoSession.objects.filter(member=bob).exists()

    # The IdP's signed answer completes it.
    answer = saml.idp.logout_response(location)
    assert answer.startswith(saml.sls_url + "?")
    response = client.get(local(answer))
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    completed = events(saml, "sso.logout.completed")
    assert len(completed) == 1
    assert completed[0].changes == {"request_id": info.id, "idp_status": STATUS_SUCCESS}
    page = client.get("/accounts/login/")
    assert "signed out here and at your identity provider" in page.content.decode()
    assert signed_in_member(saml, client) is None
    # The token was spent: the same answer again is refused.
    before = snapshot(saml, FAILED)
    again = client.get(local(answer), **JSON)
    assert_refused(saml, again, "request_unknown", before, action=FAILED)


def test_sp_initiated_logout_carries_the_name_id_qualifiers(
    saml: SamlHarness,
) -> None:
    client = saml.client()
    name_id = NameID(
        format=NAMEID_FORMAT_PERSISTENT,
        text="p-7Hq2",
        name_qualifier=saml.idp.entity_id,
        sp_name_qualifier=saml.sp_entity_id,
    )
    sp_login(saml, client, ALICE, name_id=name_id, session_index="idx-Q")
    info = saml.idp.parse_logout_request(sp_logout(saml, client))
    assert (info.name_id, info.name_id_format) == ("p-7Hq2", NAMEID_FORMAT_PERSISTENT)
    assert info.name_qualifier == saml.idp.entity_id
    assert info.sp_name_qualifier == saml.sp_entity_id
    assert info.session_indexes == ["idx-Q"]


def test_sp_initiated_logout_idp_failure_still_signed_out(saml: SamlHarness) -> None:
    client, _ = login_as(saml, ALICE)
    location = sp_logout(saml, client)
    answer = saml.idp.logout_response(location, status=STATUS_UNKNOWN_PRINCIPAL)
    response = client.get(local(answer), follow=True)
    assert response.status_code == 200
    assert "could not end its session" in response.content.decode()
    assert signed_in_member(saml, client) is None


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ("wrong_in_response_to", "request_unknown"),
        ("wrong_destination", "destination_mismatch"),
        ("unsigned", "signature_missing"),
        ("other_key", "signature_invalid"),
        ("relay_state_changed", "signature_invalid"),
    ],
)
def test_sp_initiated_bad_logout_response_refused_user_still_out(
    saml: SamlHarness, other_idp_keypair: tuple[str, str], variant: str, code: str
) -> None:
    client, _ = login_as(saml, ALICE)
    location = sp_logout(saml, client)
    kw: dict[str, Any] = {}
    if variant == "wrong_in_response_to":
        kw["edit"] = lambda root: root.set("InResponseTo", "_not-our-request")
    elif variant == "wrong_destination":
        kw["edit"] = lambda root: root.set("Destination", saml.sls_url + "extra/")
    elif variant == "unsigned":
        kw["sign"] = False
    answer = saml.idp.logout_response(location, **kw)
    if variant == "other_key":
        answer = saml.idp.redirect_url(
            answer.split("?")[0],
            "SAMLResponse",
            _inflated(answer),
            relay_state=query(answer).get("RelayState"),
            key_file=other_idp_keypair[0],
        )
    elif variant == "relay_state_changed":
        answer = attacks.redirect_with_param(answer, "RelayState", "x" * 43)
    before = snapshot(saml, FAILED)
    response = client.get(local(answer), **JSON)
    assert_refused(saml, response, code, before, action=FAILED)
    assert not events(saml, "sso.logout.completed")
    assert signed_in_member(saml, client) is None


def _inflated(url: str) -> str:
    return inflate_b64(query(url)["SAMLResponse"])


def test_logout_without_idp_slo_url_is_local_only(saml: SamlHarness) -> None:
    with tenant_context(saml.tenant):
        idp_configure_from_metadata(
            data=saml.idp.metadata(include_slo=False).encode(), actor=None
        )
    client, _ = login_as(saml, ALICE)
    key = session_key(saml, client)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert not alive(saml, key)
    assert not events(saml, "sso.logout.started")


def _form_fields(page: str) -> tuple[str, dict[str, str]]:
    action = re.search(r'<form method="post" action="([^"]+)" data-autosubmit', page)
    assert action, page[:500]
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))
    return html.unescape(action.group(1)), {
        k: html.unescape(v) for k, v in fields.items()
    }


def test_sp_initiated_logout_post_binding(saml: SamlHarness) -> None:
    """An IdP whose SLO endpoint is HTTP-POST: auto-posted, signed both ways."""
    metadata = saml.idp.metadata().replace(
        'Binding="' + BINDING_HTTP_REDIRECT + '" Location="' + saml.idp.slo_url,
        'Binding="' + BINDING_HTTP_POST + '" Location="' + saml.idp.slo_url,
    )
    assert BINDING_HTTP_POST in metadata
    with tenant_context(saml.tenant):
        idp_configure_from_metadata(data=metadata.encode(), actor=None)
    client, _ = login_as(saml, ALICE, session_index="idx-P")
    key = session_key(saml, client)
    response = client.post("/accounts/logout/")
    assert response.status_code == 200
    assert not alive(saml, key)
    action, fields = _form_fields(response.content.decode())
    assert action == saml.idp.slo_url
    assert TOKEN.match(fields["RelayState"])
    server = saml.idp.server
    request = server.parse_logout_request(fields["SAMLRequest"], BINDING_HTTP_POST)
    assert request is not None
    assert request.message.name_id.text == ALICE
    assert [i.text for i in request.message.session_index] == ["idx-P"]
    assert request.message.signature is not None  # verified by pysaml2 above
    answer = server.create_logout_response(
        request.message, bindings=[BINDING_HTTP_POST], sign=False
    )
    root = parse_xml(answer.to_string())
    assert root.get("Destination") == saml.sls_url
    value = post_form(saml.idp.sign_tree(root, sign_assertion=False))
    done = client.post(
        "/sso/saml/sls/", {"SAMLResponse": value, "RelayState": fields["RelayState"]}
    )
    assert done.status_code == 302
    assert done["Location"] == "/accounts/login/"
    assert len(events(saml, "sso.logout.completed")) == 1
    # Unsigned, the same answer is refused (its token is spent anyway).
    before = snapshot(saml, FAILED)
    unsigned = post_form(to_xml(parse_xml(answer.to_string())))
    again = client.post(
        "/sso/saml/sls/",
        {"SAMLResponse": unsigned, "RelayState": fields["RelayState"]},
        **JSON,
    )
    assert_refused(saml, again, "signature_missing", before, action=FAILED)


# --------------------------------------------------------------------------
# IdP-initiated


@pytest.fixture
def three_sessions(saml: SamlHarness) -> dict[str, str]:
    """Alice signed in twice (idx-1, idx-2), Bob once (idx-3): session keys."""
    keys = {}
    for name, email, index in (
        ("alice1", ALICE, "idx-1"),
        ("alice2", ALICE, "idx-2"),
        ("bob", BOB, "idx-3"),
    ):
        client, _ = login_as(saml, email, session_index=index)
        keys[name] = session_key(saml, client)
    return keys


def assert_logout_answer(h: SamlHarness, response: Any, relay: str | None) -> None:
    """The SP answered with a signed LogoutResponse redirect to the IdP."""
    assert response.status_code == 302, response.content[:300]
    location = str(response["Location"])
    assert location.startswith(h.idp.slo_url + "?")
    info = h.idp.parse_logout_response(location)  # requires a valid signature
    assert info.signed
    assert info.issuer == h.sp_entity_id
    assert info.in_response_to == h.idp.last_logout_request_id
    assert info.destination == h.idp.slo_url
    assert info.status == STATUS_SUCCESS
    assert info.relay_state == relay


def test_idp_initiated_ends_all_of_that_users_sessions_only(
    saml: SamlHarness, three_sessions: dict[str, str]
) -> None:
    url = saml.idp.logout_request(
        sp_sls_url=saml.sls_url, name_id=ALICE, relay_state="rs-1"
    )
    response = saml.client().get(local(url))  # cross-site: no cookie
    assert_logout_answer(saml, response, "rs-1")
    assert not alive(saml, three_sessions["alice1"])
    assert not alive(saml, three_sessions["alice2"])
    assert alive(saml, three_sessions["bob"])
    (event,) = events(saml, "sso.logout.idp_initiated")
    assert event.changes["sessions_ended"] == 2


def test_idp_initiated_session_index_narrows(
    saml: SamlHarness, three_sessions: dict[str, str]
) -> None:
    url = saml.idp.logout_request(
        sp_sls_url=saml.sls_url, name_id=ALICE, session_index="idx-1"
    )
    assert_logout_answer(saml, saml.client().get(local(url)), None)
    assert not alive(saml, three_sessions["alice1"])
    assert alive(saml, three_sessions["alice2"])
    assert alive(saml, three_sessions["bob"])


def test_idp_initiated_signed_clients_are_really_out(saml: SamlHarness) -> None:
    client, _ = login_as(saml, ALICE)
    assert client.get("/").status_code == 200
    url = saml.idp.logout_request(sp_sls_url=saml.sls_url, name_id=ALICE)
    assert_logout_answer(saml, saml.client().get(local(url)), None)
    page = client.get("/")
    assert page.status_code == 302
    assert page["Location"].startswith("/accounts/login/")


def test_lower_case_escapes_signed_over_that_string_pass(
    saml: SamlHarness, three_sessions: dict[str, str]
) -> None:
    url = saml.idp.logout_request(
        sp_sls_url=saml.sls_url,
        name_id=ALICE,
        relay_state="/back?to=a b",
        lowercase_escapes=True,
    )
    escapes = re.findall(r"%[0-9A-Fa-f]{2}", url)
    assert any(re.search("[a-f]", e) for e in escapes)
    assert not any(re.search("[A-F]", e) for e in escapes)
    # The same bytes in upper case no longer match the signature.
    upper = re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), url)
    before = snapshot(saml, FAILED)
    response = saml.client().get(local(upper), **JSON)
    assert_refused(saml, response, "signature_invalid", before, action=FAILED)
    assert alive(saml, three_sessions["alice1"])
    # As sent, it passes.
    assert_logout_answer(saml, saml.client().get(local(url)), "/back?to=a b")
    assert not alive(saml, three_sessions["alice1"])
    assert alive(saml, three_sessions["bob"])


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ("relay_state_changed", "signature_invalid"),
        ("unsigned", "signature_missing"),
        ("signature_removed", "signature_missing"),
        ("other_key", "signature_invalid"),
    ],
)
def test_idp_initiated_tampered_redirect_refused(
    saml: SamlHarness,
    three_sessions: dict[str, str],
    other_idp_keypair: tuple[str, str],
    variant: str,
    code: str,
) -> None:
    idp = saml.idp
    if variant == "other_key":
        idp = TestIdP(
            saml.idp._sp_metadata,  # noqa: SLF001 - same SP, other key
            other_idp_keypair[0],
            other_idp_keypair[1],
            entity_id=saml.idp.entity_id,
        )
    url = idp.logout_request(
        sp_sls_url=saml.sls_url,
        name_id=ALICE,
        relay_state="rs-1",
        sign=variant != "unsigned",
    )
    if variant == "relay_state_changed":
        url = attacks.redirect_with_param(url, "RelayState", "rs-2")
    elif variant == "signature_removed":
        url = attacks.redirect_without_param(url, "Signature")
    before = snapshot(saml, FAILED)
    response = saml.client().get(local(url), **JSON)
    assert_refused(saml, response, code, before, action=FAILED)
    assert all(alive(saml, key) for key in three_sessions.values())


def test_idp_initiated_replayed_request_refused(
    saml: SamlHarness, three_sessions: dict[str, str]
) -> None:
    url = saml.idp.logout_request(
        sp_sls_url=saml.sls_url, name_id=ALICE, session_index="idx-1"
    )
    assert_logout_answer(saml, saml.client().get(local(url)), None)
    before = snapshot(saml, FAILED)
    response = saml.client().get(local(url), **JSON)
    assert_refused(saml, response, "replayed", before, action=FAILED)
    assert alive(saml, three_sessions["alice2"])


def test_idp_initiated_post_binding(
    saml: SamlHarness, three_sessions: dict[str, str]
) -> None:
    value = saml.idp.logout_request(
        sp_sls_url=saml.sls_url, name_id=ALICE, binding="post"
    )
    response = saml.client().post(
        "/sso/saml/sls/", {"SAMLRequest": value, "RelayState": "rs-post"}, **JSON
    )
    assert_logout_answer(saml, response, "rs-post")
    assert not alive(saml, three_sessions["alice1"])
    assert not alive(saml, three_sessions["alice2"])
    assert alive(saml, three_sessions["bob"])


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ("unsigned", "signature_missing"),
        ("other_key", "signature_invalid"),
        ("name_id_edited", "signature_invalid"),
    ],
)
def test_idp_initiated_post_binding_refused(
    saml: SamlHarness,
    three_sessions: dict[str, str],
    other_idp_keypair: tuple[str, str],
    variant: str,
    code: str,
) -> None:
    if variant == "other_key":
        idp = TestIdP(
            saml.idp._sp_metadata,  # noqa: SLF001 - same SP, other key
            other_idp_keypair[0],
            other_idp_keypair[1],
            entity_id=saml.idp.entity_id,
        )
        value = idp.logout_request(
            sp_sls_url=saml.sls_url, name_id=ALICE, binding="post"
        )
    else:
        value = saml.idp.logout_request(
            sp_sls_url=saml.sls_url,
            name_id=BOB if variant == "name_id_edited" else ALICE,
            binding="post",
            sign=variant != "unsigned",
        )
        if variant == "name_id_edited":
            root = parse_xml(base64.b64decode(value))
            root.find("saml:NameID", NS).text = ALICE
            value = post_form(to_xml(root))
    before = snapshot(saml, FAILED)
    response = saml.client().post("/sso/saml/sls/", {"SAMLRequest": value}, **JSON)
    assert_refused(saml, response, code, before, action=FAILED)
    assert all(alive(saml, key) for key in three_sessions.values())
