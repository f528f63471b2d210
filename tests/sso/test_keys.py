"""SSO-F4 (SP keys and their rollover) and SSO-F6 (encrypted assertions)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from lxml import etree

from portal.models import AuditEvent, Member
from sso.models import SpKey, SpKeyState
from sso.services import keys
from sso.services.config import (
    idp_policies_set,
    saml_context,
    saml_context_forget,
    sp_metadata_xml,
)
from sso.services.maintenance import sso_housekeeping
from tests.sso.conftest import CORP, SamlHarness
from tests.sso.fixtures.support import (
    JSON,
    assert_refused,
    assert_signed_in,
    counts,
    post_idp_initiated,
)
from tests.sso.idp import NS, TestIdP, cert_pem_from_b64

ClientMaker = Callable[..., Client]
MD = "{" + NS["md"] + "}"
ALICE = f"alice@{CORP}"


@pytest.fixture(autouse=True)
def _no_rate_limits() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def flash(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def metadata_certs(xml: str, use: str) -> list[str]:
    """PEM certificates of the SP metadata's KeyDescriptors of one use."""
    root = etree.fromstring(xml.encode())
    return [
        cert_pem_from_b64(node.text or "")
        for kd in root.iter(MD + "KeyDescriptor")
        if kd.get("use") == use
        for node in kd.iter("{" + NS["ds"] + "}X509Certificate")
    ]


def key_rows(saml: SamlHarness) -> dict[str, SpKey]:
    with tenant_context(saml.tenant):
        return {row.state: row for row in SpKey.objects.exclude(state="retired")}


def served_metadata(saml: SamlHarness) -> str:
    return str(saml.client().get("/sso/saml/metadata/").content.decode())


def same_cert(a: str, b: str) -> bool:
    return "".join(a.split()) == "".join(b.split())


# --------------------------------------------------------------------------
# The key itself


@pytest.mark.real_sp_keys
def test_first_visit_makes_an_rsa3072_five_year_self_signed_key(
    tenant: Any, tenant_owner: Member, client_for: ClientMaker
) -> None:
    with tenant_context(tenant):
        assert not SpKey.objects.exists()
    owner = client_for(tenant_owner)

    assert owner.get("/sso/").status_code == 200
    assert owner.get("/sso/").status_code == 200

    with tenant_context(tenant):
        row = SpKey.objects.get()
        private_pem = keys._decrypt(row)  # noqa: SLF001 - the keyring round trip
        assert AuditEvent.objects.filter(action="sso.sp_key.created").count() == 1
    cert = x509.load_pem_x509_certificate(row.certificate.encode())
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 3072
    assert public.public_numbers().e == 65537
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime - dt.timedelta(days=5 * 365)) < dt.timedelta(hours=1)
    assert row.state == SpKeyState.ACTIVE
    assert row.not_after == cert.not_valid_after_utc
    assert (
        row.fingerprint
        == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    stored = bytes(row.private_key)
    assert b"BEGIN" not in stored
    assert b"PRIVATE" not in stored
    assert private_pem.startswith("-----BEGIN PRIVATE KEY-----")
    private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]


def test_private_key_is_never_shown(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    owner = client_for(tenant_owner)
    assert owner.post("/sso/sp-key-prepare/").status_code == 302
    with tenant_context(saml.tenant):
        secrets = [keys._decrypt(row) for row in SpKey.objects.all()]  # noqa: SLF001
        events = list(AuditEvent.objects.values_list("changes", flat=True))
    bodies = [
        "".join(line for line in pem.splitlines() if "-----" not in line)
        for pem in secrets
    ]
    # 40-character runs from the private part of each key (the modulus near
    # the start of the PKCS#8 body is public: it is in the certificate).
    fragments = [body[i : i + 40] for body in bodies for i in (800, 1200, 1600)]

    pages = {
        path: owner.get(path).content.decode()
        for path in ("/sso/", "/sso/saml/metadata/", "/audit/", "/")
    }
    pages["anonymous metadata"] = served_metadata(saml)
    pages["audit changes"] = repr(events)

    for name, text in pages.items():
        assert "PRIVATE KEY" not in text, name
        assert not any(fragment in text for fragment in fragments), name


# --------------------------------------------------------------------------
# Rollover: prepare next, activate, the 30 days


def test_prepare_next_publishes_both_signing_certificates(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    owner = client_for(tenant_owner)

    response = owner.post("/sso/sp-key-prepare/")

    assert flash(response) == ["Saved."]
    rows = key_rows(saml)
    xml = served_metadata(saml)
    signing = metadata_certs(xml, "signing")
    assert len(signing) == 2
    assert {s.strip() for s in signing} == {
        rows[SpKeyState.ACTIVE].certificate.strip(),
        rows[SpKeyState.NEXT].certificate.strip(),
    }
    with tenant_context(saml.tenant):
        assert saml_context().settings.validate_metadata(xml) == []
    again = owner.post("/sso/sp-key-prepare/")
    assert any("already prepared" in m for m in flash(again))
    # Requests are still signed with the active key.
    client = saml.client()
    assert saml.login(client, ALICE).status_code == 302


def test_activate_swaps_and_the_idp_verifies_the_new_key(
    saml: SamlHarness,
    tenant_owner: Member,
    client_for: ClientMaker,
    idp_keypair: tuple[str, str],
) -> None:
    owner = client_for(tenant_owner)
    assert any(
        "Prepare a next key" in m for m in flash(owner.post("/sso/sp-key-activate/"))
    )
    before_rollover = served_metadata(saml)
    old = key_rows(saml)[SpKeyState.ACTIVE]
    owner.post("/sso/sp-key-prepare/")
    saml.idp.add_sp_metadata(served_metadata(saml))  # the IdP reads both certs
    stale = TestIdP(before_rollover, *idp_keypair)  # never updated

    response = owner.post("/sso/sp-key-activate/")

    assert flash(response)[-1] == "Saved."
    rows = key_rows(saml)
    with tenant_context(saml.tenant):
        retired = SpKey.objects.get(pk=old.pk)
    assert retired.state == SpKeyState.RETIRED
    assert retired.retired_at is not None
    assert rows[SpKeyState.ACTIVE].pk != old.pk
    assert SpKeyState.NEXT not in rows
    after = served_metadata(saml)
    assert [c.strip() for c in metadata_certs(after, "signing")] == [
        rows[SpKeyState.ACTIVE].certificate.strip()
    ]

    client = saml.client()
    login_url = saml.start(client)
    with pytest.raises(Exception):  # noqa: B017, PT011 - pysaml2 raises several types
        stale.parse_authn_request_url(login_url)
    # The IdP that loaded the metadata during the rollover verifies at once.
    saml_response, relay = saml.answer(login_url, ALICE)
    assert saml.finish(client, saml.post(saml_response, relay or "")).status_code == 302
    # And so does one given the new metadata afterwards.
    stale.add_sp_metadata(after)
    assert stale.parse_authn_request_url(saml.start(saml.client())).sp_id == (
        saml.sp_entity_id
    )


def _encryption_on(saml: SamlHarness) -> None:
    with tenant_context(saml.tenant):
        idp_policies_set(
            actor=None, want_assertions_encrypted=True, allow_idp_initiated=True
        )
        saml.idp.add_sp_metadata(sp_metadata_xml())


def test_retired_key_decrypts_for_30_days_only(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    _encryption_on(saml)
    owner = client_for(tenant_owner)
    old_cert = key_rows(saml)[SpKeyState.ACTIVE].certificate
    owner.post("/sso/sp-key-prepare/")
    owner.post("/sso/sp-key-activate/")
    new_cert = key_rows(saml)[SpKeyState.ACTIVE].certificate
    assert not same_cert(old_cert, new_cert)

    def post(cert: str, email: str) -> Any:
        return post_idp_initiated(
            saml, saml.idp, email, encrypt="gcm", sp_enc_cert_pem=cert
        )

    assert_signed_in(saml, post(old_cert, f"old1@{CORP}"), f"old1@{CORP}")
    assert_signed_in(saml, post(new_cert, f"new1@{CORP}"), f"new1@{CORP}")

    with tenant_context(saml.tenant):
        SpKey.objects.filter(state=SpKeyState.RETIRED).update(
            retired_at=timezone.now() - dt.timedelta(days=29, hours=23)
        )
    saml_context_forget()
    assert_signed_in(saml, post(old_cert, f"old2@{CORP}"), f"old2@{CORP}")

    with tenant_context(saml.tenant):
        SpKey.objects.filter(state=SpKeyState.RETIRED).update(
            retired_at=timezone.now() - dt.timedelta(days=30, minutes=1)
        )
    saml_context_forget()
    before = counts(saml.tenant)
    assert_refused(
        saml.tenant, post(old_cert, f"old3@{CORP}"), "decryption_failed", before
    )
    assert_signed_in(saml, post(new_cert, f"new2@{CORP}"), f"new2@{CORP}")

    # Housekeeping then erases the old private key; the row stays as history.
    with tenant_context(saml.tenant):
        assert sso_housekeeping()["retired_keys"] == 1
        assert sso_housekeeping()["retired_keys"] == 0
        retired = SpKey.objects.get(state=SpKeyState.RETIRED)
        assert bytes(retired.private_key) == b""
        assert bytes(SpKey.objects.get(state=SpKeyState.ACTIVE).private_key)
    saml_context_forget()
    assert_signed_in(saml, post(new_cert, f"new3@{CORP}"), f"new3@{CORP}")


def test_next_key_decrypts_while_it_is_published(
    saml: SamlHarness, tenant_owner: Member, client_for: ClientMaker
) -> None:
    """The metadata offers the next cert for encryption too, so it must work."""
    _encryption_on(saml)
    client_for(tenant_owner).post("/sso/sp-key-prepare/")
    rows = key_rows(saml)
    xml = served_metadata(saml)
    encryption = metadata_certs(xml, "encryption")
    assert {c.strip() for c in encryption} == {
        rows[SpKeyState.ACTIVE].certificate.strip(),
        rows[SpKeyState.NEXT].certificate.strip(),
    }
    saml.idp.add_sp_metadata(xml)

    for number, cert in enumerate(encryption):
        email = f"enc{number}@{CORP}"
        response = post_idp_initiated(
            saml, saml.idp, email, encrypt="gcm", sp_enc_cert_pem=cert
        )
        assert_signed_in(saml, response, email)
    # pysaml2's own choice from the metadata (its first encryption key).
    assert_signed_in(
        saml, post_idp_initiated(saml, saml.idp, ALICE, encrypt="gcm"), ALICE
    )


# --------------------------------------------------------------------------
# SSO-F6: encryption required


def test_encryption_on_accepts_gcm_oaep_and_refuses_plaintext(
    saml: SamlHarness,
) -> None:
    _encryption_on(saml)

    assert_signed_in(
        saml, post_idp_initiated(saml, saml.idp, ALICE, encrypt="gcm"), ALICE
    )
    client = saml.client()
    login_url = saml.start(client)
    saml_response, relay = saml.answer(login_url, f"bob@{CORP}", encrypt="gcm")
    assert saml.finish(client, saml.post(saml_response, relay or "")).status_code == 302

    before = counts(saml.tenant)
    assert_refused(
        saml.tenant,
        post_idp_initiated(saml, saml.idp, f"carol@{CORP}"),
        "encryption_required",
        before,
    )
    client = saml.client()
    saml_response, relay = saml.answer(saml.start(client), f"dave@{CORP}")
    before = counts(saml.tenant)
    assert_refused(
        saml.tenant,
        saml.post(saml_response, relay or "", **JSON),
        "encryption_required",
        before,
    )


def test_encryption_off_plaintext_is_accepted(saml: SamlHarness) -> None:
    with tenant_context(saml.tenant):
        idp_policies_set(actor=None, allow_idp_initiated=True)
        assert not metadata_certs(sp_metadata_xml(), "encryption")

    assert_signed_in(saml, post_idp_initiated(saml, saml.idp, ALICE), ALICE)
