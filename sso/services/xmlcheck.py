"""The pre-check: the only code that parses untrusted SAML XML itself.

It runs before python3-saml sees a byte (SSO-S4, SSO-S5, SSO-S17): a
hardened lxml parser (no DTD, no entities, no network, no huge trees), then
the structure and algorithm allow-list, so that python3-saml's transform
engine never runs an XSLT or XPath transform, never decrypts with rsa-1_5
or CBC, and never lets xmlsec fetch a URI (CipherReference,
RetrievalMethod). Its findings may only *reject* a message; nothing it reads
is ever used to accept one or to choose a configuration (SSO-S2).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from lxml import etree

from portal.services.registry import audit_exempt
from sso.errors import SamlError

NS_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_XENC = "http://www.w3.org/2001/04/xmlenc#"
ENCRYPTED_KEY_TYPE = "http://www.w3.org/2001/04/xmlenc#EncryptedKey"

RESPONSE = f"{{{NS_SAMLP}}}Response"
LOGOUT_REQUEST = f"{{{NS_SAMLP}}}LogoutRequest"
LOGOUT_RESPONSE = f"{{{NS_SAMLP}}}LogoutResponse"
ASSERTION = f"{{{NS_SAML}}}Assertion"
ENCRYPTED_ASSERTION = f"{{{NS_SAML}}}EncryptedAssertion"
SIGNATURE = f"{{{NS_DS}}}Signature"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ALLOWED_TRANSFORMS = frozenset(
    {"http://www.w3.org/2000/09/xmldsig#enveloped-signature", EXC_C14N}
)
ALLOWED_C14N = frozenset({EXC_C14N})
ALLOWED_SIGNATURE_METHODS = frozenset(
    {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    }
)
ALLOWED_DIGESTS = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#sha256",
        "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "http://www.w3.org/2001/04/xmlenc#sha512",
    }
)
ALLOWED_CONTENT_ENCRYPTION = frozenset(
    {
        "http://www.w3.org/2009/xmlenc11#aes128-gcm",
        "http://www.w3.org/2009/xmlenc11#aes192-gcm",
        "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    }
)
ALLOWED_KEY_TRANSPORT = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
        "http://www.w3.org/2009/xmlenc11#rsa-oaep",
    }
)
# Elements that make a signature reference or run something beyond the
# allow-list, wherever they appear.
FORBIDDEN_DS_ELEMENTS = frozenset(
    {f"{{{NS_DS}}}Object", f"{{{NS_DS}}}Manifest", f"{{{NS_DS}}}SignatureProperties"}
)

MAX_MESSAGE_BYTES = 256 * 1024
MAX_ENCRYPTED_KEYS = 4  # one per SP certificate is plenty (key rollover)
MAX_METADATA_BYTES = 1024 * 1024
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        dtd_validation=False,
        no_network=True,
        huge_tree=False,
        remove_pis=True,
    )


@dataclass(frozen=True)
class Checked:
    """What the pre-check saw. Unverified: only ever a reason to reject."""

    root: etree._Element
    message_id: str
    in_response_to: str | None
    issuer: str | None
    success: bool
    encrypted: bool


@audit_exempt("pure: decodes bytes")
def b64decode_strict(value: str | bytes) -> bytes:
    """Base64 with only the alphabet and line breaks; anything else is `malformed`."""
    raw = value.encode("ascii", "replace") if isinstance(value, str) else value
    raw = _WHITESPACE.sub(b"", raw)
    if not raw or len(raw) % 4 or not _BASE64.fullmatch(raw):
        raise SamlError("malformed", detail="The SAML message is not strict base64.")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SamlError("malformed") from None


@audit_exempt("pure: parses bytes")
def xml_parse_hardened(
    data: bytes, *, limit: int = MAX_MESSAGE_BYTES
) -> etree._Element:
    """Parse untrusted XML: no DTD at all, no entities, no network."""
    if len(data) > limit:
        raise SamlError("too_large", expected=f"≤ {limit} bytes", received=len(data))
    head = data[:4096].lstrip().upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in data.upper():
        raise SamlError("dtd_forbidden")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise SamlError("malformed", detail=f"XML syntax error: {exc.msg}.") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise SamlError("dtd_forbidden")
    if not isinstance(root.tag, str):
        raise SamlError("malformed")
    return root


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else str(tag)


def _check_ids(root: etree._Element) -> None:
    seen: set[str] = set()
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        value = element.get("ID")
        if value is None:
            continue
        if value in seen:
            raise SamlError("bad_structure", detail="Two elements share one ID.")
        seen.add(value)


def _check_signature(signature: etree._Element, allowed_parents: set[int]) -> None:
    parent = signature.getparent()
    if parent is None or id(parent) not in allowed_parents:
        raise SamlError(
            "bad_structure",
            detail="A signature sits somewhere other than on the Response or its "
            "assertion.",
        )
    references = signature.findall(f"{{{NS_DS}}}SignedInfo/{{{NS_DS}}}Reference")
    all_references = signature.findall(f".//{{{NS_DS}}}Reference")
    if len(references) != 1 or len(all_references) != 1:
        raise SamlError(
            "forbidden_algorithm",
            expected="exactly one Reference per signature",
            received=f"{len(all_references)} References",
        )
    uri = references[0].get("URI") or ""
    parent_id = parent.get("ID")
    if not parent_id or uri != f"#{parent_id}":
        raise SamlError(
            "bad_structure",
            detail="The signature does not reference the element it sits on.",
        )
    for transform in references[0].iterfind(f".//{{{NS_DS}}}Transform"):
        algorithm = transform.get("Algorithm") or ""
        if algorithm not in ALLOWED_TRANSFORMS:
            raise SamlError(
                "forbidden_algorithm",
                expected="enveloped-signature and exclusive C14N transforms",
                received=algorithm[:200],
            )
        for child in transform:
            if not isinstance(child.tag, str):
                continue
            if _local(child.tag) != "InclusiveNamespaces":
                raise SamlError(
                    "forbidden_algorithm",
                    detail="A transform carries content other than a prefix list.",
                    received=_local(child.tag),
                )
    signed_info = f"{{{NS_DS}}}SignedInfo/"
    checks = (
        (
            signed_info + f"{{{NS_DS}}}CanonicalizationMethod",
            ALLOWED_C14N,
            "exclusive C14N",
        ),
        (
            signed_info + f"{{{NS_DS}}}SignatureMethod",
            ALLOWED_SIGNATURE_METHODS,
            "RSA-SHA256/384/512",
        ),
        (
            signed_info + f"{{{NS_DS}}}Reference/{{{NS_DS}}}DigestMethod",
            ALLOWED_DIGESTS,
            "SHA-256/384/512",
        ),
    )
    for path, allowed, label in checks:
        nodes = signature.findall(path)
        if len(nodes) != 1 or (nodes[0].get("Algorithm") or "") not in allowed:
            received = nodes[0].get("Algorithm") if nodes else "none"
            raise SamlError(
                "forbidden_algorithm", expected=label, received=(received or "")[:200]
            )


def _check_encryption(root: etree._Element) -> None:
    """Allowed algorithms, and nothing that makes xmlsec fetch or transform.

    xmlsec decrypts with its own URI resolver: an `xenc:CipherReference`
    (or a `ds:RetrievalMethod` to anything but a sibling EncryptedKey) reads
    `file://` URIs, so `file:///dev/zero` would be read until memory runs
    out, and its Transforms run like a signature's. python3-saml decrypts
    before checking any signature, and the SP's encryption certificate is
    public, so anyone can build such a message.
    """
    for reference in root.iter(f"{{{NS_XENC}}}CipherReference"):
        raise SamlError(
            "forbidden_algorithm",
            expected="the ciphertext inline (CipherValue)",
            received="CipherReference " + (reference.get("URI") or "")[:200],
        )
    for method in root.iter(f"{{{NS_DS}}}RetrievalMethod"):
        if (
            not (method.get("URI") or "").startswith("#")
            or method.get("Type") != ENCRYPTED_KEY_TYPE
            or any(isinstance(child.tag, str) for child in method)
        ):
            raise SamlError(
                "forbidden_algorithm",
                expected="a RetrievalMethod pointing at an EncryptedKey in the "
                "message, without Transforms",
                received="RetrievalMethod " + (method.get("URI") or "")[:200],
            )
    keys = list(root.iter(f"{{{NS_XENC}}}EncryptedKey"))
    if len(keys) > MAX_ENCRYPTED_KEYS:
        # xmlsec tries every one with an RSA private-key operation (~2 ms
        # each at 3072 bits) before any signature is checked.
        raise SamlError(
            "bad_structure",
            expected=f"at most {MAX_ENCRYPTED_KEYS} EncryptedKey elements",
            received=len(keys),
        )
    for data in root.iter(f"{{{NS_XENC}}}EncryptedData"):
        method = data.find(f"{{{NS_XENC}}}EncryptionMethod")
        algorithm = method.get("Algorithm") if method is not None else None
        if algorithm not in ALLOWED_CONTENT_ENCRYPTION:
            raise SamlError(
                "forbidden_algorithm",
                expected="AES-GCM content encryption",
                received=(algorithm or "none")[:200],
            )
    for key in root.iter(f"{{{NS_XENC}}}EncryptedKey"):
        method = key.find(f"{{{NS_XENC}}}EncryptionMethod")
        algorithm = method.get("Algorithm") if method is not None else None
        if algorithm not in ALLOWED_KEY_TRANSPORT:
            raise SamlError(
                "forbidden_algorithm",
                expected="RSA-OAEP key transport",
                received=(algorithm or "none")[:200],
            )


@audit_exempt("pure: inspects XML")
def signatures_check(root: etree._Element, *, assertion: etree._Element | None) -> None:
    """Every signature: on the root or assertion, one Reference, allowed algorithms."""
    # One tag per iter(): python3-saml's RestrictedElement (the decrypted
    # document) breaks on several.
    forbidden = [e for t in FORBIDDEN_DS_ELEMENTS for e in root.iter(t)]
    for element in forbidden:
        raise SamlError(
            "forbidden_algorithm",
            detail="ds:Object, ds:Manifest and SignatureProperties are not accepted.",
            received=_local(element.tag),
        )
    allowed = {id(root)}
    if assertion is not None:
        allowed.add(id(assertion))
    parents: set[int] = set()
    # The checked elements stay referenced, so their proxies (and ids) hold.
    checked_transforms: list[etree._Element] = []
    for signature in root.iter(SIGNATURE):
        _check_signature(signature, allowed)
        parent_key = id(signature.getparent())
        if parent_key in parents:
            raise SamlError("bad_structure", detail="Two signatures on one element.")
        parents.add(parent_key)
        checked_transforms.extend(
            signature.iterfind(
                f"{{{NS_DS}}}SignedInfo/{{{NS_DS}}}Reference/{{{NS_DS}}}Transforms"
            )
        )
    checked_ids = {id(t) for t in checked_transforms}
    # Transforms anywhere else (KeyInfo, RetrievalMethod, CipherReference,
    # DataReference) would run outside the allow-list above.
    for tag in (f"{{{NS_DS}}}Transforms", f"{{{NS_XENC}}}Transforms"):
        for transforms in root.iter(tag):
            if id(transforms) not in checked_ids:
                raise SamlError(
                    "forbidden_algorithm",
                    detail="Transforms are accepted only in a signature's Reference.",
                    received=_local(transforms.getparent().tag)
                    if transforms.getparent() is not None
                    else "Transforms",
                )


@audit_exempt("pure: inspects XML")
def response_precheck(xml: bytes) -> Checked:
    """Parse and vet a decoded SAMLResponse before python3-saml touches it."""
    root = xml_parse_hardened(xml)
    if root.tag != RESPONSE:
        raise SamlError(
            "bad_structure", expected="samlp:Response", received=_local(root.tag)
        )
    _check_ids(root)
    status = root.find(f"{{{NS_SAMLP}}}Status/{{{NS_SAMLP}}}StatusCode")
    success = status is not None and status.get("Value") == STATUS_SUCCESS
    assertions = list(root.iter(ASSERTION))
    encrypted = list(root.iter(ENCRYPTED_ASSERTION))
    assertion: etree._Element | None = None
    if success or assertions or encrypted:
        if len(assertions) + len(encrypted) != 1:
            raise SamlError(
                "bad_structure",
                expected="exactly one assertion",
                received=f"{len(assertions)} plain, {len(encrypted)} encrypted",
            )
        only = (assertions or encrypted)[0]
        if only.getparent() is not root:
            raise SamlError(
                "bad_structure", detail="The assertion is not a child of the Response."
            )
        assertion = assertions[0] if assertions else None
    signatures_check(root, assertion=assertion)
    _check_encryption(root)
    issuer = root.find(f"{{{NS_SAML}}}Issuer")
    return Checked(
        root=root,
        message_id=root.get("ID") or "",
        in_response_to=root.get("InResponseTo"),
        issuer=issuer.text if issuer is not None else None,
        success=success,
        encrypted=bool(encrypted),
    )


@audit_exempt("pure: inspects XML")
def decrypted_precheck(document: etree._Element) -> None:
    """The same signature allow-list on a decrypted document (SSO-S5)."""
    assertions = document.findall(ASSERTION)
    if len(assertions) != 1 or len(list(document.iter(ASSERTION))) != 1:
        raise SamlError("bad_structure", expected="exactly one decrypted assertion")
    _check_ids(document)
    signatures_check(document, assertion=assertions[0])


@audit_exempt("pure: inspects XML")
def logout_precheck(xml: bytes, *, expect: str) -> Checked:
    """Vet a LogoutRequest or LogoutResponse (either binding)."""
    root = xml_parse_hardened(xml)
    if root.tag != expect:
        raise SamlError(
            "bad_structure", expected=_local(expect), received=_local(root.tag)
        )
    _check_ids(root)
    signatures_check(root, assertion=None)
    _check_encryption(root)
    issuer = root.find(f"{{{NS_SAML}}}Issuer")
    status = root.find(f"{{{NS_SAMLP}}}Status/{{{NS_SAMLP}}}StatusCode")
    return Checked(
        root=root,
        message_id=root.get("ID") or "",
        in_response_to=root.get("InResponseTo"),
        issuer=issuer.text if issuer is not None else None,
        success=status is not None and status.get("Value") == STATUS_SUCCESS,
        encrypted=False,
    )
