"""The test IdP and the attack library, proven against python3-saml alone.

No database and no portal code: an SP is configured directly with
python3-saml (OneLogin), as the portal would, and every helper of
`tests.sso.idp`, `tests.sso.attacks` and `tests.sso.idp_server` is checked
to produce what its docstring promises. Where an attack is meant to carry
a valid signature, the test shows that python3-saml by itself accepts it:
that is the gap the portal's pre-check has to close (sso.md §3).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import http.client
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import xmlsec
from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1, SIG_RSA_SHA256

from tests.sso import attacks
from tests.sso.idp import (
    AES256_GCM,
    DS,
    ENCRYPTION,
    NS,
    SAML,
    XENC,
    IncorrectlySigned,
    TestIdP,
    cert_b64,
    inflate_b64,
    make_keypair,
    parse_xml,
    post_form,
    response_ids,
    verify_redirect_query,
)
from tests.sso.idp_server import start_idp_server

SP_ID = "https://sp.test/sso/saml/metadata/"
ACS = "https://sp.test/sso/saml/acs/"
SLS = "https://sp.test/sso/saml/sls/"
ALICE = "alice@corp.test"
ENTRA_EMAIL = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
ATTRS = {
    "email": [ALICE],
    "firstName": ["Alice"],
    "groups": ["admins", "staff"],
    ENTRA_EMAIL: [ALICE],
}
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"


def sp_settings(
    key_pem: str, cert_pem: str, idp: TestIdP | None, **security: Any
) -> dict[str, Any]:
    """python3-saml settings as the portal would build them.

    Without an IdP the result only serves to produce the SP metadata
    (`sp_validation_only`).
    """
    values: dict[str, Any] = {
        "authnRequestsSigned": True,
        "logoutRequestSigned": True,
        "logoutResponseSigned": True,
        "wantAssertionsSigned": True,
        "wantMessagesSigned": False,
        "rejectDeprecatedAlgorithm": True,
        "allowRepeatAttributeName": True,
        "requestedAuthnContext": False,
        "signatureAlgorithm": SIG_RSA_SHA256,
        "digestAlgorithm": DIGEST_SHA256,
    }
    values.update(security)
    settings: dict[str, Any] = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": SP_ID,
            "assertionConsumerService": {"url": ACS, "binding": POST},
            "singleLogoutService": {"url": SLS, "binding": REDIRECT},
            "NameIDFormat": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
            "x509cert": cert_pem,
            "privateKey": key_pem,
        },
        "security": values,
    }
    if idp is not None:
        settings["idp"] = {
            "entityId": idp.entity_id,
            "singleSignOnService": {"url": idp.sso_url, "binding": REDIRECT},
            "singleLogoutService": {"url": idp.slo_url, "binding": REDIRECT},
            "x509cert": idp.cert_pem,
        }
    return settings


@dataclass
class Sp:
    """A python3-saml SP and the TestIdP that trusts its metadata."""

    key_pem: str
    cert_pem: str
    metadata: str
    idp: TestIdP

    def settings(self, idp: TestIdP | None = None, **security: Any) -> dict[str, Any]:
        return sp_settings(self.key_pem, self.cert_pem, idp or self.idp, **security)


def request_data(path: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "https": "on",
        "http_host": "sp.test",
        "script_name": path,
        "get_data": {},
        "post_data": {},
    }
    data.update(extra)
    return data


def redirect_data(url: str, path: str = "/sso/saml/sls/", **extra: Any) -> dict:
    """Request data for a Redirect-binding URL, signature checked on the
    raw query (`validate_signature_from_qs`) unless `extra` says otherwise.
    """
    query = urlsplit(url).query
    get_data = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    options = {"query_string": query, "validate_signature_from_qs": True}
    options.update(extra)
    return request_data(path, get_data=get_data, **options)


@pytest.fixture(scope="module")
def sp(tmp_path_factory: pytest.TempPathFactory) -> Sp:
    keys = tmp_path_factory.mktemp("keys")
    sp_key, sp_cert = make_keypair(keys, "selfcheck-sp")
    idp_key, idp_cert = make_keypair(keys, "selfcheck-idp")
    key_pem, cert_pem = Path(sp_key).read_text(), Path(sp_cert).read_text()
    settings = OneLogin_Saml2_Settings(
        sp_settings(key_pem, cert_pem, None), sp_validation_only=True
    )
    metadata = settings.get_sp_metadata().decode()
    assert settings.validate_metadata(metadata) == []
    return Sp(key_pem, cert_pem, metadata, TestIdP(metadata, idp_key, idp_cert))


@pytest.fixture(scope="module")
def signed(sp: Sp) -> str:
    """One Response with both signatures, shared by the attack tests."""
    return sp.idp.response(sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS)


def validate(
    sp: Sp, xml: str, *, request_id: str | None = None, **security: Any
) -> OneLogin_Saml2_Response:
    """python3-saml's verdict on `xml` at the ACS; raises when invalid."""
    settings = OneLogin_Saml2_Settings(sp.settings(**security))
    response = OneLogin_Saml2_Response(settings, post_form(xml))
    response.is_valid(
        request_data(ACS_PATH), request_id=request_id, raise_exceptions=True
    )
    return response


ACS_PATH = "/sso/saml/acs/"


def rejected(sp: Sp, xml: str, **security: Any) -> str:
    """python3-saml's error message for `xml`, failing if it is accepted."""
    with pytest.raises(Exception) as error:  # noqa: PT011 - any rejection
        validate(sp, xml, **security)
    return str(error.value)


def own_signature(element: Any) -> Any:
    return element.find("ds:Signature", NS)


def reference_digest_holds(root: Any, signature: Any) -> bool:
    """True if an element with the Reference's ID still has its digest.

    The enveloped transform is emulated by dropping, from a copy of each
    candidate, the descendant Signature with the same SignatureValue.
    """
    reference = signature.find("ds:SignedInfo/ds:Reference", NS)
    wanted = reference.find("ds:DigestValue", NS).text
    value = signature.find("ds:SignatureValue", NS).text
    target_id = reference.get("URI")[1:]
    for candidate in root.iter():
        if candidate.get("ID") != target_id:
            continue
        clone = copy.deepcopy(candidate)
        for inner in clone.iter(DS + "Signature"):
            if inner.find("ds:SignatureValue", NS).text == value:
                inner.getparent().remove(inner)
                break
        c14n = etree.tostring(clone, method="c14n", exclusive=True, with_comments=False)
        digest = base64.b64encode(hashlib.sha256(c14n).digest()).decode()
        if digest == wanted:
            return True
    return False


# --------------------------------------------------------------------------
# Responses


def test_response_validates_with_exact_attribute_names(sp: Sp) -> None:
    xml = sp.idp.response(
        sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS, session_index="s-1"
    )
    response = validate(sp, xml)
    assert response.get_nameid() == ALICE
    assert response.get_nameid_format().endswith(":emailAddress")
    assert response.get_session_index() == "s-1"
    assert response.get_attributes() == ATTRS
    root = parse_xml(xml)
    formats = {a.get("NameFormat") for a in root.iter(SAML + "Attribute")}
    assert formats == {"urn:oasis:names:tc:SAML:2.0:attrname-format:uri"}


def test_repeated_attribute_names_and_omitted_name_format(sp: Sp) -> None:
    attrs = [("groups", ["a"]), ("groups", ["b", "c"]), ("email", [ALICE])]
    xml = sp.idp.response(
        sp_id=SP_ID, acs=ACS, email=ALICE, attrs=attrs, name_format=None
    )
    root = parse_xml(xml)
    names = [a.get("Name") for a in root.iter(SAML + "Attribute")]
    assert names == ["groups", "groups", "email"]
    assert all(a.get("NameFormat") is None for a in root.iter(SAML + "Attribute"))
    assert validate(sp, xml).get_attributes()["groups"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("sign_response", "sign_assertion"),
    [(True, True), (True, False), (False, True), (False, False)],
)
def test_signature_placement_and_algorithms(
    sp: Sp, sign_response: bool, sign_assertion: bool
) -> None:
    xml = sp.idp.response(
        sp_id=SP_ID,
        acs=ACS,
        email=ALICE,
        attrs=ATTRS,
        sign_response=sign_response,
        sign_assertion=sign_assertion,
    )
    root = parse_xml(xml)
    assertion = root.find("saml:Assertion", NS)
    assert (own_signature(root) is not None) is sign_response
    assert (own_signature(assertion) is not None) is sign_assertion
    for owner in (root, assertion):
        signature = own_signature(owner)
        if signature is None:
            continue
        previous = signature.getprevious()
        assert previous.tag == SAML + "Issuer"
        info = signature.find("ds:SignedInfo", NS)
        assert info.find("ds:SignatureMethod", NS).get("Algorithm") == SIG_RSA_SHA256
        reference = info.find("ds:Reference", NS)
        assert reference.get("URI") == "#" + owner.get("ID")
        assert reference.find("ds:DigestMethod", NS).get("Algorithm") == DIGEST_SHA256
        assert [t.get("Algorithm") for t in reference.iter(DS + "Transform")] == [
            "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
            "http://www.w3.org/2001/10/xml-exc-c14n#",
        ]
        assert reference_digest_holds(root, signature)
    if sign_assertion:
        validate(sp, xml)
    elif sign_response:
        validate(sp, xml, wantAssertionsSigned=False)
        assert "signed" in rejected(sp, xml).lower()
    else:
        assert "signature" in rejected(sp, xml, wantAssertionsSigned=False).lower()


def test_overrides_reach_the_signed_xml(sp: Sp) -> None:
    now = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    xml = sp.idp.response(
        sp_id=SP_ID,
        acs=ACS,
        email=ALICE,
        attrs=None,
        in_response_to="ONELOGIN_req",
        name_id="Alice.Persistent",
        name_id_format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
        issuer="https://other-idp.test/",
        now=now,
        lifetime=dt.timedelta(minutes=2),
        subject_not_on_or_after=now + dt.timedelta(minutes=1),
        session_not_on_or_after=now + dt.timedelta(hours=8),
        destination=None,
        recipient="https://evil.test/?" + ACS,
        audience=["https://a.test/", "https://b.test/"],
    )
    root = parse_xml(xml)
    assertion = root.find("saml:Assertion", NS)
    assert "Destination" not in root.attrib
    assert root.get("InResponseTo") == "ONELOGIN_req"
    assert root.get("IssueInstant") == "2030-01-02T03:04:05Z"
    assert [i.text for i in root.iter(SAML + "Issuer")] == [
        "https://other-idp.test/"
    ] * 2
    conditions = assertion.find("saml:Conditions", NS)
    assert conditions.get("NotBefore") == "2030-01-02T03:04:05Z"
    assert conditions.get("NotOnOrAfter") == "2030-01-02T03:06:05Z"
    audiences = [a.text for a in conditions.iter(SAML + "Audience")]
    assert audiences == ["https://a.test/", "https://b.test/"]
    data = assertion.find(".//saml:SubjectConfirmationData", NS)
    assert data.get("NotOnOrAfter") == "2030-01-02T03:05:05Z"
    assert data.get("Recipient") == "https://evil.test/?" + ACS
    assert data.get("InResponseTo") == "ONELOGIN_req"
    statement = assertion.find("saml:AuthnStatement", NS)
    assert statement.get("SessionNotOnOrAfter") == "2030-01-02T11:04:05Z"
    assert assertion.find("saml:AttributeStatement", NS) is None
    nameid = assertion.find(".//saml:NameID", NS)
    assert (nameid.text, nameid.get("Format")) == (
        "Alice.Persistent",
        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    )
    for owner in (root, assertion):
        assert reference_digest_holds(root, own_signature(owner))


def test_expired_response_is_rejected_by_python3_saml(sp: Sp) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    xml = sp.idp.response(sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS, now=past)
    assert "expired" in rejected(sp, xml).lower()


def test_audience_and_unsolicited_defaults(sp: Sp) -> None:
    xml = sp.idp.response(sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS)
    root = parse_xml(xml)
    assert "InResponseTo" not in root.attrib
    assert root.get("Destination") == ACS
    response_id, assertion_id = response_ids(xml)
    assert response_id == root.get("ID")
    assert assertion_id == root.find("saml:Assertion", NS).get("ID")
    other = sp.idp.response(
        sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS, audience="https://x.test/"
    )
    assert "audience" in rejected(sp, other).lower()


def test_error_response(sp: Sp) -> None:
    xml = sp.idp.error_response(sp_id=SP_ID, acs=ACS, in_response_to="req-1")
    root = parse_xml(xml)
    assert root.find("saml:Assertion", NS) is None
    code = root.find("samlp:Status/samlp:StatusCode", NS)
    assert code.get("Value").endswith(":Responder")
    assert code.find("samlp:StatusCode", NS).get("Value").endswith(":AuthnFailed")
    assert reference_digest_holds(root, own_signature(root))
    assert "status" in rejected(sp, xml).lower()


def test_encrypted_gcm_assertion_decrypts_and_validates(sp: Sp) -> None:
    xml = sp.idp.response(sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS, encrypt="gcm")
    root = parse_xml(xml)
    assert root.find("saml:Assertion", NS) is None
    data = root.find("saml:EncryptedAssertion/xenc:EncryptedData", NS)
    methods = [m.get("Algorithm") for m in data.iter(XENC + "EncryptionMethod")]
    assert methods == [AES256_GCM, "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"]
    assert reference_digest_holds(root, own_signature(root))
    response = validate(sp, xml, wantAssertionsEncrypted=True)
    assert response.get_nameid() == ALICE
    assert response.get_attributes() == ATTRS


@pytest.mark.parametrize(
    "algorithm", ["gcm-rsa15", "tripledes", "aes256-cbc", "aes128-cbc-rsa15"]
)
def test_weak_encryption_variants_are_real(sp: Sp, algorithm: str) -> None:
    xml = sp.idp.response(
        sp_id=SP_ID,
        acs=ACS,
        email=ALICE,
        attrs=ATTRS,
        encrypt=algorithm,  # type: ignore[arg-type]
        sp_enc_cert_pem=sp.cert_pem,
    )
    root = parse_xml(xml)
    methods = [m.get("Algorithm") for m in root.iter(XENC + "EncryptionMethod")]
    assert methods == list(ENCRYPTION[algorithm][:2])
    # python3-saml alone decrypts these: the portal must refuse them first.
    assert validate(sp, xml, wantAssertionsEncrypted=True).get_nameid() == ALICE


def test_resign_applies_edit_under_a_valid_signature(sp: Sp, signed: str) -> None:
    def edit(root: Any) -> None:
        root.find(".//saml:NameID", NS).text = "bob@corp.test"

    xml = sp.idp.resign(signed, edit)
    assert validate(sp, xml).get_nameid() == "bob@corp.test"
    assert (
        "signature" in rejected(sp, attacks.edit_nameid_after_signing(signed)).lower()
    )
    unsigned = sp.idp.resign(signed, sign_response=False, sign_assertion=False)
    assert parse_xml(unsigned).find(".//ds:Signature", NS) is None


# --------------------------------------------------------------------------
# AuthnRequest and logout


def test_answer_verifies_a_signed_authn_request(sp: Sp) -> None:
    settings = sp.settings()
    auth = OneLogin_Saml2_Auth(request_data("/sso/saml/login/"), settings)
    login_url = auth.login(return_to="/members/?x=1")
    assert "Signature=" in login_url
    saml_response, relay_state = sp.idp.answer(login_url, email=ALICE, attrs=ATTRS)
    assert relay_state == "/members/?x=1"
    xml = base64.b64decode(saml_response).decode()
    assert parse_xml(xml).get("InResponseTo") == auth.get_last_request_id()
    validate(sp, xml, request_id=auth.get_last_request_id())
    info = sp.idp.parse_authn_request_url(login_url)
    assert (info.sp_id, info.acs, info.binding) == (SP_ID, ACS, POST)


@pytest.mark.parametrize("tamper", ["signature", "missing", "relay_state", "sigalg"])
def test_answer_raises_on_a_tampered_authn_request(sp: Sp, tamper: str) -> None:
    auth = OneLogin_Saml2_Auth(request_data("/sso/saml/login/"), sp.settings())
    url = auth.login(return_to="/members/")
    if tamper == "signature":
        value = parse_qs(urlsplit(url).query)["Signature"][0]
        flipped = ("B" if value[0] == "A" else "A") + value[1:]
        url = attacks.redirect_with_param(url, "Signature", flipped)
    elif tamper == "missing":
        url = attacks.redirect_without_param(url, "Signature", "SigAlg")
    elif tamper == "relay_state":
        url = attacks.redirect_with_param(url, "RelayState", "/admin/")
    else:
        url = attacks.redirect_with_param(
            url, "SigAlg", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
        )
    with pytest.raises(IncorrectlySigned):
        sp.idp.answer(url, email=ALICE, attrs=ATTRS)


def test_logout_request_redirect_validates_from_the_raw_query(sp: Sp) -> None:
    settings = sp.settings()
    url = sp.idp.logout_request(
        sp_sls_url=SLS, name_id=ALICE, session_index="s-1", relay_state="/bye/"
    )
    auth = OneLogin_Saml2_Auth(redirect_data(url), settings)
    answer = auth.process_slo(delete_session_cb=lambda: None)
    assert auth.get_errors() == []
    assert answer.startswith(sp.idp.slo_url + "?SAMLResponse=")
    xml = inflate_b64(parse_qs(urlsplit(url).query)["SAMLRequest"][0])
    request = parse_xml(xml)
    assert request.get("ID") == sp.idp.last_logout_request_id
    assert request.find("samlp:SessionIndex", NS).text == "s-1"
    assert verify_redirect_query(url, [sp.idp.cert_pem])

    changed = attacks.redirect_with_param(url, "RelayState", "/elsewhere/")
    auth = OneLogin_Saml2_Auth(redirect_data(changed), settings)
    auth.process_slo(delete_session_cb=lambda: None)
    assert "invalid_logout_request_signature" in auth.get_errors()

    unsigned = sp.idp.logout_request(sp_sls_url=SLS, name_id=ALICE, sign=False)
    query = parse_qs(urlsplit(unsigned).query)
    assert "Signature" not in query
    assert "SigAlg" not in query


def test_lowercase_escapes_need_the_raw_query(sp: Sp) -> None:
    settings = sp.settings()
    url = sp.idp.logout_request(
        sp_sls_url=SLS, name_id=ALICE, relay_state="/a b/", lowercase_escapes=True
    )
    query = urlsplit(url).query
    assert re.search(r"%[0-9a-f][a-f]", query)
    assert not re.search(r"%[0-9A-F][A-F]", query)
    auth = OneLogin_Saml2_Auth(redirect_data(url), settings)
    auth.process_slo(delete_session_cb=lambda: None)
    assert auth.get_errors() == []
    auth = OneLogin_Saml2_Auth(
        redirect_data(url, validate_signature_from_qs=False), settings
    )
    auth.process_slo(delete_session_cb=lambda: None)
    assert "invalid_logout_request_signature" in auth.get_errors()
    direct = sp.idp.redirect_query_lowercase(
        destination=SLS, typ="SAMLRequest", xml="<x/>", relay_state="/r"
    )
    assert verify_redirect_query(direct, [sp.idp.cert_pem])


def test_logout_request_post_binding_carries_an_enveloped_signature(sp: Sp) -> None:
    value = sp.idp.logout_request(
        sp_sls_url=SLS, name_id=ALICE, session_index=["s-1", "s-2"], binding="post"
    )
    xml = base64.b64decode(value)
    root = parse_xml(xml)
    assert [s.text for s in root.findall("samlp:SessionIndex", NS)] == ["s-1", "s-2"]
    assert OneLogin_Saml2_Utils.validate_sign(
        xml,
        cert=sp.idp.cert_pem,
        xpath="/samlp:LogoutRequest/ds:Signature",
        raise_exceptions=True,
    )


def test_sp_initiated_logout_round_trip(sp: Sp) -> None:
    settings = sp.settings()
    auth = OneLogin_Saml2_Auth(request_data("/accounts/logout/"), settings)
    url = auth.logout(name_id=ALICE, session_index="s-1", return_to="/bye/")
    info = sp.idp.parse_logout_request(url)
    assert (info.issuer, info.name_id, info.session_indexes) == (SP_ID, ALICE, ["s-1"])
    assert info.relay_state == "/bye/"
    back = sp.idp.logout_response(url)
    assert back.startswith(SLS + "?SAMLResponse=")
    answer = OneLogin_Saml2_Auth(redirect_data(back), settings)
    answer.process_slo(
        request_id=auth.get_last_request_id(), delete_session_cb=lambda: None
    )
    assert answer.get_errors() == []
    lower = sp.idp.logout_response(url, lowercase_escapes=True)
    answer = OneLogin_Saml2_Auth(redirect_data(lower), settings)
    answer.process_slo(
        request_id=auth.get_last_request_id(), delete_session_cb=lambda: None
    )
    assert answer.get_errors() == []

    wrong = sp.idp.logout_response(url, edit=lambda root: root.set("InResponseTo", "x"))
    answer = OneLogin_Saml2_Auth(redirect_data(wrong), settings)
    answer.process_slo(
        request_id=auth.get_last_request_id(), delete_session_cb=lambda: None
    )
    assert answer.get_errors() == ["invalid_logout_response"]
    with pytest.raises(IncorrectlySigned):
        sp.idp.parse_logout_request(
            attacks.redirect_with_param(url, "RelayState", "/x")
        )


def test_sp_logout_response_signature_is_checked(sp: Sp) -> None:
    url = sp.idp.logout_request(sp_sls_url=SLS, name_id=ALICE, relay_state="/r")
    auth = OneLogin_Saml2_Auth(redirect_data(url), sp.settings())
    answer = auth.process_slo(delete_session_cb=lambda: None)
    info = sp.idp.parse_logout_response(answer)
    assert info.signed
    assert info.in_response_to == sp.idp.last_logout_request_id
    assert info.status == "urn:oasis:names:tc:SAML:2.0:status:Success"
    tampered = attacks.redirect_with_param(answer, "RelayState", "/other")
    with pytest.raises(ValueError, match="signature"):
        sp.idp.parse_logout_response(tampered)
    assert not sp.idp.parse_logout_response(tampered, require_signature=False).signed


def test_metadata_parses_in_python3_saml(sp: Sp, tmp_path: Path) -> None:
    _key, extra_cert = make_keypair(tmp_path, "selfcheck-extra")
    xml = sp.idp.metadata(extra_certs_pem=[Path(extra_cert).read_text()])
    parsed = OneLogin_Saml2_IdPMetadataParser.parse(xml)["idp"]
    assert parsed["entityId"] == sp.idp.entity_id
    assert parsed["singleSignOnService"]["url"] == sp.idp.sso_url
    assert parsed["singleLogoutService"]["url"] == sp.idp.slo_url
    assert parsed["x509certMulti"]["signing"] == [
        sp.idp.cert_b64,
        cert_b64(Path(extra_cert).read_text()),
    ]


# --------------------------------------------------------------------------
# Attacks


@pytest.mark.parametrize(
    "name", ["xsw1", "xsw2", "xsw3", "xsw4", "xsw5", "xsw6", "xsw7", "xsw8"]
)
def test_xsw_keeps_the_original_signature_valid(sp: Sp, signed: str, name: str) -> None:
    original = parse_xml(signed)
    wrapped_owner = original
    if name not in ("xsw1", "xsw2"):
        wrapped_owner = original.find("saml:Assertion", NS)
    original_signature = own_signature(wrapped_owner)
    xml = attacks.XSW[name](signed)
    root = parse_xml(xml)
    assert attacks.MALLORY in xml
    assert re.search(r'ID="_evil_(response|assertion)_[0-9a-f]{16}"', xml)
    value = original_signature.find("ds:SignatureValue", NS).text
    matches = [
        s
        for s in root.iter(DS + "Signature")
        if s.find("ds:SignatureValue", NS).text == value
    ]
    assert len(matches) == 1
    assert etree.tostring(matches[0].find("ds:SignedInfo", NS)) == etree.tostring(
        original_signature.find("ds:SignedInfo", NS)
    )
    assert reference_digest_holds(root, matches[0])


def test_xsw10_moves_the_assertion_signature(signed: str) -> None:
    original = parse_xml(signed)
    assertion = original.find("saml:Assertion", NS)
    value = own_signature(assertion).find("ds:SignatureValue", NS).text
    plain = parse_xml(attacks.xsw10(signed, doctype=False))
    moved = own_signature(plain)
    assert moved.find("ds:SignatureValue", NS).text == value
    assert plain.get("ID") == assertion.get("ID")
    copied = moved.find("ds:Object/saml:Assertion", NS)
    assert copied.get("ID") == "P" + assertion.get("ID")
    evil = plain.find("saml:Assertion", NS)
    assert own_signature(evil) is None
    assert evil.find(".//saml:NameID", NS).text == attacks.MALLORY
    with_dtd = attacks.xsw10(signed)
    assert with_dtd.startswith("<!DOCTYPE response [")
    assert 'ID="&idViaEntity;"' in with_dtd
    assert f'ID="&BypassIDUniqueness;{assertion.get("ID")}"' in with_dtd
    assert parse_xml(with_dtd).getroottree().docinfo.internalDTD is not None


def test_xsw_needs_the_signature_it_wraps(sp: Sp) -> None:
    assertion_only = sp.idp.response(
        sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS, sign_response=False
    )
    with pytest.raises(ValueError, match="signed Response"):
        attacks.xsw1(assertion_only)
    response_only = sp.idp.response(
        sp_id=SP_ID, acs=ACS, email=ALICE, attrs=ATTRS, sign_assertion=False
    )
    with pytest.raises(ValueError, match="signed Assertion"):
        attacks.xsw3(response_only)
    root = parse_xml(attacks.xsw5(assertion_only))
    assert reference_digest_holds(root, next(root.iter(DS + "Signature")))


def test_comment_injection_keeps_signatures_valid(sp: Sp) -> None:
    email = ALICE + ".evil.test"
    xml = sp.idp.response(sp_id=SP_ID, acs=ACS, email=email, attrs={"email": [email]})
    injected = attacks.comment_injection(xml, attributes=True)
    assert injected.count("<!---->.evil.test") == 2
    root = parse_xml(injected)
    for owner in (root, root.find("saml:Assertion", NS)):
        assert reference_digest_holds(root, own_signature(owner))
    # python3-saml 1.16 reads the whole text (its CVE-2017-11427 fix).
    assert validate(sp, injected).get_nameid() == email
    with pytest.raises(ValueError, match="evil"):
        attacks.comment_injection(sp.idp.response(sp_id=SP_ID, acs=ACS, email=ALICE))


@pytest.mark.parametrize("which", ["response", "assertion", "both"])
def test_strip_signatures(signed: str, which: str) -> None:
    root = parse_xml(attacks.strip_signatures(signed, which))  # type: ignore[arg-type]
    assert (own_signature(root) is None) is (which != "assertion")
    assertion = root.find("saml:Assertion", NS)
    assert (own_signature(assertion) is None) is (which != "response")


def test_xslt_bomb_is_a_working_doubling_stylesheet(signed: str) -> None:
    root = parse_xml(attacks.xslt_bomb(signed, levels=20))
    first = next(root.iter(DS + "Signature"))
    assert first.getparent() is root
    transform = first.find("ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform", NS)
    assert transform.get("Algorithm") == attacks.XSLT
    small = parse_xml(attacks.xslt_bomb(signed, levels=3))
    sheet = next(small.iter("{" + attacks.XSL + "}stylesheet"))
    result = str(etree.XSLT(etree.ElementTree(copy.deepcopy(sheet)))(small))
    count = len(list(small.iter()))
    assert result.strip().endswith(str(count) * 8)  # 2**3 leaves, each counts elements


@pytest.mark.parametrize(
    ("attack", "algorithm"),
    [
        (attacks.xpath_transform, attacks.XPATH),
        (attacks.xpath_filter2_transform, attacks.XPATH_FILTER2),
        (attacks.inclusive_c14n, attacks.C14N_INCLUSIVE),
        (attacks.two_references, None),
    ],
)
def test_resigned_algorithm_attacks_fool_python3_saml_alone(
    sp: Sp, signed: str, attack: Any, algorithm: str | None
) -> None:
    xml = attack(signed, sp.idp)
    root = parse_xml(xml)
    for signature in root.iter(DS + "Signature"):
        if algorithm is None:
            assert len(signature.findall("ds:SignedInfo/ds:Reference", NS)) == 2
        else:
            assert algorithm in etree.tostring(signature).decode()
    validate(sp, xml)  # hence the portal's allow-list (SSO-S5)
    unsigned_variant = attack(signed)
    assert "signature" in rejected(sp, unsigned_variant).lower()


def test_base64_transform_and_ds_object(sp: Sp, signed: str) -> None:
    root = parse_xml(attacks.base64_transform(signed))
    for signature in root.iter(DS + "Signature"):
        last = signature.findall(
            "ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform", NS
        )[-1]
        assert last.get("Algorithm") == attacks.BASE64
    with_object = attacks.add_ds_object(signed)
    root = parse_xml(with_object)
    evil = root.find("ds:Signature/ds:Object/saml:Assertion", NS)
    assert evil.find(".//saml:NameID", NS).text == attacks.MALLORY
    assert "1 assertion" in rejected(sp, with_object)
    manifest = attacks.add_ds_object(signed, content="manifest")
    manifest_root = parse_xml(manifest)
    assert manifest_root.find("ds:Signature/ds:Object/ds:Manifest", NS) is not None
    validate(sp, manifest)  # python3-saml ignores Objects: hence SSO-S5
    text = attacks.add_ds_object(signed, content="text")
    assert parse_xml(text).find("ds:Signature/ds:Object", NS).text == "hidden"
    validate(sp, text)


@pytest.mark.parametrize("key_info", ["x509", "keyvalue"])
def test_attacker_resign(sp: Sp, signed: str, key_info: str) -> None:
    xml = attacks.attacker_resign(signed, sp.idp, key_info=key_info)  # type: ignore[arg-type]
    assert "signature" in rejected(sp, xml).lower()
    attacker_cert = Path(attacks.attacker_keypair()[1]).read_text()
    root = parse_xml(xml)
    assert root.find(".//saml:NameID", NS).text == attacks.MALLORY
    if key_info == "x509":
        embedded = root.find(
            "ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS
        )
        assert embedded.text == cert_b64(attacker_cert)
    else:
        assert (
            root.find("ds:Signature/ds:KeyInfo/ds:KeyValue/ds:RSAKeyValue", NS)
            is not None
        )
    assert OneLogin_Saml2_Utils.validate_sign(
        xml, cert=attacker_cert, raise_exceptions=True
    )


def test_hmac_signature_verifies_with_the_hmac_key(sp: Sp, signed: str) -> None:
    xml = attacks.hmac_signature(signed, sp.idp)
    root = parse_xml(xml)
    xmlsec.tree.add_ids(root, ["ID"])
    signatures = list(root.iter(DS + "Signature"))
    assert len(signatures) == 2
    for signature in signatures:
        method = signature.find("ds:SignedInfo/ds:SignatureMethod", NS)
        assert method.get("Algorithm") == attacks.HMAC_SHA256
        context = xmlsec.SignatureContext()
        context.key = xmlsec.Key.from_binary_data(
            xmlsec.constants.KeyDataHmac, sp.idp.cert_pem.encode()
        )
        context.verify(signature)
    assert "signature" in rejected(sp, xml).lower()


def test_sha1_signature(sp: Sp, signed: str) -> None:
    xml = attacks.sha1_signature(signed, sp.idp)
    root = parse_xml(xml)
    for signature in root.iter(DS + "Signature"):
        text = etree.tostring(signature).decode()
        assert SIG_RSA_SHA1 in text
        assert DIGEST_SHA1 in text
    assert "deprecated" in rejected(sp, xml).lower()
    validate(sp, xml, rejectDeprecatedAlgorithm=False)  # a real signature


def test_two_assertions(sp: Sp, signed: str) -> None:
    xml = attacks.two_assertions(signed, sp.idp)
    root = parse_xml(xml)
    assertions = root.findall("saml:Assertion", NS)
    assert len(assertions) == 2
    assert assertions[1].find(".//saml:NameID", NS).text == attacks.MALLORY
    for owner in (root, *assertions):
        assert reference_digest_holds(root, own_signature(owner))
    assert "assertion" in rejected(sp, xml).lower()
    first = parse_xml(attacks.two_assertions(signed, evil_first=True))
    assert first.find("saml:Assertion", NS).get("ID").startswith("_evil_assertion_")


def test_dtd_attacks_are_well_formed_and_carry_a_doctype(signed: str) -> None:
    xxe = attacks.prepend_doctype_file_entity(signed)
    laughs = attacks.billion_laughs(signed)
    small_laughs = attacks.billion_laughs(signed, width=3, depth=3)
    external = attacks.external_dtd(signed, "http://127.0.0.1:9/evil.dtd")
    parameter = attacks.external_dtd(
        signed, "http://127.0.0.1:9/evil.dtd", parameter_entity=True
    )
    for xml in (xxe, laughs, external, parameter):
        assert xml.startswith("<!DOCTYPE ns0:Response")
    for xml in (xxe, small_laughs, external, parameter):
        tree = parse_xml(xml).getroottree()  # entities unresolved, no network
        assert tree.docinfo.doctype.startswith("<!DOCTYPE")
    # libxml2 2.14 refuses the full bomb even without expanding it.
    with pytest.raises(etree.XMLSyntaxError, match="amplification"):
        parse_xml(laughs)
    assert '<!ENTITY xxe SYSTEM "file:///etc/passwd">' in xxe
    assert "&xxe;" in xxe
    assert laughs.count("<!ENTITY lol") == 10
    assert "&lol9;" in laughs
    assert laughs.count("&lol8;") == 10
    assert parse_xml(external).getroottree().docinfo.system_url == (
        "http://127.0.0.1:9/evil.dtd"
    )
    assert "%ext;" in parameter


def test_redirect_param_helpers() -> None:
    url = "https://x.test/p?SAMLRequest=a%2Fb&RelayState=r&SigAlg=s&Signature=t"
    assert attacks.redirect_with_param(url, "RelayState", "/n x") == (
        "https://x.test/p?SAMLRequest=a%2Fb&RelayState=%2Fn%20x&SigAlg=s&Signature=t"
    )
    assert attacks.redirect_without_param(url, "Signature", "SigAlg") == (
        "https://x.test/p?SAMLRequest=a%2Fb&RelayState=r"
    )


# --------------------------------------------------------------------------
# The live IdP


@pytest.fixture
def served(sp: Sp) -> Iterator[tuple[TestIdP, str]]:
    idp = TestIdP(sp.metadata, sp.idp.key_file, sp.idp.cert_file)
    base_url, stop = start_idp_server(idp, lambda email: {"email": [email]})
    try:
        yield idp, base_url
    finally:
        stop()


def fetch(
    base_url: str, method: str, path: str, body: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    connection = http.client.HTTPConnection(host or "", port, timeout=10)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        payload = urlencode(body) if body is not None else None
        connection.request(method, path, body=payload, headers=headers)
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read().decode()
    finally:
        connection.close()


def test_idp_server_login_and_logout(sp: Sp, served: tuple[TestIdP, str]) -> None:
    idp, base_url = served
    assert idp.sso_url == base_url + "/sso"
    status, headers, body = fetch(base_url, "GET", "/metadata")
    assert status == 200
    assert f'Location="{base_url}/sso"' in body

    settings = sp.settings(idp=idp)
    auth = OneLogin_Saml2_Auth(request_data("/sso/saml/login/"), settings)
    login_url = auth.login(return_to="/members/")
    path = login_url[len(base_url) :]
    status, _headers, page = fetch(base_url, "GET", path)
    assert status == 200
    assert "Sign in</button>" in page
    token = re.search(r'name="t" value="([^"]+)"', page)
    assert token is not None
    status, _headers, form = fetch(
        base_url, "POST", "/sso/login", {"t": token.group(1), "email": ALICE}
    )
    assert status == 200
    assert f'action="{ACS}"' in form
    assert "document.forms[0].submit()" in form
    value = re.search(r'name="SAMLResponse" value="([^"]+)"', form)
    relay = re.search(r'name="RelayState" value="([^"]+)"', form)
    assert value is not None
    assert relay is not None
    assert relay.group(1) == "/members/"
    xml = base64.b64decode(value.group(1)).decode()
    settings_obj = OneLogin_Saml2_Settings(settings)
    response = OneLogin_Saml2_Response(settings_obj, value.group(1))
    assert response.is_valid(
        request_data(ACS_PATH),
        request_id=auth.get_last_request_id(),
        raise_exceptions=True,
    )
    assert parse_xml(xml).find(".//saml:NameID", NS).text == ALICE
    # A used login token and a tampered request are refused.
    status, _headers, _body = fetch(
        base_url, "POST", "/sso/login", {"t": token.group(1), "email": ALICE}
    )
    assert status == 400
    bad = attacks.redirect_with_param(login_url, "RelayState", "/x/")
    assert fetch(base_url, "GET", bad[len(base_url) :])[0] == 400

    query = urlencode({"acs": ACS, "sp": SP_ID, "email": ALICE, "relay": "/r/"})
    status, _headers, form = fetch(base_url, "GET", "/idp-initiated?" + query)
    assert status == 200
    assert 'name="RelayState" value="/r/"' in form

    logout_url = OneLogin_Saml2_Auth(
        request_data("/accounts/logout/"), settings
    ).logout(name_id=ALICE, session_index="s-1")
    status, headers, _body = fetch(base_url, "GET", logout_url[len(base_url) :])
    assert status == 303
    assert headers["Location"].startswith(SLS + "?SAMLResponse=")

    query = urlencode({"sls": SLS, "name_id": ALICE, "session_index": "s-1"})
    status, headers, _body = fetch(base_url, "GET", "/idp-logout?" + query)
    assert status == 303
    assert headers["Location"].startswith(SLS + "?SAMLRequest=")
    sp_auth = OneLogin_Saml2_Auth(redirect_data(headers["Location"]), settings)
    sp_answer = sp_auth.process_slo(delete_session_cb=lambda: None)
    status, _headers, page = fetch(base_url, "GET", sp_answer[len(base_url) :])
    assert status == 200
    assert "Signed out" in page
    kinds = [event["kind"] for event in idp.events]
    assert kinds == [
        "authn_request",
        "response",
        "authn_request_rejected",
        "response",
        "logout_request",
        "idp_logout",
        "logout_response",
    ]
    last = idp.events[-1]
    assert last["signed"]
    assert last["in_response_to"] == last["expected_in_response_to"]
