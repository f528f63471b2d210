"""Hostile XML through the real ACS: SSO-S2 and SSO-S4 to SSO-S9 (sso.md §3).

Each input is a valid pysaml2-signed Response (`mint`) changed by a helper
of `tests/sso/attacks.py`. Most attacks are IdP-initiated Responses posted
to a tenant that allows IdP-initiated sign-in, so that nothing but the
attack stands between them and a sign-in. Every refusal is checked with
`refused` (status, reason code, one audit event, nothing changed); where the
pre-check must decide, a spy proves python3-saml never saw the message.
"""

from __future__ import annotations

import ast
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django_tenants.utils import tenant_context
from lxml import etree
from saml2.xmldsig import DIGEST_SHA1, SIG_RSA_SHA1, SIG_RSA_SHA256

from sso.models import SsoLink
from tests.sso import attacks
from tests.sso.conftest import SamlHarness
from tests.sso.idp import NS, SAML, SAMLP, parse_xml, to_xml
from tests.sso.test_login import snapshot
from tests.sso.test_security import (
    ALICE,
    JSON,
    MALLORY,
    assert_signed_in_as,
    member_exists,
    mint,
    post,
    refused,
    set_policies,
)

EVIL_COMMENT_EMAIL = "alice@corp.test.evil.test"
REPO = Path(__file__).resolve().parents[2]

# The security suite's per-test isolation, from tests/sso/conftest.py.
pytestmark = pytest.mark.usefixtures("saml_rate_counters", "saml_no_xml_in_logs")


def _attack(
    h: SamlHarness, xml: str, code: str, calls: list[Any] | None = None
) -> dict[str, Any]:
    """POST a hostile Response; it is refused with `code`, nothing changes."""
    before = snapshot(h)
    changes = refused(h, post(h, xml), code, before)
    assert not member_exists(h, MALLORY)
    if calls is not None:
        assert calls == [], "python3-saml saw a message the pre-check must refuse"
    return changes


# --------------------------------------------------------------------------
# SSO-S2: verified values only


def _extensions_with_nameid(xml: str, where: str) -> str:
    """An unsigned wrapper carrying MALLORY's NameID next to the signed data."""
    root = parse_xml(xml)
    subject = etree.Element(SAML + "Subject")
    etree.SubElement(subject, SAML + "NameID").text = MALLORY
    if where == "extensions":
        wrapper = etree.Element(SAMLP + "Extensions")
        wrapper.append(subject)
        root.find("saml:Issuer", NS).addnext(wrapper)
    else:  # an unsigned Advice-like wrapper after the Status, before the Assertion
        root.find("saml:Assertion", NS).addprevious(subject)
    return to_xml(root)


def test_extra_nameid_in_an_unsigned_extensions_wrapper_is_never_used(
    idp_on: SamlHarness,
) -> None:
    """The Response is signed at the Assertion only, so the wrapper is valid
    XML next to a valid signature; the identity comes from the signed
    Assertion alone."""
    xml = _extensions_with_nameid(mint(idp_on, sign_response=False), "extensions")
    member = assert_signed_in_as(idp_on, post(idp_on, xml), ALICE)
    with tenant_context(idp_on.tenant):
        link = SsoLink.objects.get(member=member)
    assert link.name_id == ALICE
    assert not member_exists(idp_on, MALLORY)


def test_extra_subject_outside_the_assertion_is_refused(idp_on: SamlHarness) -> None:
    """A bare Subject in the Response is no SAML (python3-saml's schema check)."""
    xml = _extensions_with_nameid(mint(idp_on, sign_response=False), "response")
    _attack(idp_on, xml, "bad_structure")


# The lint: only the pre-check parses SAML XML itself.
XML_PARSE_CALLS = {
    "fromstring",
    "fromstringlist",
    "XML",
    "parse",
    "iterparse",
    "XMLParser",
    "XMLPullParser",
    "parseString",
    "to_etree",
    "_parse_etree",
}
XML_MODULES = {"etree", "lxml", "ET", "ElementTree", "minidom", "sax", "objectify"}
FORBIDDEN_IMPORTS = ("xml.", "defusedxml", "xmltodict", "lxml.objectify", "lxml.html")
# (file, enclosing function) -> why it may parse XML.
PARSE_WHITELIST = {
    ("sso/services/xmlcheck.py", "_parser"): "the hardened parser itself",
    ("sso/services/xmlcheck.py", "xml_parse_hardened"): "the one SAML parser",
    ("sso/services/config.py", "sp_metadata_xml"): (
        "parses the SP metadata python3-saml just generated from our own "
        "settings (never received data) to add the POST SLS and EncryptionMethods"
    ),
}
# python3-saml entry points that parse a received message; each may run only
# after the pre-check, in the function named.
LIBRARY_PARSERS = {
    "OneLogin_Saml2_Response": {("sso/services/acs.py", "_response_for")},
    "process_response": set(),
    "OneLogin_Saml2_Logout_Request": {("sso/services/slo.py", "*")},
    "OneLogin_Saml2_Logout_Response": {("sso/services/slo.py", "*")},
}


def _python_sources() -> Iterator[tuple[str, ast.Module]]:
    for top in ("sso", "portal", "tenants"):
        for path in sorted((REPO / top).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            relative = path.relative_to(REPO).as_posix()
            yield relative, ast.parse(path.read_text(), filename=relative)


def _calls_with_function(tree: ast.Module) -> Iterator[tuple[str, ast.Call]]:
    """(enclosing top-level or method function name, call) for every call."""

    def walk(node: ast.AST, function: str) -> Iterator[tuple[str, ast.Call]]:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            if isinstance(child, ast.Call):
                yield name, child
            yield from walk(child, name)

    yield from walk(tree, "<module>")


def _root_name(node: ast.AST) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def test_lint_only_the_precheck_parses_saml_xml() -> None:
    """SSO-S2: no etree.fromstring / XML() / parse() outside the pre-check.

    Every XML parse call in sso/, portal/ and tenants/ must sit in a
    whitelisted function: `xmlcheck.xml_parse_hardened` (and its parser
    factory), which every received message goes through, and
    `config.sp_metadata_xml`, which only re-reads the metadata python3-saml
    generated from our settings. The test-connection report's pretty printer
    (`acs._pretty`) reuses `xml_parse_hardened`. python3-saml's parsing
    constructors may run only where the pre-check already ran
    (`acs._response_for`, and the SLO module), and `process_response` (which
    would skip the pre-check) is never called.
    """
    found: list[str] = []
    library: list[str] = []
    for relative, tree in _python_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                for name in names:
                    if name.startswith(FORBIDDEN_IMPORTS) or name in ("xml", "minidom"):
                        found.append(f"{relative}: imports {name}")
        for function, call in _calls_with_function(tree):
            target = call.func
            attr = (
                target.attr
                if isinstance(target, ast.Attribute)
                else getattr(target, "id", "")
            )
            if attr in LIBRARY_PARSERS:
                allowed = LIBRARY_PARSERS[attr]
                if (relative, function) not in allowed and (
                    relative,
                    "*",
                ) not in allowed:
                    library.append(f"{relative}:{call.lineno} {function}() -> {attr}")
                continue
            if attr not in XML_PARSE_CALLS:
                continue
            if isinstance(target, ast.Attribute) and _root_name(target) not in (
                XML_MODULES | {"OneLogin_Saml2_XML"}
            ):
                continue  # e.g. urllib's parse, json.loads
            if (relative, function) not in PARSE_WHITELIST:
                found.append(f"{relative}:{call.lineno} {function}() calls {attr}")
    assert found == [], "XML parsed outside the pre-check:\n" + "\n".join(found)
    assert library == [], "python3-saml parses here:\n" + "\n".join(library)


def test_lint_sees_a_parse_call() -> None:
    """The lint's matcher catches the forms it must (guards against a no-op)."""
    tree = ast.parse(
        "def f(b):\n    etree.fromstring(b)\n    lxml.etree.XML(b)\n"
        "    OneLogin_Saml2_XML.to_etree(b)\n    urllib.parse.urlsplit(b)\n"
    )
    hits = [
        (function, call.func.attr)
        for function, call in _calls_with_function(tree)
        if isinstance(call.func, ast.Attribute)
        and call.func.attr in XML_PARSE_CALLS
        and _root_name(call.func) in (XML_MODULES | {"OneLogin_Saml2_XML"})
    ]
    assert hits == [("f", "fromstring"), ("f", "XML"), ("f", "to_etree")]


# --------------------------------------------------------------------------
# SSO-S4: no DTDs


class Listener:
    """A loopback TCP listener that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/evil.dtd"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def settle(self) -> int:
        time.sleep(0.15)  # let a late connection land before reading
        return self.connections

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    # Self-check: a connection is seen, so "no connection" means something.
    with socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass
    assert server.settle() == 1
    server.connections = 0
    yield server
    server.close()


def _pad_before_doctype(xml_with_doctype: str) -> str:
    """Put 8 KiB of comment before the DOCTYPE (past any prefix sniffing)."""
    return "<!--" + "x" * 8192 + "-->\n" + xml_with_doctype


DTD_INPUTS: dict[str, Callable[[str, str], str]] = {
    "file_entity": lambda xml, url: attacks.prepend_doctype_file_entity(xml),
    "billion_laughs_10x10": lambda xml, url: attacks.billion_laughs(xml, 10, 10),
    "external_dtd": lambda xml, url: attacks.external_dtd(xml, url),
    "external_parameter_entity": lambda xml, url: attacks.external_dtd(
        xml, url, parameter_entity=True
    ),
    "external_dtd_after_8k_comment": lambda xml, url: _pad_before_doctype(
        attacks.external_dtd(xml, url)
    ),
    "file_entity_after_8k_comment": lambda xml, url: _pad_before_doctype(
        attacks.prepend_doctype_file_entity(xml)
    ),
    "xsw10_entity_aliases": lambda xml, url: attacks.xsw10(xml),
}


@pytest.mark.parametrize("kind", sorted(DTD_INPUTS))
def test_dtd_is_forbidden(
    idp_on: SamlHarness,
    listener: Listener,
    python3_saml_calls: list[Any],
    kind: str,
) -> None:
    xml = DTD_INPUTS[kind](mint(idp_on), listener.url)
    assert "<!DOCTYPE" in xml
    started = time.perf_counter()
    _attack(idp_on, xml, "dtd_forbidden", python3_saml_calls)
    assert time.perf_counter() - started < 0.5
    assert listener.settle() == 0, "the parser fetched an external DTD"


def test_utf16_document_with_a_doctype_is_forbidden(
    idp_on: SamlHarness, listener: Listener, python3_saml_calls: list[Any]
) -> None:
    """Byte sniffing for '<!DOCTYPE' cannot see UTF-16; the parser check does."""
    xml = attacks.external_dtd(mint(idp_on), listener.url)
    data = ('<?xml version="1.0" encoding="UTF-16"?>\n' + xml).encode("utf-16")
    assert b"<!DOCTYPE" not in data
    before = snapshot(idp_on)
    import base64

    response = idp_on.post(base64.b64encode(data).decode(), **JSON)
    refused(idp_on, response, "dtd_forbidden", before)
    assert python3_saml_calls == []
    assert listener.settle() == 0


# --------------------------------------------------------------------------
# SSO-S5: algorithm and structure allow-list before python3-saml


def test_xslt_bomb_is_refused_fast_without_python3_saml(
    idp_on: SamlHarness, python3_saml_calls: list[Any]
) -> None:
    """20 doubling levels: seconds in python3-saml, instant in the pre-check.

    The wall time below is loose (< 0.5 s, for CI); the bench (`bench/`)
    holds the < 50 ms figure.
    """
    xml = attacks.xslt_bomb(mint(idp_on), levels=20)
    started = time.perf_counter()
    changes = _attack(idp_on, xml, "forbidden_algorithm", python3_saml_calls)
    assert time.perf_counter() - started < 0.5
    assert changes["received"] == attacks.XSLT


# (name, builder, expected code). Builders taking the IdP re-sign, so the
# signature is valid and only the allow-list can refuse the message.
ALGORITHM_ATTACKS: list[tuple[str, Callable[[str, Any], str], str]] = [
    (
        "xpath",
        lambda xml, idp: attacks.xpath_transform(xml, idp),
        "forbidden_algorithm",
    ),
    (
        "xpath_filter2",
        lambda xml, idp: attacks.xpath_filter2_transform(xml, idp),
        "forbidden_algorithm",
    ),
    ("base64", lambda xml, idp: attacks.base64_transform(xml), "forbidden_algorithm"),
    (
        "inclusive_c14n_both",
        lambda xml, idp: attacks.inclusive_c14n(xml, idp),
        "forbidden_algorithm",
    ),
    (
        "inclusive_c14n_canonicalization",
        lambda xml, idp: attacks.inclusive_c14n(xml, idp, where="canonicalization"),
        "forbidden_algorithm",
    ),
    (
        "inclusive_c14n_transform",
        lambda xml, idp: attacks.inclusive_c14n(xml, idp, where="transform"),
        "forbidden_algorithm",
    ),
    (
        "two_references",
        lambda xml, idp: attacks.two_references(xml, idp),
        "forbidden_algorithm",
    ),
    (
        "ds_object_text",
        lambda xml, idp: attacks.add_ds_object(xml, content="text"),
        "forbidden_algorithm",
    ),
    (
        "ds_manifest",
        lambda xml, idp: attacks.add_ds_object(xml, content="manifest"),
        "forbidden_algorithm",
    ),
    (
        # The evil Assertion inside ds:Object is a second Assertion: the
        # structure check (exactly one Assertion) fires before the ds:Object one.
        "ds_object_evil_assertion",
        lambda xml, idp: attacks.add_ds_object(xml, content="evil_assertion"),
        "bad_structure",
    ),
    (
        "two_assertions_signed",
        lambda xml, idp: attacks.two_assertions(xml, idp),
        "bad_structure",
    ),
    (
        "two_assertions_evil_first",
        lambda xml, idp: attacks.two_assertions(xml, evil_first=True),
        "bad_structure",
    ),
]


@pytest.mark.parametrize(
    ("builder", "code"),
    [pytest.param(b, c, id=n) for n, b, c in ALGORITHM_ATTACKS],
)
def test_transform_and_structure_allow_list(
    idp_on: SamlHarness,
    python3_saml_calls: list[Any],
    builder: Callable[[str, Any], str],
    code: str,
) -> None:
    xml = builder(mint(idp_on), idp_on.idp)
    _attack(idp_on, xml, code, python3_saml_calls)


def test_allow_list_accepts_the_ordinary_signature(idp_on: SamlHarness) -> None:
    """Control: exc-c14n + enveloped, RSA-SHA256, one Reference each."""
    assert_signed_in_as(idp_on, post(idp_on, mint(idp_on)), ALICE)


# --------------------------------------------------------------------------
# SSO-S6: XML signature wrapping


XSW_CASES = [
    pytest.param(name, signed, id=f"{name}-{signed}")
    for name in sorted(attacks.XSW)
    for signed in ("both", "assertion")
    if not (signed == "assertion" and name in ("xsw1", "xsw2"))
]


@pytest.mark.parametrize(("name", "signed"), XSW_CASES)
def test_xsw_is_refused(
    idp_on: SamlHarness, python3_saml_calls: list[Any], name: str, signed: str
) -> None:
    """Every SAML Raider variant, on a Response signed twice and on one signed
    at the Assertion only (which isolates the Assertion wrapping); XSW1/2
    wrap the Response signature and need it. No member, link or session."""
    xml = mint(idp_on, sign_response=signed == "both")
    evil = attacks.XSW[name](xml)
    # Every wrapping leaves two Assertions or two equal IDs in the document
    # (bad_structure); XSW10's entity aliases need a DOCTYPE.
    code = "dtd_forbidden" if name == "xsw10" else "bad_structure"
    _attack(idp_on, evil, code, python3_saml_calls)
    assert not member_exists(idp_on, ALICE)


@pytest.mark.parametrize(
    "builder",
    [
        pytest.param(lambda xml: attacks.xsw7(xml, keep_id=True), id="xsw7_keep_id"),
        pytest.param(lambda xml: attacks.xsw8(xml, keep_id=True), id="xsw8_keep_id"),
        pytest.param(lambda xml: attacks.xsw10(xml, doctype=False), id="xsw10_no_dtd"),
    ],
)
def test_xsw_variants_are_refused(
    idp_on: SamlHarness, python3_saml_calls: list[Any], builder: Callable[[str], str]
) -> None:
    """SAML Raider's own forms: duplicate IDs, or XSW10 without its DTD."""
    evil = builder(mint(idp_on, sign_response=False))
    _attack(idp_on, evil, "bad_structure", python3_saml_calls)


# --------------------------------------------------------------------------
# SSO-S7: comment injection (CVE-2017-11427 family)


def _comment_injected(h: SamlHarness) -> str:
    xml = mint(h, EVIL_COMMENT_EMAIL)
    injected = attacks.comment_injection(xml, attributes=True)
    assert "alice@corp.test<!---->.evil.test" in injected
    return injected


def test_comment_injection_keeps_the_full_identity_domain_refused(
    idp_on: SamlHarness,
) -> None:
    """The signature holds (exc-c14n drops comments) and the identity is the
    whole string, whose domain corp.test.evil.test is not on the list."""
    xml = _comment_injected(idp_on)
    response = post(idp_on, xml)
    assert response.status_code == 303, response.content  # signature verified
    before = snapshot(idp_on)
    client = idp_on.client()
    finish = client.get(response["Location"], **JSON)
    changes = refused(idp_on, finish, "email_domain_not_allowed", before)
    assert changes["name_id"] == EVIL_COMMENT_EMAIL
    assert changes["received"] == "corp.test.evil.test"
    assert not member_exists(idp_on, ALICE)


def test_comment_injection_on_an_allowed_domain_signs_in_the_full_string(
    idp_on: SamlHarness,
) -> None:
    """With the attacker's domain allowed (exact match), the member created is
    alice@corp.test.evil.test, never alice@corp.test."""
    set_policies(idp_on, allowed_email_domains=["corp.test", "corp.test.evil.test"])
    member = assert_signed_in_as(
        idp_on, post(idp_on, _comment_injected(idp_on)), EVIL_COMMENT_EMAIL
    )
    with tenant_context(idp_on.tenant):
        assert SsoLink.objects.get(member=member).name_id == EVIL_COMMENT_EMAIL
    assert not member_exists(idp_on, ALICE)


# --------------------------------------------------------------------------
# SSO-S8: the signature matrix


@pytest.mark.parametrize("relaxed", [False, True], ids=["default", "response_suffices"])
@pytest.mark.parametrize("sign_assertion", [True, False], ids=["A", "noA"])
@pytest.mark.parametrize("sign_response", [True, False], ids=["R", "noR"])
def test_signature_matrix(
    idp_on: SamlHarness, relaxed: bool, sign_response: bool, sign_assertion: bool
) -> None:
    """Default: a signed Assertion is required. Relaxed: either suffices.
    Unsigned both: refused under either policy."""
    if relaxed:
        set_policies(idp_on, signed_response_suffices=True)
    xml = mint(idp_on, sign_response=sign_response, sign_assertion=sign_assertion)
    accepted = sign_assertion or (relaxed and sign_response)
    if accepted:
        assert_signed_in_as(idp_on, post(idp_on, xml), ALICE)
    else:
        _attack(idp_on, xml, "signature_missing")
        assert not member_exists(idp_on, ALICE)


@pytest.mark.parametrize("relaxed", [False, True], ids=["default", "response_suffices"])
@pytest.mark.parametrize("which", ["response", "assertion", "both"])
def test_stripped_signatures(idp_on: SamlHarness, relaxed: bool, which: str) -> None:
    """Stripping the Response signature leaves a validly signed Assertion
    (accepted); stripping the Assertion's breaks the Response digest."""
    if relaxed:
        set_policies(idp_on, signed_response_suffices=True)
    xml = attacks.strip_signatures(mint(idp_on), which)  # type: ignore[arg-type]
    expected = {
        "response": None,
        "assertion": "signature_invalid" if relaxed else "signature_missing",
        "both": "signature_missing",
    }[which]
    if expected is None:
        assert_signed_in_as(idp_on, post(idp_on, xml), ALICE)
    else:
        _attack(idp_on, xml, expected)


@pytest.mark.parametrize(
    ("relaxed", "signed"),
    [
        pytest.param(False, (True, True), id="default-RA"),
        pytest.param(False, (False, True), id="default-A"),
        pytest.param(True, (True, True), id="response_suffices-RA"),
        pytest.param(True, (False, True), id="response_suffices-A"),
        pytest.param(True, (True, False), id="response_suffices-R"),
    ],
)
def test_nameid_edited_after_signing_is_signature_invalid(
    idp_on: SamlHarness, relaxed: bool, signed: tuple[bool, bool]
) -> None:
    """Every accepted signing combination: one changed NameID breaks it."""
    if relaxed:
        set_policies(idp_on, signed_response_suffices=True)
    sign_response, sign_assertion = signed
    xml = mint(idp_on, sign_response=sign_response, sign_assertion=sign_assertion)
    _attack(idp_on, attacks.edit_nameid_after_signing(xml), "signature_invalid")


# --------------------------------------------------------------------------
# SSO-S9: configured keys only; no HMAC, no SHA-1


@pytest.mark.parametrize("key_info", ["x509", "keyvalue"])
def test_attacker_key_with_embedded_cert_is_signature_invalid(
    idp_on: SamlHarness, key_info: str
) -> None:
    xml = attacks.attacker_resign(mint(idp_on), idp_on.idp, key_info=key_info)  # type: ignore[arg-type]
    changes = _attack(idp_on, xml, "signature_invalid")
    if key_info == "x509":
        # The admin sees which (unconfigured) certificate signed it.
        assert "embedded (unverified) certificate" in changes["received"]


@pytest.mark.parametrize(
    "key", [None, b"attacker-chosen-secret"], ids=["idp_cert_as_key", "secret"]
)
def test_hmac_signatures_are_refused(
    idp_on: SamlHarness, python3_saml_calls: list[Any], key: bytes | None
) -> None:
    """CVE-2021-21239 family: HMAC 'signatures' keyed with public data."""
    xml = attacks.hmac_signature(mint(idp_on), idp_on.idp, key)
    changes = _attack(idp_on, xml, "forbidden_algorithm", python3_saml_calls)
    assert "hmac" in changes["received"]


@pytest.mark.parametrize(
    ("sign_alg", "digest_alg"),
    [
        (SIG_RSA_SHA1, DIGEST_SHA1),  # pysaml2's default
        (SIG_RSA_SHA1, "http://www.w3.org/2001/04/xmlenc#sha256"),
        (SIG_RSA_SHA256, DIGEST_SHA1),
    ],
    ids=["rsa-sha1+sha1", "rsa-sha1", "sha1-digest"],
)
def test_sha1_is_forbidden(
    idp_on: SamlHarness,
    python3_saml_calls: list[Any],
    sign_alg: str,
    digest_alg: str,
) -> None:
    xml = attacks.sha1_signature(
        mint(idp_on), idp_on.idp, sign_alg=sign_alg, digest_alg=digest_alg
    )
    _attack(idp_on, xml, "forbidden_algorithm", python3_saml_calls)


def test_deprecated_algorithms_are_also_refused_by_python3_saml() -> None:
    """Defence in depth: the settings keep rejectDeprecatedAlgorithm on."""
    from sso.services.config import _settings_dict

    data = _settings_dict(None, "http://tenant.localhost", [], "", "", None)
    assert data["security"]["rejectDeprecatedAlgorithm"] is True
    assert data["strict"] is True
    assert django_settings.SSO_CLOCK_DRIFT_SECONDS == 180
