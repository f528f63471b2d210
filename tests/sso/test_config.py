"""IdP configuration, SP metadata, certificate expiry, admin messages.

SSO-F1 (metadata of Entra ID, Okta, ADFS and Google; page and command
store the same rows; manual PEMs; certificate removal; hostile metadata on
every path), SSO-F3 (SP metadata), SSO-F15 (expiry warnings), SSO-F16
(reason codes and their fixes) and SSO-S19 (the libxml2 guard).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import lxml.etree
import pytest
import xmlsec
from django.apps import apps
from django.contrib.messages import get_messages
from django.core import checks, mail
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C

from portal.models import AuditEvent, Member
from portal.roles import Role
from sso.apps import check_libxml2
from sso.errors import REASONS, SamlError
from sso.models import (
    CertificateSource,
    CertificateWarning,
    IdentityProvider,
    IdpCertificate,
    SpKey,
    SpKeyState,
)
from sso.services import maintenance
from sso.services.config import (
    fingerprint_display,
    idp_configure_from_metadata,
    idp_metadata_parse,
    idp_policies_set,
    saml_context,
    sp_metadata_xml,
)
from tenants.models import Tenant
from tests.sso.conftest import CORP, SamlHarness, connect, default_attrs, harness
from tests.sso.fixtures.support import (
    FIXTURES,
    JSON,
    assert_refused,
    assert_signed_in,
    counts,
    hostile_metadata_variants,
    loopback_listener,
    post_idp_initiated,
    render_metadata,
    sibling_idp,
)
from tests.sso.idp import IDP_ID, NS, TestIdP, cert_fingerprint, make_keypair

ClientMaker = Callable[..., Client]
MD = "{" + NS["md"] + "}"
DS_NS = NS["ds"]
ALICE = f"alice@{CORP}"


@pytest.fixture(autouse=True)
def _no_rate_limits() -> Iterator[None]:
    # The ACS counts rejections per IP and minute in the shared cache.
    cache.clear()
    yield
    cache.clear()


def fp(pem: str) -> str:
    """The portal's fingerprint format: SHA-256 of the DER, lower-case hex."""
    return cert_fingerprint(pem).replace(":", "").lower()


def idp_rows() -> dict[str, Any]:
    """The stored IdP and its certificates, without ids and timestamps."""
    idp = IdentityProvider.objects.get()
    skip = {"id", "created_at", "updated_at"}
    row = {
        f.name: getattr(idp, f.attname)
        for f in IdentityProvider._meta.concrete_fields
        if f.name not in skip
    }
    row["certificates"] = [
        (c.pem, c.fingerprint, c.subject, c.not_after, c.source)
        for c in IdpCertificate.objects.order_by("fingerprint")
    ]
    return row


def upload(client: Client, data: bytes) -> Any:
    return client.post(
        "/sso/metadata-upload/",
        {"metadata": SimpleUploadedFile("metadata.xml", data, "text/xml")},
    )


def flash(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def nothing_stored(tenant: Tenant) -> None:
    with tenant_context(tenant):
        assert not IdentityProvider.objects.exists()
        assert not IdpCertificate.objects.exists()
        assert not AuditEvent.objects.filter(action="sso.idp.configured").exists()


def idp_initiated_on(tenant: Tenant) -> None:
    with tenant_context(tenant):
        idp_policies_set(
            actor=None,
            operator=True,
            allow_idp_initiated=True,
            jit_enabled=True,
            allowed_email_domains=[CORP],
            preset="okta",
        )


# --------------------------------------------------------------------------
# SSO-F1: real IdPs' metadata


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_metadata_yields_every_signing_certificate(
    name: str, tmp_path: Path
) -> None:
    fixture = FIXTURES[name]
    data, certs = render_metadata(name, tmp_path)

    described = idp_metadata_parse(data)

    assert described.entity_id == fixture.entity_id
    assert described.sso_url == fixture.sso_url
    assert described.sso_binding == fixture.sso_binding
    assert described.slo_url == fixture.slo_url
    assert described.slo_binding == fixture.slo_binding
    assert [c.fingerprint for c in described.certificates] == [
        fp(certs[n]) for n in fixture.signing
    ]
    for untrusted in fixture.untrusted:
        assert fp(certs[untrusted]) not in {
            c.fingerprint for c in described.certificates
        }


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_page_and_command_store_identical_rows(
    name: str,
    tenant: Tenant,
    other_tenant: Tenant,
    tenant_owner: Member,
    client_for: ClientMaker,
    tmp_path: Path,
) -> None:
    data, _ = render_metadata(name, tmp_path)
    path = tmp_path / "metadata.xml"
    path.write_bytes(data)

    response = upload(client_for(tenant_owner), data)
    call_command(
        "sso_configure",
        other_tenant.slug,
        "--idp-metadata",
        str(path),
        stdout=StringIO(),
    )

    assert response.status_code == 302
    assert flash(response) == ["Saved."]
    with tenant_context(tenant):
        by_page = idp_rows()
    with tenant_context(other_tenant):
        by_command = idp_rows()
    assert by_page == by_command
    fixture = FIXTURES[name]
    assert by_page["entity_id"] == fixture.entity_id
    assert by_page["sso_binding"] == fixture.sso_binding
    assert len(by_page["certificates"]) == len(fixture.signing)
    assert {c[4] for c in by_page["certificates"]} == {CertificateSource.METADATA}


@pytest.mark.parametrize(
    ("name", "signer", "accepted"),
    [
        ("entra", "entra-1", True),
        ("entra", "entra-2", True),
        ("entra", "entra-3", True),
        ("entra", "entra-metadata-signer", False),
        ("adfs", "adfs-signing-primary", True),
        ("adfs", "adfs-signing-secondary", True),
        ("adfs", "adfs-decrypting", False),
    ],
)
def test_any_configured_certificate_verifies(
    name: str, signer: str, accepted: bool, tenant: Tenant, tmp_path: Path
) -> None:
    fixture = FIXTURES[name]
    data, _ = render_metadata(name, tmp_path)
    with tenant_context(tenant):
        idp_configure_from_metadata(data=data, actor=None)
        sp_metadata = sp_metadata_xml()
    idp_initiated_on(tenant)
    key, cert = make_keypair(tmp_path, f"fixture {signer}")
    idp = TestIdP(sp_metadata, key, cert, entity_id=fixture.entity_id)
    saml = harness(tenant, idp)
    before = counts(tenant)

    response = post_idp_initiated(saml, idp, ALICE)

    if accepted:
        assert_signed_in(saml, response, ALICE)
    else:
        event = assert_refused(tenant, response, "signature_invalid", before)
        assert fingerprint_display(fp(Path(cert).read_text())) in str(
            event.changes["received"]
        )


PEM_NOISE = (
    "Bag Attributes\r\n    localKeyID: 01 00 00 00 \r\n"
    "subject=CN = Test IdP\r\n\r\nissuer=CN = Test IdP\r\n\r\n"
)


def test_manual_pem_with_headers_and_crlf_verifies(
    tenant: Tenant,
    tenant_owner: Member,
    client_for: ClientMaker,
    idp_keypair: tuple[str, str],
) -> None:
    with tenant_context(tenant):
        sp_metadata = sp_metadata_xml()
    idp = TestIdP(sp_metadata, *idp_keypair)
    pem = Path(idp_keypair[1]).read_text()
    owner = client_for(tenant_owner)

    response = owner.post(
        "/sso/manual/",
        {
            "entity_id": IDP_ID,
            "sso_url": idp.sso_url,
            "slo_url": idp.slo_url,
            "certificate": PEM_NOISE + pem.replace("\n", "\r\n") + "\r\n",
            "certificate_2": "",
        },
    )

    assert response.status_code == 302
    assert flash(response) == ["Saved."]
    with tenant_context(tenant):
        stored = IdpCertificate.objects.get()
        idp_policies_set(
            actor=None, operator=True, jit_enabled=True, allowed_email_domains=[CORP]
        )
    assert stored.source == CertificateSource.MANUAL
    assert stored.fingerprint == fp(pem)
    assert "\r" not in stored.pem
    assert stored.pem.startswith("-----BEGIN CERTIFICATE")
    page = owner.get("/sso/").content.decode()
    assert fingerprint_display(fp(pem)) in page
    assert f"{stored.not_after:%Y-%m-%d}" in page
    saml = harness(tenant, idp)
    client = saml.client()
    assert saml.login(client, ALICE).status_code == 302


@pytest.mark.parametrize(
    ("certificate", "message"),
    [
        # A SHA-1 fingerprint: there is no fingerprint-only mode.
        (":".join(["AB"] * 20), "not a PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "read"),
        ("", "certificate"),
    ],
)
def test_manual_form_refuses_non_certificates(
    certificate: str,
    message: str,
    tenant: Tenant,
    tenant_owner: Member,
    client_for: ClientMaker,
) -> None:
    response = client_for(tenant_owner).post(
        "/sso/manual/",
        {
            "entity_id": IDP_ID,
            "sso_url": "https://idp.test/sso",
            "slo_url": "",
            "certificate": certificate,
        },
    )

    assert response.status_code == 302
    assert any(message.lower() in m.lower() for m in flash(response)), flash(response)
    nothing_stored(tenant)


def test_removing_one_of_two_certificates_distrusts_it(
    saml: SamlHarness,
    tenant_owner: Member,
    client_for: ClientMaker,
    other_idp_keypair: tuple[str, str],
) -> None:
    owner = client_for(tenant_owner)
    other_pem = Path(other_idp_keypair[1]).read_text()
    assert upload(owner, saml.idp.metadata(extra_certs_pem=[other_pem]).encode())
    second = sibling_idp(saml, other_idp_keypair)
    first_fp, second_fp = fp(saml.idp.cert_pem), fp(other_pem)
    with tenant_context(saml.tenant):
        assert set(IdpCertificate.objects.values_list("fingerprint", flat=True)) == {
            first_fp,
            second_fp,
        }

    def sign_in_with(idp: TestIdP, email: str) -> tuple[Client, Any]:
        client = saml.client()
        saml_response, relay = idp.answer(
            saml.start(client), email=email, attrs=default_attrs(email)
        )
        return client, (saml_response, relay or "")

    for idp, email in ((saml.idp, ALICE), (second, f"bob@{CORP}")):
        client, (saml_response, relay) = sign_in_with(idp, email)
        assert saml.finish(client, saml.post(saml_response, relay)).status_code == 302

    removed = owner.post("/sso/certificate-remove/", {"fingerprint": first_fp})
    assert removed.status_code == 302
    assert flash(removed)[-1] == "Saved."

    _, (saml_response, relay) = sign_in_with(saml.idp, ALICE)
    before = counts(saml.tenant)
    event = assert_refused(
        saml.tenant,
        saml.post(saml_response, relay, **JSON),
        "signature_invalid",
        before,
    )
    assert fingerprint_display(second_fp) in event.changes["expected"]
    assert fingerprint_display(first_fp) in event.changes["received"]
    client, (saml_response, relay) = sign_in_with(second, f"bob@{CORP}")
    assert saml.finish(client, saml.post(saml_response, relay)).status_code == 302

    last = owner.post("/sso/certificate-remove/", {"fingerprint": second_fp})
    assert last.status_code == 302
    assert any("last certificate" in m for m in flash(last)), flash(last)
    with tenant_context(saml.tenant):
        assert list(IdpCertificate.objects.values_list("fingerprint", flat=True)) == [
            second_fp
        ]
        assert AuditEvent.objects.filter(action="sso.certificate.removed").count() == 1


def test_idp_found_inside_an_entities_descriptor(
    tenant: Tenant, idp_keypair: tuple[str, str]
) -> None:
    """A federation-style file: the SP's own entry first, then the IdP."""
    with tenant_context(tenant):
        sp_metadata = sp_metadata_xml()
    idp = TestIdP(sp_metadata, *idp_keypair)
    sp_entry = sp_metadata.split("?>", 1)[1]
    wrapped = (
        f'<md:EntitiesDescriptor xmlns:md="{NS["md"]}">'
        f"{sp_entry}{idp.metadata()}</md:EntitiesDescriptor>"
    )

    described = idp_metadata_parse(wrapped.encode())

    assert described.entity_id == IDP_ID
    assert described.sso_url == idp.sso_url
    assert described.slo_url == idp.slo_url
    assert [c.fingerprint for c in described.certificates] == [fp(idp.cert_pem)]


def _without_keys(xml: str, keep_use: str | None = None) -> bytes:
    root = etree.fromstring(xml.encode())
    for descriptor in root.iter(MD + "KeyDescriptor"):
        if keep_use is None:
            descriptor.getparent().remove(descriptor)
        else:
            descriptor.set("use", keep_use)
    return etree.tostring(root)


@pytest.mark.parametrize(
    "case",
    ["sp_metadata", "garbage", "empty", "html", "no_certificate", "encryption_only"],
)
def test_non_idp_metadata_is_refused_and_nothing_stored(
    case: str,
    tenant: Tenant,
    tenant_owner: Member,
    client_for: ClientMaker,
    idp_keypair: tuple[str, str],
) -> None:
    with tenant_context(tenant):
        sp_metadata = sp_metadata_xml()
    idp_metadata = TestIdP(sp_metadata, *idp_keypair).metadata()
    data, message = {
        "sp_metadata": (sp_metadata.encode(), "describes no identity provider"),
        "garbage": (b"\x00\x01 not xml at all <", "not well-formed XML"),
        "empty": (b"", "empty"),
        "html": (b"<html><body><h1>Sign in</h1></body></html>", "no identity"),
        "no_certificate": (_without_keys(idp_metadata), "no signing certificate"),
        "encryption_only": (
            _without_keys(idp_metadata, keep_use="encryption"),
            "no signing certificate",
        ),
    }[case]

    response = upload(client_for(tenant_owner), data)

    assert response.status_code == 302
    assert any(message in m for m in flash(response)), flash(response)
    nothing_stored(tenant)


def test_metadata_over_one_mib_is_refused(
    tenant: Tenant,
    tenant_owner: Member,
    client_for: ClientMaker,
    idp_keypair: tuple[str, str],
) -> None:
    with tenant_context(tenant):
        idp_metadata = TestIdP(sp_metadata_xml(), *idp_keypair).metadata()
    padded = idp_metadata.replace(
        "</md:EntityDescriptor>",
        "<!--" + "x" * (1024 * 1024) + "--></md:EntityDescriptor>",
    )

    response = upload(client_for(tenant_owner), padded.encode())

    assert any("larger than 1 MiB" in m for m in flash(response)), flash(response)
    nothing_stored(tenant)


METADATA_PATHS = ["upload", "command", "url", "refresh"]


@pytest.mark.parametrize("path", METADATA_PATHS)
@pytest.mark.parametrize(
    "variant",
    ["file_entity", "billion_laughs", "external_dtd", "external_parameter_entity"],
)
def test_dtd_in_metadata_is_refused_on_every_path(
    path: str,
    variant: str,
    tenant: Tenant,
    tenant_owner: Member,
    client_for: ClientMaker,
    idp_keypair: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with tenant_context(tenant):
        idp_metadata = TestIdP(sp_metadata_xml(), *idp_keypair).metadata()
    owner = client_for(tenant_owner)
    with loopback_listener() as listener:
        hostile = hostile_metadata_variants(idp_metadata, listener.url)[variant]
        monkeypatch.setattr(maintenance, "metadata_fetch", lambda url: hostile)
        if path == "upload":
            assert any("DOCTYPE" in m for m in flash(upload(owner, hostile)))
        elif path == "url":
            response = owner.post(
                "/sso/metadata-url/", {"url": "https://idp.example.com/metadata"}
            )
            assert any("DOCTYPE" in m for m in flash(response)), flash(response)
        elif path == "command":
            file = tmp_path / "hostile.xml"
            file.write_bytes(hostile)
            with pytest.raises(CommandError, match="metadata_dtd_forbidden") as exc:
                call_command("sso_configure", tenant.slug, "--idp-metadata", str(file))
            assert exc.value.returncode == 1
        else:
            with tenant_context(tenant):
                idp_configure_from_metadata(
                    data=idp_metadata.encode(),
                    actor=None,
                    metadata_url="https://idp.example.com/metadata",
                )
                stored = idp_rows()
                result = maintenance.idp_metadata_refresh()
                assert "DOCTYPE" in result["error"]
                after = idp_rows()
                assert "DOCTYPE" in after.pop("metadata_refresh_error")
                stored.pop("metadata_refresh_error")
                assert after == stored
                failed = AuditEvent.objects.get(action="sso.metadata.refresh_failed")
                assert "DOCTYPE" in failed.changes["error"]
    assert listener.connections == 0
    if path != "refresh":
        nothing_stored(tenant)


# --------------------------------------------------------------------------
# SSO-F3: the SP metadata


def _sp(xml: str) -> Any:
    root = etree.fromstring(xml.encode())
    descriptor = root.find(MD + "SPSSODescriptor")
    assert descriptor is not None
    return root, descriptor


def _certs(descriptor: Any, use: str) -> list[str]:
    return [
        "".join(node.text.split())
        for kd in descriptor.findall(MD + "KeyDescriptor")
        if kd.get("use") == use
        for node in kd.iter(f"{{{DS_NS}}}X509Certificate")
    ]


@pytest.mark.real_sp_keys
def test_sp_metadata_is_valid_and_per_tenant(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for current in (tenant, other_tenant):
        with tenant_context(current):
            assert not IdentityProvider.objects.exists()  # before any IdP
            xml = sp_metadata_xml()
            assert saml_context().settings.validate_metadata(xml) == []
        host = current.domains.first().domain  # type: ignore[union-attr]
        origin = f"http://{host}"
        root, sp = _sp(xml)
        acs = sp.find(MD + "AssertionConsumerService")
        sls = {
            (n.get("Binding"), n.get("Location"))
            for n in sp.findall(MD + "SingleLogoutService")
        }
        assert root.get("entityID") == f"{origin}/sso/saml/metadata/"
        assert (acs.get("Binding"), acs.get("Location")) == (
            C.BINDING_HTTP_POST,
            f"{origin}/sso/saml/acs/",
        )
        assert sls == {
            (C.BINDING_HTTP_REDIRECT, f"{origin}/sso/saml/sls/"),
            (C.BINDING_HTTP_POST, f"{origin}/sso/saml/sls/"),
        }
        assert sp.get("AuthnRequestsSigned") == "true"
        assert sp.get("WantAssertionsSigned") == "true"
        assert sp.findtext(MD + "NameIDFormat")
        assert len(_certs(sp, "signing")) == 1
        assert _certs(sp, "encryption") == []  # encryption is off
        seen[current.slug] = {
            "entity": root.get("entityID"),
            "acs": acs.get("Location"),
            "sls": sls,
            "cert": _certs(sp, "signing")[0],
        }
    first, second = seen.values()
    for key in first:
        assert first[key] != second[key], key


def test_test_idp_loads_the_metadata_as_served(
    tenant: Tenant,
    other_tenant: Tenant,
    client_for: ClientMaker,
    idp_keypair: tuple[str, str],
) -> None:
    response = client_for(None).get("/sso/saml/metadata/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/samlmetadata+xml")
    served = response.content.decode()
    download = client_for(None).get("/sso/saml/metadata/?download=1")
    assert "attachment" in download["Content-Disposition"]
    other = client_for(None, on=other_tenant).get("/sso/saml/metadata/")
    assert _sp(other.content.decode())[0].get("entityID") == (
        "http://other.localhost/sso/saml/metadata/"
    )

    idp = TestIdP(served, *idp_keypair)
    with tenant_context(tenant):
        idp_configure_from_metadata(data=idp.metadata().encode(), actor=None)
        idp_policies_set(
            actor=None, operator=True, jit_enabled=True, allowed_email_domains=[CORP]
        )
    saml = harness(tenant, idp)
    client = saml.client()
    login_url = saml.start(client)

    # pysaml2 verified the AuthnRequest's signature with the served cert.
    assert idp.parse_authn_request_url(login_url).sp_id == saml.sp_entity_id
    saml_response, relay = saml.answer(login_url, ALICE)
    assert saml.finish(client, saml.post(saml_response, relay or "")).status_code == 302


ALLOWED_ENCRYPTION = {
    "http://www.w3.org/2009/xmlenc11#aes128-gcm",
    "http://www.w3.org/2009/xmlenc11#aes192-gcm",
    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    "http://www.w3.org/2009/xmlenc11#rsa-oaep",
    "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
}


def test_encryption_key_offers_only_gcm_and_oaep(saml: SamlHarness) -> None:
    with tenant_context(saml.tenant):
        idp_policies_set(actor=None, want_assertions_encrypted=True)
        xml = sp_metadata_xml()
        assert saml_context().settings.validate_metadata(xml) == []
    _, sp = _sp(xml)
    encryption = [
        kd for kd in sp.findall(MD + "KeyDescriptor") if kd.get("use") == "encryption"
    ]

    assert len(encryption) == 1
    methods = [
        m.get("Algorithm") for m in encryption[0].findall(MD + "EncryptionMethod")
    ]
    assert methods
    assert set(methods) <= ALLOWED_ENCRYPTION
    assert any("gcm" in m for m in methods)
    assert any("oaep" in m for m in methods)
    assert _certs(sp, "encryption") == _certs(sp, "signing")


# --------------------------------------------------------------------------
# SSO-F15: certificate expiry


class Clock:
    """A frozen `timezone.now()` for every module that calls it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = timezone.now()
        monkeypatch.setattr(timezone, "now", lambda: self.now)


def _warnings() -> list[tuple[str, str]]:
    return [
        (e.changes["kind"], e.changes["threshold"])
        for e in AuditEvent.objects.filter(action="sso.certificate.expiring").order_by(
            "pk"
        )
    ]


def test_expiry_warnings_at_30_and_7_days_and_on_the_day_each_once(
    tenant: Tenant,
    tenant_owner: Member,
    make_member: Callable[..., Member],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = make_member(Role.ADMIN)
    make_member(Role.MEMBER)
    expires = (timezone.now() + dt.timedelta(days=90)).replace(
        hour=15, minute=0, second=0, microsecond=0
    )
    keypair = make_keypair(tmp_path, "Expiring IdP", not_after=expires)
    connect(tenant, keypair)
    clock = Clock(monkeypatch)
    steps = [
        (expires - dt.timedelta(days=31), None),
        (expires - dt.timedelta(days=30, hours=-1), "30d"),
        (expires - dt.timedelta(days=29), None),
        (expires - dt.timedelta(days=7, hours=-1), "7d"),
        (expires - dt.timedelta(days=6), None),
        (expires - dt.timedelta(hours=2), "0d"),  # on the day, before expiry
        (expires - dt.timedelta(hours=1), None),
        (expires + dt.timedelta(days=1), None),
    ]
    expected: list[tuple[str, str]] = []

    with tenant_context(tenant):
        for when, threshold in steps:
            clock.now = when
            outbox = len(mail.outbox)
            sent = maintenance.certificate_expiry_warn()
            if threshold:
                expected.append(("IdP", threshold))
            assert sent == (1 if threshold else 0), when
            assert len(mail.outbox) == outbox + sent
            assert _warnings() == expected
        assert CertificateWarning.objects.count() == 3

    assert all(set(m.to) == {tenant_owner.email, admin.email} for m in mail.outbox)
    assert all(f"{expires:%Y-%m-%d}" in m.subject for m in mail.outbox)


def test_sp_certificate_expiry_warns_too(
    saml: SamlHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tenant_context(saml.tenant):
        active = SpKey.objects.get(state=SpKeyState.ACTIVE)
        clock = Clock(monkeypatch)
        clock.now = active.not_after - dt.timedelta(days=6)
        assert maintenance.certificate_expiry_warn() == 1
        assert maintenance.certificate_expiry_warn() == 0
        assert _warnings() == [("SP", "7d")]
    assert "SP certificate" in mail.outbox[-1].subject


def test_expired_idp_certificate_still_verifies(tenant: Tenant, tmp_path: Path) -> None:
    now = timezone.now()
    keypair = make_keypair(
        tmp_path,
        "Expired IdP",
        not_before=now - dt.timedelta(days=400),
        not_after=now - dt.timedelta(days=1),
    )
    saml = connect(tenant, keypair)
    with tenant_context(tenant):
        assert IdpCertificate.objects.get().not_after < now

    client = saml.client()
    assert saml.login(client, ALICE).status_code == 302
    with tenant_context(tenant):
        assert maintenance.certificate_expiry_warn() == 1
        assert _warnings() == [("IdP", "0d")]


# --------------------------------------------------------------------------
# SSO-F16: reason codes, expected and received values, the fix

SPEC_CODES = {
    404: {"sso_not_configured"},
    413: {"too_large"},
    429: {"rate_limited"},
    400: {"malformed", "dtd_forbidden", "forbidden_algorithm", "bad_structure"},
    403: {
        "signature_missing",
        "signature_invalid",
        "issuer_mismatch",
        "audience_mismatch",
        "destination_mismatch",
        "expired",
        "not_yet_valid",
        "request_unknown",
        "unsolicited_response",
        "idp_initiated_disabled",
        "replayed",
        "state_mismatch",
        "encryption_required",
        "decryption_failed",
        "idp_status",
        "identity_unresolved",
        "attribute_missing",
        "email_domain_not_allowed",
        "user_unknown",
        "identity_conflict",
        "member_deactivated",
        "groups_overage",
        "no_matching_group",
    },
}


def test_every_reason_code_has_status_summary_and_fix() -> None:
    assert set(REASONS) == set().union(*SPEC_CODES.values())
    for status, codes in SPEC_CODES.items():
        for code in codes:
            reason = REASONS[code]
            assert reason.status == status, code
            assert reason.summary.strip().endswith("."), code
            assert len(reason.fix.strip()) > 20, code


@pytest.mark.parametrize("code", sorted(REASONS))
def test_every_admin_message_has_expected_received_and_fix(code: str) -> None:
    error = SamlError(code, expected="EXPECTED-VALUE-1", received="RECEIVED-VALUE-2")

    message = error.admin_message()

    assert "EXPECTED-VALUE-1" in message
    assert "RECEIVED-VALUE-2" in message
    assert f"Fix: {REASONS[code].fix}" in message
    assert error.status == REASONS[code].status
    changes = error.as_changes()
    assert changes["reason"] == code
    assert changes["expected"] == "EXPECTED-VALUE-1"
    assert changes["received"] == "RECEIVED-VALUE-2"
    assert changes["message"] == message


def test_audience_mismatch_event_names_both_values(saml: SamlHarness) -> None:
    client = saml.client()
    wrong = "https://evil.test/sp/metadata"
    saml_response, relay = saml.answer(saml.start(client), ALICE, audience=wrong)
    before = counts(saml.tenant)

    event = assert_refused(
        saml.tenant,
        saml.post(saml_response, relay or "", **JSON),
        "audience_mismatch",
        before,
    )

    message = event.changes["message"]
    assert wrong in message
    assert saml.sp_entity_id in message
    assert "Fix: " in message
    assert "Entity ID" in message
    assert event.changes["expected"] == saml.sp_entity_id


# --------------------------------------------------------------------------
# SSO-S19: lxml and xmlsec on one libxml2


def test_lxml_and_xmlsec_share_the_tested_libxml2() -> None:
    """The CI guard: the shipped pair, on the same libxml2 (2.14.6)."""
    assert tuple(lxml.etree.LIBXML_VERSION) == tuple(xmlsec.get_libxml_version())
    assert tuple(lxml.etree.LIBXML_VERSION) == (2, 14, 6)
    assert importlib.metadata.version("lxml") == "6.1.3"
    assert importlib.metadata.version("xmlsec") == "1.3.17"
    assert check_libxml2() == []
    assert "sso.E001" not in {m.id for m in checks.run_checks()}


@pytest.mark.parametrize("patched", ["lxml", "xmlsec"])
def test_libxml2_mismatch_fails_the_system_check(
    patched: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if patched == "lxml":
        monkeypatch.setattr(lxml.etree, "LIBXML_VERSION", (2, 9, 14))
    else:
        monkeypatch.setattr(xmlsec, "get_libxml_version", lambda: (2, 13, 8))

    problems = check_libxml2()

    assert [p.id for p in problems] == ["sso.E001"]
    assert problems[0].level == checks.CRITICAL
    assert "sso.E001" in {m.id for m in checks.run_checks()}
    with pytest.raises(SystemCheckError, match="sso.E001"):
        call_command("check", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(ImproperlyConfigured, match="libxml2"):
        apps.get_app_config("sso").ready()
