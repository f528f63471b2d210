"""Hostile SAML inputs, each made from a valid signed Response (sso.md §3).

Every function takes the XML text of a Response minted by `TestIdP` (and,
where re-signing or an attacker's key is needed, the `TestIdP`) and returns
the hostile XML text; `tests.sso.idp.post_form` encodes it for the ACS.
Inputs are never modified in place.

Vocabulary used in the docstrings:

* *original*: the signed element as the IdP produced it;
* *evil clone*: a deep copy whose text nodes equal to the original NameID
  are replaced by `MALLORY` (as SAML Raider's match-and-replace does, so
  an email attribute carrying the same value changes too), with a fresh ID
  `_evil_<kind>_<hex>` and without its own ds:Signature;
* *own Signature*: the ds:Signature that is a direct child of an element.

XSW1-XSW8 and XSW10 follow SAML Raider's `XSWHelpers` (CompassSecurity/
SAMLRaider). XSW1/2 wrap the Response signature and need a signed Response;
XSW3-8 and XSW10 wrap the Assertion signature and need a signed Assertion.
A Response signature that also exists in XSW3-8 stays in place and no
longer matches (the document changed): give those a Response signed at the
Assertion only (`sign_response=False`) to isolate the wrapping, or both
signatures to test the combination.
"""

from __future__ import annotations

import atexit
import copy
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from lxml import etree
from saml2.sigver import pre_signature_part
from saml2.xmldsig import DIGEST_SHA1, DIGEST_SHA256, SIG_RSA_SHA1

from tests.sso.idp import DS, NS, SAMLP, TestIdP, make_keypair, parse_xml, to_xml

MALLORY = "mallory@corp.test"

XSLT = "http://www.w3.org/TR/1999/REC-xslt-19991116"
XPATH = "http://www.w3.org/TR/1999/REC-xpath-19991116"
XPATH_FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
BASE64 = "http://www.w3.org/2000/09/xmldsig#base64"
C14N_INCLUSIVE = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
HMAC_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256"
XSL = "http://www.w3.org/1999/XSL/Transform"

TemplateEdit = Callable[[Any, Any], None]


# --------------------------------------------------------------------------
# helpers


def _evil_id(kind: str) -> str:
    return f"_evil_{kind}_{secrets.token_hex(8)}"


def _assertion(root: Any) -> Any:
    assertion = root.find("saml:Assertion", NS)
    if assertion is None:
        raise ValueError("no plaintext saml:Assertion child in the Response")
    return assertion


def _own_signature(element: Any) -> Any:
    return element.find("ds:Signature", NS)


def _signed_assertion(root: Any) -> tuple[Any, Any]:
    assertion = _assertion(root)
    signature = _own_signature(assertion)
    if signature is None:
        raise ValueError("this attack needs a signed Assertion")
    return assertion, signature


def _nameid_text(root: Any) -> str:
    nameid = root.find(".//saml:Subject/saml:NameID", NS)
    if nameid is None or not nameid.text:
        raise ValueError("no NameID in the Response")
    return str(nameid.text)


def _match_replace(element: Any, old: str, new: str = MALLORY) -> None:
    for node in element.iter():
        if node.text == old:
            node.text = new
        if node is not element and node.tail == old:
            node.tail = new


def _evil_clone(element: Any, old_nameid: str, kind: str) -> Any:
    clone = copy.deepcopy(element)
    signature = _own_signature(clone)
    if signature is not None:
        clone.remove(signature)
    _match_replace(clone, old_nameid)
    clone.set("ID", _evil_id(kind))
    return clone


def _without_own_signature(element: Any) -> Any:
    clone = copy.deepcopy(element)
    signature = _own_signature(clone)
    if signature is not None:
        clone.remove(signature)
    return clone


def _signed_flags(root: Any) -> tuple[bool, bool]:
    """(Response signed, first Assertion signed): what re-signing recreates."""
    assertion = root.find("saml:Assertion", NS)
    return (
        _own_signature(root) is not None,
        assertion is not None and _own_signature(assertion) is not None,
    )


def _signatures(root: Any) -> list[Any]:
    return list(root.iter(DS + "Signature"))


def _transforms(signature: Any) -> Any:
    return signature.find("ds:SignedInfo/ds:Reference/ds:Transforms", NS)


def _alter(xml: str, idp: TestIdP | None, template_edit: TemplateEdit) -> str:
    """Apply `template_edit` to every signature, re-signing when `idp`."""
    root = parse_xml(xml)
    if idp is not None:
        sign_response, sign_assertion = _signed_flags(root)
        return idp.resign(
            xml,
            template_edit=template_edit,
            sign_response=sign_response,
            sign_assertion=sign_assertion,
        )
    for signature in _signatures(root):
        template_edit(signature, signature.getparent())
    return to_xml(root)


def _with_doctype(xml: str, doctype: str) -> str:
    match = re.match(r"\s*<\?xml[^>]*\?>", xml)
    if match:
        return xml[: match.end()] + "\n" + doctype + "\n" + xml[match.end() :]
    return doctype + "\n" + xml


def _root_qname(xml: str) -> str:
    root = parse_xml(xml)
    prefix = root.prefix
    local = etree.QName(root).localname
    return f"{prefix}:{local}" if prefix else local


_ATTACKER: dict[str, tuple[str, str]] = {}


def attacker_keypair() -> tuple[str, str]:
    """(key path, cert path) of the attacker's own RSA key (CN=attacker)."""
    if "pair" not in _ATTACKER:
        directory = tempfile.mkdtemp(prefix="saml-attacker-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _ATTACKER["pair"] = make_keypair(directory, "attacker")
    return _ATTACKER["pair"]


# --------------------------------------------------------------------------
# XML signature wrapping (SAML Raider's XSW1-XSW8, XSW10)


def xsw1(xml: str) -> str:
    """XSW1: evil Response root; the signed original inside its Signature.

    The root Response becomes the evil one (NameID -> MALLORY, fresh ID); a
    copy of the original Response without its Signature is appended inside
    the root's own Signature, where the Reference (to the original ID) finds
    it. Needs a signed Response.
    """
    root = parse_xml(xml)
    signature = _own_signature(root)
    if signature is None:
        raise ValueError("xsw1 needs a signed Response")
    original = _without_own_signature(root)
    _match_replace(root, _nameid_text(root))
    signature.append(original)
    root.set("ID", _evil_id("response"))
    return to_xml(root)


def xsw2(xml: str) -> str:
    """XSW2: evil Response root; the signed original just before its Signature.

    As XSW1, but the copy of the original Response (detached from its
    Signature) is inserted into the evil root right before the Signature.
    Needs a signed Response.
    """
    root = parse_xml(xml)
    signature = _own_signature(root)
    if signature is None:
        raise ValueError("xsw2 needs a signed Response")
    original = _without_own_signature(root)
    _match_replace(root, _nameid_text(root))
    signature.addprevious(original)
    root.set("ID", _evil_id("response"))
    return to_xml(root)


def xsw3(xml: str) -> str:
    """XSW3: an unsigned evil Assertion clone before the signed original."""
    root = parse_xml(xml)
    assertion, _signature = _signed_assertion(root)
    assertion.addprevious(_evil_clone(assertion, _nameid_text(root), "assertion"))
    return to_xml(root)


def xsw4(xml: str) -> str:
    """XSW4: an evil clone appended to the Response wraps the signed original.

    The original Assertion (with its Signature) is moved inside the evil
    clone as its last child, so the Response's only top-level Assertion is
    the evil one.
    """
    root = parse_xml(xml)
    assertion, _signature = _signed_assertion(root)
    evil = _evil_clone(assertion, _nameid_text(root), "assertion")
    root.append(evil)
    evil.append(assertion)
    return to_xml(root)


def xsw5(xml: str) -> str:
    """XSW5: the evil Assertion keeps the Signature; the original goes last.

    The Assertion in place is edited into the evil one (NameID -> MALLORY,
    fresh ID) and keeps the original Signature, whose Reference now finds a
    signature-less copy of the original appended at the end of the
    Response.
    """
    root = parse_xml(xml)
    assertion, _signature = _signed_assertion(root)
    original = _without_own_signature(assertion)
    _match_replace(assertion, _nameid_text(root))
    root.append(original)
    assertion.set("ID", _evil_id("assertion"))
    return to_xml(root)


def xsw6(xml: str) -> str:
    """XSW6: as XSW5, but the original copy sits inside the Signature."""
    root = parse_xml(xml)
    assertion, signature = _signed_assertion(root)
    original = _without_own_signature(assertion)
    _match_replace(assertion, _nameid_text(root))
    signature.append(original)
    assertion.set("ID", _evil_id("assertion"))
    return to_xml(root)


def xsw7(xml: str, *, keep_id: bool = False) -> str:
    """XSW7: an evil clone in samlp:Extensions before the signed original.

    SAML Raider keeps the clone's ID and uses an unqualified `Extensions`;
    here the clone gets a fresh `_evil` ID unless `keep_id` (then two
    elements share the original ID) and the wrapper is `samlp:Extensions`.
    """
    root = parse_xml(xml)
    assertion, _signature = _signed_assertion(root)
    evil = _evil_clone(assertion, _nameid_text(root), "assertion")
    if keep_id:
        evil.set("ID", assertion.get("ID"))
    extensions = etree.Element(SAMLP + "Extensions")
    extensions.append(evil)
    assertion.addprevious(extensions)
    return to_xml(root)


def xsw8(xml: str, *, keep_id: bool = False) -> str:
    """XSW8: the evil Assertion keeps its Signature; the original in an Object.

    The Assertion in place becomes the evil one; a signature-less copy of
    the original is put in a `ds:Object` appended to that Signature. The
    evil Assertion gets a fresh ID unless `keep_id` (SAML Raider keeps it,
    so two elements share the original ID).
    """
    root = parse_xml(xml)
    assertion, signature = _signed_assertion(root)
    original = _without_own_signature(assertion)
    _match_replace(assertion, _nameid_text(root))
    if not keep_id:
        assertion.set("ID", _evil_id("assertion"))
    obj = etree.SubElement(signature, DS + "Object")
    obj.append(original)
    return to_xml(root)


def xsw10(xml: str, *, doctype: bool = True) -> str:
    """XSW10: the Assertion's Signature moved onto the Response, DTD aliases.

    Per SAML Raider: every Response-level Signature is removed; a copy of
    the Assertion's Signature is inserted after the Response's Issuer with
    a `ds:Object` holding a copy of the original Assertion (still signed);
    the Assertion in place loses its Signature and becomes the evil one
    (NameID -> MALLORY, fresh ID). With `doctype` (SAML Raider's form) the
    Response ID is `&idViaEntity;` (= the original Assertion ID) and the
    copied Assertion's ID `&BypassIDUniqueness;<id>` (= "P<id>"), declared
    in an internal DTD subset, so the input also carries a DOCTYPE. Without
    it the expanded values are written literally.
    """
    root = parse_xml(xml)
    assertion, assertion_signature = _signed_assertion(root)
    original_id = assertion.get("ID")
    for signature in root.findall("ds:Signature", NS):
        root.remove(signature)
    moved = copy.deepcopy(assertion_signature)
    issuer = root.find("saml:Issuer", NS)
    if issuer is not None:
        issuer.addnext(moved)
    else:
        root.insert(0, moved)
    obj = etree.SubElement(moved, DS + "Object")
    copied = copy.deepcopy(assertion)
    obj.append(copied)
    assertion.remove(assertion_signature)
    _match_replace(assertion, _nameid_text(root))
    assertion.set("ID", _evil_id("assertion"))
    if not doctype:
        root.set("ID", original_id)
        copied.set("ID", "P" + original_id)
        return to_xml(root)
    root.set("ID", "__xsw10_response_id__")
    copied.set("ID", "__xsw10_copy_id__")
    text = to_xml(root)
    text = text.replace('ID="__xsw10_response_id__"', 'ID="&idViaEntity;"')
    text = text.replace(
        'ID="__xsw10_copy_id__"', f'ID="&BypassIDUniqueness;{original_id}"'
    )
    dtd = (
        "<!DOCTYPE response [\n"
        f'<!ENTITY idViaEntity "{original_id}">\n'
        '<!ENTITY BypassIDUniqueness "&#x50;">\n'
        "]>"
    )
    return _with_doctype(text, dtd)


XSW: dict[str, Callable[[str], str]] = {
    "xsw1": xsw1,
    "xsw2": xsw2,
    "xsw3": xsw3,
    "xsw4": xsw4,
    "xsw5": xsw5,
    "xsw6": xsw6,
    "xsw7": xsw7,
    "xsw8": xsw8,
    "xsw10": xsw10,
}
"""Every XSW variant by name, for parametrised tests."""


# --------------------------------------------------------------------------
# content tampering without re-signing


def comment_injection(
    xml: str, marker: str = ".evil.test", *, attributes: bool = False
) -> str:
    """Insert `<!---->` before `marker` in the NameID text (CVE-2017-11427).

    Mint the Response for e.g. `alice@corp.test.evil.test`; the result's
    NameID is `alice@corp.test<!---->.evil.test`. Exclusive C14N drops
    comments, so every signature still verifies; a parser reading only the
    first text node would see `alice@corp.test`. With `attributes`, every
    AttributeValue containing `marker` is split the same way. Raises
    ValueError when no NameID contains `marker`.
    """
    root = parse_xml(xml)
    targets = list(root.iterfind(".//saml:Subject/saml:NameID", NS))
    if attributes:
        targets += list(root.iterfind(".//saml:AttributeValue", NS))
    changed = False
    for element in targets:
        text = element.text or ""
        index = text.find(marker)
        if index <= 0 or len(element):
            continue
        element.text = text[:index]
        comment = etree.Comment("")
        comment.tail = text[index:]
        element.append(comment)
        changed = True
    if not changed:
        raise ValueError(f"no NameID contains {marker!r}")
    return to_xml(root)


def strip_signatures(
    xml: str, which: Literal["response", "assertion", "both"] = "both"
) -> str:
    """Remove the Response's and/or the Assertion's own ds:Signature."""
    root = parse_xml(xml)
    owners = []
    if which in ("response", "both"):
        owners.append(root)
    if which in ("assertion", "both"):
        owners.extend(root.findall("saml:Assertion", NS))
    for owner in owners:
        signature = _own_signature(owner)
        if signature is not None:
            owner.remove(signature)
    return to_xml(root)


def edit_nameid_after_signing(xml: str, new: str = MALLORY) -> str:
    """Replace the NameID text after signing, so every digest breaks."""
    root = parse_xml(xml)
    for nameid in root.iterfind(".//saml:Subject/saml:NameID", NS):
        nameid.text = new
    return to_xml(root)


# --------------------------------------------------------------------------
# signature algorithms and structure (SSO-S5, SSO-S9)


def _xslt_stylesheet(levels: int) -> Any:
    """A stylesheet whose template calls itself twice per level."""
    xsl = "{" + XSL + "}"
    sheet = etree.Element(xsl + "stylesheet", version="1.0", nsmap={"xsl": XSL})
    start = etree.SubElement(sheet, xsl + "template", match="/")
    call = etree.SubElement(start, xsl + "call-template", name="d")
    etree.SubElement(call, xsl + "with-param", name="n", select=str(levels))
    template = etree.SubElement(sheet, xsl + "template", name="d")
    etree.SubElement(template, xsl + "param", name="n")
    choose = etree.SubElement(template, xsl + "choose")
    when = etree.SubElement(choose, xsl + "when", test="$n > 0")
    for _ in range(2):
        call = etree.SubElement(when, xsl + "call-template", name="d")
        etree.SubElement(call, xsl + "with-param", name="n", select="$n - 1")
    otherwise = etree.SubElement(choose, xsl + "otherwise")
    etree.SubElement(otherwise, xsl + "value-of", select="count(//*)")
    return sheet


def xslt_bomb(xml: str, levels: int = 20) -> str:
    """Put a doubling XSLT transform first in the first ds:Transforms.

    The stylesheet's template calls itself twice until `levels` reaches 0
    and then counts all elements, so running it costs ~2**levels steps
    (3.7 s at 18 levels in python3-saml, #447). The first Signature in
    document order (the Response's when signed) gets it; no re-signing
    (the damage happens before any value is compared).
    """
    root = parse_xml(xml)
    signatures = _signatures(root)
    if not signatures:
        raise ValueError("no ds:Signature to attack")
    transform = etree.Element(DS + "Transform", Algorithm=XSLT)
    transform.append(_xslt_stylesheet(levels))
    _transforms(signatures[0]).insert(0, transform)
    return to_xml(root)


def _insert_transform(make: Callable[[], Any]) -> TemplateEdit:
    def edit(signature: Any, _target: Any) -> None:
        _transforms(signature).insert(0, make())

    return edit


def xpath_transform(xml: str, idp: TestIdP | None = None) -> str:
    """Prepend an XPath transform (excluding Signatures) to each Reference.

    The expression is `not(ancestor-or-self::*[local-name()='Signature'])`.

    Applied to every Signature. With `idp` the document is re-signed by the
    IdP's key with that transform in place, so the signature is valid
    (python3-saml alone accepts it); without, the SignedInfo no longer
    matches its SignatureValue.
    """

    def make() -> Any:
        transform = etree.Element(DS + "Transform", Algorithm=XPATH)
        expression = etree.SubElement(transform, DS + "XPath")
        expression.text = "not(ancestor-or-self::*[local-name()='Signature'])"
        return transform

    return _alter(xml, idp, _insert_transform(make))


def xpath_filter2_transform(xml: str, idp: TestIdP | None = None) -> str:
    """Prepend an XPath Filter 2.0 transform (subtract every Signature).

    Applied to every Signature; re-signed validly with `idp` (python3-saml
    alone accepts it), else the SignatureValue no longer matches.
    """

    def make() -> Any:
        transform = etree.Element(DS + "Transform", Algorithm=XPATH_FILTER2)
        expression = etree.SubElement(
            transform,
            "{" + XPATH_FILTER2 + "}XPath",
            Filter="subtract",
            nsmap={"dsig-xpath": XPATH_FILTER2},
        )
        expression.text = "//*[local-name()='Signature']"
        return transform

    return _alter(xml, idp, _insert_transform(make))


def base64_transform(xml: str) -> str:
    """Append a base64 transform to every Signature's Transforms.

    Never re-signed: base64-decoding canonical XML fails in xmlsec1, so no
    valid signature with it exists for a SAML element.
    """
    root = parse_xml(xml)
    for signature in _signatures(root):
        etree.SubElement(_transforms(signature), DS + "Transform", Algorithm=BASE64)
    return to_xml(root)


def inclusive_c14n(
    xml: str,
    idp: TestIdP | None = None,
    *,
    where: Literal["both", "canonicalization", "transform"] = "both",
) -> str:
    """Use inclusive C14N 1.0 instead of exclusive C14N.

    `where` picks the SignedInfo CanonicalizationMethod, the Reference's
    exc-c14n Transform, or both, in every Signature. With `idp` the result
    is validly re-signed (python3-saml alone accepts it).
    """

    def edit(signature: Any, _target: Any) -> None:
        if where in ("both", "canonicalization"):
            method = signature.find("ds:SignedInfo/ds:CanonicalizationMethod", NS)
            method.set("Algorithm", C14N_INCLUSIVE)
        if where in ("both", "transform"):
            for transform in _transforms(signature):
                if transform.get("Algorithm") == EXC_C14N:
                    transform.set("Algorithm", C14N_INCLUSIVE)

    return _alter(xml, idp, edit)


def two_references(xml: str, idp: TestIdP | None = None) -> str:
    """Give every Signature a second Reference (a copy of its first one).

    With `idp` both digests are computed and the signature is valid
    (python3-saml alone accepts it); without, SignedInfo no longer matches.
    """

    def edit(signature: Any, _target: Any) -> None:
        reference = signature.find("ds:SignedInfo/ds:Reference", NS)
        reference.addnext(copy.deepcopy(reference))

    return _alter(xml, idp, edit)


def add_ds_object(
    xml: str,
    *,
    content: Literal["evil_assertion", "manifest", "text"] = "evil_assertion",
) -> str:
    """Append a ds:Object to the first Signature (outside SignedInfo).

    `content`: "evil_assertion" (an evil Assertion clone; python3-saml
    then counts two Assertions and refuses), "manifest" (a ds:Manifest
    whose one Reference, URI="", has a bogus digest: libxmlsec does not
    process manifests, so python3-saml alone accepts it), or "text" (plain
    text, likewise accepted). No re-signing is needed: the signatures
    stay valid.
    """
    root = parse_xml(xml)
    signatures = _signatures(root)
    if not signatures:
        raise ValueError("no ds:Signature to attack")
    obj = etree.SubElement(signatures[0], DS + "Object")
    if content == "manifest":
        manifest = etree.SubElement(obj, DS + "Manifest")
        reference = etree.SubElement(manifest, DS + "Reference", URI="")
        etree.SubElement(reference, DS + "DigestMethod", Algorithm=DIGEST_SHA256)
        etree.SubElement(reference, DS + "DigestValue").text = "AAAA"
    elif content == "text":
        obj.text = "hidden"
    else:
        obj.append(_evil_clone(_assertion(root), _nameid_text(root), "assertion"))
    return to_xml(root)


def attacker_resign(
    xml: str,
    idp: TestIdP,
    *,
    nameid: str | None = MALLORY,
    key_info: Literal["x509", "keyvalue"] = "x509",
) -> str:
    """Re-sign with the attacker's own key, its certificate in ds:KeyInfo.

    Every NameID becomes `nameid` first (None keeps it). The signatures the
    input had are recreated (RSA-SHA256) with `attacker_keypair()`'s key:
    `key_info="x509"` embeds the attacker's certificate in X509Data;
    `"keyvalue"` embeds the bare public key as ds:KeyValue/RSAKeyValue
    (pysaml2's CVE-2021-21239 vector). Valid only under the attacker's key.
    """
    key_file, cert_file = attacker_keypair()
    cert_pem = Path(cert_file).read_text()
    root = parse_xml(xml)
    sign_response, sign_assertion = _signed_flags(root)

    def edit(tree: Any) -> None:
        if nameid is not None:
            for element in tree.iterfind(".//saml:Subject/saml:NameID", NS):
                element.text = nameid

    def template(signature: Any, _target: Any) -> None:
        if key_info == "keyvalue":
            info = signature.find("ds:KeyInfo", NS)
            for child in list(info):
                info.remove(child)
            etree.SubElement(info, DS + "KeyValue")

    return idp.resign(
        xml,
        edit,
        key_file=key_file,
        cert_pem=cert_pem,
        template_edit=template,
        sign_response=sign_response,
        sign_assertion=sign_assertion,
    )


def hmac_signature(xml: str, idp: TestIdP, key: bytes | None = None) -> str:
    """Re-sign every signature with HMAC-SHA256 (CVE-2021-21239 style).

    SignatureMethod is `xmldsig-more#hmac-sha256`, computed by the xmlsec1
    CLI (`--hmackey`) with `key`, by default the IdP certificate's PEM
    bytes (public knowledge: the classic key-confusion forgery); KeyInfo
    still carries the IdP certificate. Digests are SHA-256 and valid; the
    HMAC verifies with `key` as an HMAC key.
    """
    secret = key if key is not None else idp.cert_pem.encode()
    root = parse_xml(xml)
    sign_response, sign_assertion = _signed_flags(root)
    for signature in root.findall(".//ds:Signature", NS):
        signature.getparent().remove(signature)
    targets: list[str] = []
    if sign_assertion:
        targets.extend(a.get("ID") for a in root.findall("saml:Assertion", NS))
    if sign_response:
        targets.append(root.get("ID"))
    with tempfile.TemporaryDirectory(prefix="saml-hmac-") as directory:
        key_path = Path(directory) / "hmac.key"
        key_path.write_bytes(secret)
        for target_id in targets:
            target = root if root.get("ID") == target_id else None
            if target is None:
                target = root.find(f"saml:Assertion[@ID='{target_id}']", NS)
            template = parse_xml(
                str(
                    pre_signature_part(
                        target_id,
                        public_key=idp.cert_b64,
                        sign_alg=HMAC_SHA256,
                        digest_alg=DIGEST_SHA256,
                    )
                )
            )
            issuer = target.find("saml:Issuer", NS)
            position = 0 if issuer is None else list(target).index(issuer) + 1
            target.insert(position, template)
            namespace, local = target.tag[1:].split("}")
            source = Path(directory) / "in.xml"
            output = Path(directory) / "out.xml"
            source.write_text(to_xml(root))
            subprocess.run(  # noqa: S603 - fixed argv, own temp files
                [
                    idp.xmlsec1,
                    "--sign",
                    "--hmackey",
                    str(key_path),
                    "--id-attr:ID",
                    f"{namespace}:{local}",
                    "--node-id",
                    target_id,
                    "--output",
                    str(output),
                    str(source),
                ],
                check=True,
                capture_output=True,
            )
            root = parse_xml(output.read_bytes())
    return to_xml(root)


def sha1_signature(
    xml: str,
    idp: TestIdP,
    *,
    sign_alg: str = SIG_RSA_SHA1,
    digest_alg: str = DIGEST_SHA1,
) -> str:
    """Re-sign with pysaml2's defaults (rsa-sha1, sha1) by the IdP's key.

    Pass `digest_alg=DIGEST_SHA256` (or `sign_alg=SIG_RSA_SHA256`) to make
    only one of the two deprecated. The signatures the input had are
    recreated; cryptographically valid under the configured certificate.
    """
    sign_response, sign_assertion = _signed_flags(parse_xml(xml))
    return idp.resign(
        xml,
        sign_alg=sign_alg,
        digest_alg=digest_alg,
        sign_response=sign_response,
        sign_assertion=sign_assertion,
    )


def two_assertions(
    xml: str, idp: TestIdP | None = None, *, evil_first: bool = False
) -> str:
    """A Response with two Assertions: the original and an evil clone.

    The clone (NameID -> MALLORY, fresh ID) follows the original, or
    precedes it with `evil_first`. With `idp` the document is re-signed:
    both Assertions and the Response carry valid signatures by the IdP
    (as the input's flags say), so only a structure check can refuse it.
    Without, the clone is unsigned and a Response signature breaks.
    """
    root = parse_xml(xml)
    assertion = _assertion(root)
    evil = _evil_clone(assertion, _nameid_text(root), "assertion")
    if evil_first:
        assertion.addprevious(evil)
    else:
        assertion.addnext(evil)
    if idp is None:
        return to_xml(root)
    sign_response, sign_assertion = _signed_flags(parse_xml(xml))
    return idp.resign(
        to_xml(root), sign_response=sign_response, sign_assertion=sign_assertion
    )


# --------------------------------------------------------------------------
# DTDs (SSO-S4): deliberately DTD-laden documents, well-formed otherwise


def prepend_doctype_file_entity(xml: str, path: str = "/etc/passwd") -> str:
    """Declare `<!ENTITY xxe SYSTEM "file://<path>">`; NameID text `&xxe;`."""
    root = parse_xml(xml)
    for nameid in root.iterfind(".//saml:Subject/saml:NameID", NS):
        nameid.text = "__xxe__"
    text = to_xml(root).replace("__xxe__", "&xxe;")
    doctype = (
        f'<!DOCTYPE {_root_qname(xml)} [\n<!ENTITY xxe SYSTEM "file://{path}">\n]>'
    )
    return _with_doctype(text, doctype)


def billion_laughs(xml: str, width: int = 10, depth: int = 10) -> str:
    """Billion laughs: `depth` nested entities of `width` references each.

    The NameID text is a reference to the outermost entity.

    The default 10x10 expands to 10**9 "lol"s (about 3 GB) if resolved.
    """
    lines = ['<!ENTITY lol0 "lol">']
    for level in range(1, depth):
        body = f"&lol{level - 1};" * width
        lines.append(f'<!ENTITY lol{level} "{body}">')
    root = parse_xml(xml)
    for nameid in root.iterfind(".//saml:Subject/saml:NameID", NS):
        nameid.text = "__lol__"
    text = to_xml(root).replace("__lol__", f"&lol{depth - 1};")
    doctype = f"<!DOCTYPE {_root_qname(xml)} [\n" + "\n".join(lines) + "\n]>"
    return _with_doctype(text, doctype)


def external_dtd(xml: str, url: str, *, parameter_entity: bool = False) -> str:
    """Reference an external DTD at `url` (e.g. a loopback listener).

    Default: `<!DOCTYPE root SYSTEM "url">`. With `parameter_entity`:
    `<!DOCTYPE root [<!ENTITY % ext SYSTEM "url"> %ext;]>`. A parser that
    loads DTDs connects to `url`.
    """
    name = _root_qname(xml)
    if parameter_entity:
        doctype = f'<!DOCTYPE {name} [\n<!ENTITY % ext SYSTEM "{url}">\n%ext;\n]>'
    else:
        doctype = f'<!DOCTYPE {name} SYSTEM "{url}">'
    return _with_doctype(xml, doctype)


# --------------------------------------------------------------------------
# Redirect-binding URL tampering (SSO-F7)


def redirect_with_param(url: str, name: str, value: str) -> str:
    """Replace (or add) one query parameter, keeping the others' raw bytes.

    `value` is percent-encoded with `quote(safe="")`. Use it to change
    RelayState or SigAlg after signing.
    """
    parts = urlsplit(url)
    items = parts.query.split("&") if parts.query else []
    encoded = f"{name}={quote(value, safe='')}"
    replaced = False
    out = []
    for item in items:
        if item.split("=", 1)[0] == name:
            out.append(encoded)
            replaced = True
        else:
            out.append(item)
    if not replaced:
        out.append(encoded)
    return urlunsplit(parts._replace(query="&".join(out)))


def redirect_without_param(url: str, *names: str) -> str:
    """Drop query parameters (e.g. "Signature", "SigAlg") from a URL."""
    parts = urlsplit(url)
    items = [
        item
        for item in (parts.query.split("&") if parts.query else [])
        if item.split("=", 1)[0] not in names
    ]
    return urlunsplit(parts._replace(query="&".join(items)))
