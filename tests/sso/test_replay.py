"""SSO-S10: replay protection (sso.md §3).

python3-saml alone accepts the same Response any number of times. The
portal stores the Response and Assertion IDs under a unique constraint,
committed before the finish step, until NotOnOrAfter + drift. The race
test needs real commits (two PostgreSQL sessions), so it runs on
`committed_tenant` without the `db` fixture; that fixture drops the
tenant's schema afterwards.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django_tenants.utils import tenant_context
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from portal.db import use_public_schema
from portal.models import AuditEvent, Member
from sso.models import FinishTicket, ReplayEntry
from tenants.models import Tenant
from tests.sso.conftest import SamlHarness, connect
from tests.sso.idp import NS, parse_xml, post_form, response_ids
from tests.sso.test_login import snapshot
from tests.sso.test_security import (
    ALICE,
    DRIFT,
    JSON,
    allow_idp_initiated,
    assert_signed_in_as,
    mint,
    post,
    refused,
    replay_ids,
)

# The security suite's per-test isolation, from tests/sso/conftest.py.
pytestmark = pytest.mark.usefixtures("saml_rate_counters", "saml_no_xml_in_logs")


def test_same_sp_initiated_post_twice_is_replayed(saml: SamlHarness) -> None:
    """303, then 403 `replayed` for the same bytes from a cookie-less client."""
    client = saml.client()
    login_url = saml.start(client)
    saml_response, relay = saml.answer(login_url, ALICE)
    first = saml.post(saml_response, relay or "")
    assert first.status_code == 303
    before = snapshot(saml)
    second = saml.post(
        saml_response, relay or "", client=Client(HTTP_HOST=saml.host), **JSON
    )
    refused(saml, second, "replayed", before)
    # The genuine browser still finishes its own sign-in.
    assert saml.finish(client, first).status_code == 302


def test_same_idp_initiated_post_twice_is_replayed(idp_on: SamlHarness) -> None:
    xml = mint(idp_on)
    first = post(idp_on, xml)
    assert first.status_code == 303
    before = snapshot(idp_on)
    changes = refused(idp_on, post(idp_on, xml), "replayed", before)
    response_id, assertion_id = response_ids(xml)
    assert changes["response_id"] == response_id
    assert_signed_in_as(idp_on, first, ALICE)


@pytest.mark.parametrize("keep", ["assertion_id", "response_id"])
def test_either_id_seen_before_is_replayed(idp_on: SamlHarness, keep: str) -> None:
    """A re-issued Assertion in a new Response (or the reverse), validly
    signed: one known ID is enough."""
    xml = mint(idp_on)
    assert post(idp_on, xml).status_code == 303

    def fresh_id(root: Any) -> None:
        target = root if keep == "assertion_id" else root.find("saml:Assertion", NS)
        target.set("ID", "_" + secrets.token_hex(16))

    again = idp_on.idp.resign(xml, fresh_id)
    assert response_ids(again) != response_ids(xml)
    before = snapshot(idp_on)
    refused(idp_on, post(idp_on, again), "replayed", before)


def test_replay_entries_last_until_not_on_or_after_plus_drift(
    idp_on: SamlHarness,
) -> None:
    xml = mint(idp_on)
    assert post(idp_on, xml).status_code == 303
    response_id, assertion_id = response_ids(xml)
    data = parse_xml(xml).find(".//saml:SubjectConfirmationData", NS)
    not_on_or_after = OneLogin_Saml2_Utils.parse_SAML_to_time(data.get("NotOnOrAfter"))
    with tenant_context(idp_on.tenant):
        rows = {r.message_id: r.expires_at for r in ReplayEntry.objects.all()}
    assert set(rows) == {f"r:{response_id}", f"a:{assertion_id}"}
    for expires_at in rows.values():
        assert expires_at.timestamp() == not_on_or_after + DRIFT


def test_replay_entries_are_written_before_the_finish_step(
    idp_on: SamlHarness,
) -> None:
    """Committed by the ACS: a refused finish cannot make the Response usable."""
    xml = mint(idp_on)
    first = post(idp_on, xml)
    assert first.status_code == 303
    assert len(replay_ids(idp_on)) == 2
    with tenant_context(idp_on.tenant):
        FinishTicket.objects.all().delete()  # the browser never finishes
    before = snapshot(idp_on)
    refused(idp_on, post(idp_on, xml), "replayed", before)


def test_finish_ticket_opens_only_with_the_browsers_token(idp_on: SamlHarness) -> None:
    """The row holds SHA-256(token) and a payload sealed under another hash of
    the token: the database alone reveals neither the identity nor the key."""
    from sso.services.acs import _hash, _ticket_open

    first = post(idp_on, mint(idp_on))
    assert first.status_code == 303
    token = first["Location"].split("t=", 1)[1]
    with tenant_context(idp_on.tenant):
        (ticket,) = FinishTicket.objects.all()
    payload = bytes(ticket.payload)
    assert ticket.token_hash == _hash(token)
    assert ALICE.encode() not in payload
    assert _ticket_open(payload, token) is not None
    assert _ticket_open(payload, ticket.token_hash) is None
    assert (
        _ticket_open(payload, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    )
    assert_signed_in_as(idp_on, first, ALICE)


# --------------------------------------------------------------------------
# The race: two connections, released together


@pytest.fixture
def committed_saml(
    committed_tenant: Tenant, idp_keypair: tuple[str, str]
) -> SamlHarness:
    h = allow_idp_initiated(connect(committed_tenant, idp_keypair))
    use_public_schema()
    return h


def _race(h: SamlHarness, data: dict[str, str]) -> list[int]:
    """POST `data` to the ACS from two threads at once; the status codes."""
    barrier = threading.Barrier(2, timeout=10)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def post_once(index: int) -> None:
        # Each thread has its own Django connection: a second PostgreSQL session.
        from django.db import connection as thread_connection

        try:
            client = Client(HTTP_HOST=h.host)
            barrier.wait()
            results[index] = client.post("/sso/saml/acs/", data, **JSON)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=post_once, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a POST hung"
    assert errors == []
    codes = sorted(r.status_code for r in results.values())
    for response in results.values():
        if response.status_code != 303:
            assert response.json()["error"]["code"] in ("replayed", "request_unknown")
    return codes


def _outcome(h: SamlHarness) -> tuple[list[str], int, int]:
    with tenant_context(h.tenant):
        reasons = [
            e.changes["reason"]
            for e in AuditEvent.objects.filter(action="sso.login.failed")
        ]
        return (
            reasons,
            ReplayEntry.objects.count(),
            FinishTicket.objects.count(),
        )


@pytest.mark.schema
def test_two_simultaneous_posts_of_one_response_one_succeeds(
    committed_saml: SamlHarness,
) -> None:
    h = committed_saml
    xml = h.response_xml(ALICE)
    assert _race(h, {"SAMLResponse": post_form(xml)}) == [303, 403]
    reasons, replays, tickets = _outcome(h)
    assert reasons == ["replayed"]
    assert replays == 2
    assert tickets == 1
    with tenant_context(h.tenant):
        assert not Member.objects.filter(email=ALICE).exists()  # nobody finished
    assert connection.schema_name == "public"  # type: ignore[attr-defined]


@pytest.mark.schema
def test_two_simultaneous_sp_initiated_posts_one_succeeds(
    committed_saml: SamlHarness,
) -> None:
    """With the RelayState token too: the token and the IDs are claimed once."""
    h = committed_saml
    client = h.client()
    login_url = h.start(client)
    saml_response, relay = h.answer(login_url, ALICE)
    use_public_schema()
    codes = _race(h, {"SAMLResponse": saml_response, "RelayState": relay or ""})
    assert codes == [303, 403]
    reasons, _, tickets = _outcome(h)
    assert len(reasons) == 1
    assert reasons[0] in ("replayed", "request_unknown")
    assert tickets == 1
