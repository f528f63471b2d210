"""An independent SAML 2.0 identity provider for tests (specs/sso.md §4).

`TestIdP` wraps pysaml2's `Server`, which signs and encrypts through the
`xmlsec1` command-line tool from Debian's `xmlsec1` package. Nothing here
shares code with the portal or with python3-saml, so a bug in either cannot
hide itself in the test inputs.

Conventions that every helper follows:

* Messages are returned as XML text without an XML declaration; `post_form`
  turns a Response into the base64 value of the `SAMLResponse` form field.
* Signatures are always RSA-SHA256 with SHA-256 digests (pysaml2 defaults to
  RSA-SHA1), exclusive C14N, the enveloped-signature transform, one
  Reference to the parent element's ID, and the signer's certificate in
  `ds:KeyInfo`. The Signature is the element right after the signed
  element's `Issuer`, as the SAML schema requires.
* The Assertion is signed before the Response, so the Response signature
  covers the signed (or encrypted) Assertion.
* Attribute names arrive exactly as given: pysaml2's attribute converters,
  which turn friendly names such as `email` into OIDs, are bypassed.
* A `TestIdP` is not thread-safe; `idp_server` serialises access to it.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, saml, samlp
from saml2.assertion import Policy
from saml2.authn_context import PASSWORDPROTECTEDTRANSPORT
from saml2.config import IdPConfig
from saml2.response import IncorrectlySigned as IncorrectlySigned  # re-export
from saml2.s_utils import do_ava, factory
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.server import Server
from saml2.sigver import (
    RSA_1_5,
    RSA_OAEP_MGF1P,
    TRIPLE_DES_CBC,
    pre_encryption_part,
    pre_signature_part,
)
from saml2.xmldsig import (
    DIGEST_SHA256,
    SIG_RSA_SHA1,
    SIG_RSA_SHA256,
    SIG_RSA_SHA384,
    SIG_RSA_SHA512,
)

IDP_ID = "https://idp.test/metadata"
IDP = "https://idp.test"
PPT = PASSWORDPROTECTEDTRANSPORT

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xenc": "http://www.w3.org/2001/04/xmlenc#",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
SAMLP = "{" + NS["samlp"] + "}"
SAML = "{" + NS["saml"] + "}"
DS = "{" + NS["ds"] + "}"
XENC = "{" + NS["xenc"] + "}"
MD = "{" + NS["md"] + "}"

AES256_GCM = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
AES128_CBC = "http://www.w3.org/2001/04/xmlenc#aes128-cbc"
AES256_CBC = "http://www.w3.org/2001/04/xmlenc#aes256-cbc"
STATUS_SUCCESS = samlp.STATUS_SUCCESS
STATUS_RESPONDER = samlp.STATUS_RESPONDER
STATUS_AUTHN_FAILED = samlp.STATUS_AUTHN_FAILED

# encrypt= value -> (content algorithm, key transport, xmlsec1 session key).
# Debian's xmlsec1 1.2.x has no xmlenc11#rsa-oaep, so OAEP is rsa-oaep-mgf1p.
EncryptAlg = Literal["gcm", "gcm-rsa15", "tripledes", "aes256-cbc", "aes128-cbc-rsa15"]
ENCRYPTION: dict[str, tuple[str, str, str]] = {
    "gcm": (AES256_GCM, RSA_OAEP_MGF1P, "aes-256"),
    "gcm-rsa15": (AES256_GCM, RSA_1_5, "aes-256"),
    "tripledes": (TRIPLE_DES_CBC, RSA_OAEP_MGF1P, "des-192"),  # pysaml2's default
    "aes256-cbc": (AES256_CBC, RSA_OAEP_MGF1P, "aes-256"),
    "aes128-cbc-rsa15": (AES128_CBC, RSA_1_5, "aes-128"),
}

_HASHES: dict[str, hashes.HashAlgorithm] = {
    SIG_RSA_SHA1: hashes.SHA1(),  # noqa: S303 - checks weak input
    SIG_RSA_SHA256: hashes.SHA256(),
    SIG_RSA_SHA384: hashes.SHA384(),
    SIG_RSA_SHA512: hashes.SHA512(),
}
_ATTR_SEP = "\x1f"  # keeps repeated attribute names apart inside pysaml2


class _Default(enum.Enum):
    token = 0


DEFAULT = _Default.token
"""Sentinel for `response()` overrides: keep what the IdP would send."""

Edit = Callable[[Any], None]  # receives an lxml element


# --------------------------------------------------------------------------
# Keys and small XML helpers


_KEYPAIRS: dict[tuple[str, int, str, str], tuple[bytes, bytes]] = {}


def make_keypair(
    tmpdir: str | Path,
    cn: str,
    *,
    bits: int = 2048,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[str, str]:
    """Write an RSA key and a self-signed certificate; return their paths.

    The PEM files are `<tmpdir>/<cn>.key.pem` (PKCS#8, unencrypted) and
    `<tmpdir>/<cn>.cert.pem`, `cn` with characters outside [A-Za-z0-9_.-]
    replaced by `_` (plus a hash suffix when a validity is given). The pair
    is cached per process by (cn, bits, validity), so the same `cn` always
    yields the same key and certificate (stable fingerprints across tests)
    and RSA generation runs once per (cn, bits); a custom validity reuses
    that key under a new certificate. The default validity is from one day
    ago to ten years ahead; pass aware datetimes to make an expired or
    not-yet-valid certificate. Different `cn`s give different keys.
    """
    now = dt.datetime.now(dt.UTC)
    start = not_before or now - dt.timedelta(days=1)
    end = not_after or now + dt.timedelta(days=3650)
    cache_key = (
        cn,
        bits,
        "" if not_before is None else start.isoformat(),
        "" if not_after is None else end.isoformat(),
    )
    if cache_key not in _KEYPAIRS:
        key_cache = (cn, bits, "", "")
        if key_cache in _KEYPAIRS:
            key = serialization.load_pem_private_key(
                _KEYPAIRS[key_cache][0], password=None
            )
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        assert isinstance(key, rsa.RSAPrivateKey)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .sign(key, hashes.SHA256())
        )
        _KEYPAIRS[cache_key] = (
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert.public_bytes(serialization.Encoding.PEM),
        )
    key_pem, cert_pem = _KEYPAIRS[cache_key]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", cn)
    if cache_key[2] or cache_key[3]:
        slug += "-" + hashlib.sha256(repr(cache_key).encode()).hexdigest()[:12]
    directory = Path(tmpdir)
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{slug}.key.pem"
    cert_path = directory / f"{slug}.cert.pem"
    key_path.write_bytes(key_pem)
    cert_path.write_bytes(cert_pem)
    return str(key_path), str(cert_path)


def cert_b64(cert_pem: str) -> str:
    """The base64 body of a PEM certificate, on one line (as in metadata)."""
    body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----", "", cert_pem)
    return "".join(body.split())


def cert_pem_from_b64(b64: str) -> str:
    """A PEM certificate from a base64 body (inverse of `cert_b64`)."""
    body = "".join(b64.split())
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(lines)
        + "\n-----END CERTIFICATE-----\n"
    )


def cert_fingerprint(cert_pem: str) -> str:
    """SHA-256 fingerprint of a PEM certificate, upper-case hex with colons."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
)


def parse_xml(xml: str | bytes) -> Any:
    """Parse trusted test XML (entities unresolved, no network, no DTD)."""
    data = xml.encode() if isinstance(xml, str) else xml
    return etree.fromstring(data, _PARSER)  # noqa: S320 - own test data


def to_xml(root: Any) -> str:
    """Serialise an element (no XML declaration), as every helper returns."""
    return etree.tostring(root, encoding="unicode")


def post_form(xml: str) -> str:
    """The base64 value of an HTTP-POST `SAMLResponse`/`SAMLRequest` field."""
    return base64.b64encode(xml.encode()).decode("ascii")


def response_ids(xml: str) -> tuple[str, str | None]:
    """(Response ID, first plaintext Assertion ID or None) of a Response."""
    root = parse_xml(xml)
    assertion = root.find("saml:Assertion", NS)
    return root.get("ID"), None if assertion is None else assertion.get("ID")


def saml_time(value: dt.datetime) -> str:
    """A SAML timestamp (UTC, whole seconds, `Z`) from an aware datetime."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _deflate_b64(xml: str) -> str:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(xml.encode()) + compressor.flush()
    return base64.b64encode(data).decode("ascii")


def inflate_b64(value: str) -> str:
    """Decode a Redirect-binding message parameter (base64 + raw DEFLATE)."""
    return zlib.decompress(base64.b64decode(value), -15).decode()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _query(url: str) -> dict[str, str]:
    pairs = parse_qs(urlsplit(url).query, keep_blank_values=True)
    return {key: values[0] for key, values in pairs.items()}


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def verify_redirect_query(url: str, certs_pem: Sequence[str]) -> bool:
    """Check a Redirect-binding signature over the raw query string.

    Rebuilds the signed octets from the query exactly as received
    (`SAMLRequest`/`SAMLResponse`, `RelayState`, `SigAlg`, in that order and
    with their original percent-encoding) and verifies `Signature` against
    each PEM certificate. False when unsigned, malformed or unverified.
    """
    parts = urlsplit(url).query.split("&")

    def raw(name: str) -> str | None:
        return next((p for p in parts if p.startswith(name + "=")), None)

    message = raw("SAMLRequest") or raw("SAMLResponse")
    sign_alg, signature = raw("SigAlg"), raw("Signature")
    if message is None or sign_alg is None or signature is None:
        return False
    relay = raw("RelayState")
    signed = "&".join(p for p in (message, relay, sign_alg) if p is not None)
    algorithm = _HASHES.get(unquote(sign_alg.split("=", 1)[1]))
    if algorithm is None:
        return False
    try:
        value = base64.b64decode(unquote(signature.split("=", 1)[1]))
    except ValueError:
        return False
    for pem in certs_pem:
        public_key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        try:
            public_key.verify(value, signed.encode(), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            continue
        return True
    return False


# --------------------------------------------------------------------------
# pysaml2 plumbing


class _ExactNames:
    """pysaml2 attribute converter that keeps every Name verbatim.

    Keys arrive as "<index>\\x1f<name>" so that repeated names survive the
    dict that pysaml2 passes around.
    """

    def __init__(self) -> None:
        self.name_format = NAME_FORMAT_URI

    def to_(self, attrvals: Mapping[str, Any]) -> list[Any]:
        attributes = []
        for key, values in attrvals.items():
            attributes.append(
                factory(
                    saml.Attribute,
                    name=key.split(_ATTR_SEP, 1)[1],
                    # saml.Attribute defaults to URI; None leaves it out.
                    name_format=self.name_format or None,
                    attribute_value=do_ava(list(values)),
                )
            )
        return attributes


class _ReleaseAll(Policy):  # type: ignore[misc]
    """Release every attribute unfiltered, in the requested NameFormat."""

    def __init__(self, mds: Any, name_form: str) -> None:
        super().__init__(
            restrictions={"default": {"lifetime": {"minutes": 5}}}, mds=mds
        )
        self._name_form = name_form

    def restrict(self, ava: Any, sp_entity_id: str, metadata: Any = None) -> Any:
        return dict(ava)

    def get_name_form(self, sp_entity_id: str) -> str:
        return self._name_form


@dataclass(frozen=True)
class AuthnRequestInfo:
    """A verified AuthnRequest, as `TestIdP.parse_authn_request_url` saw it."""

    id: str
    sp_id: str
    acs: str
    binding: str
    relay_state: str | None
    name_id_format: str | None
    force_authn: bool
    xml: str


@dataclass(frozen=True)
class LogoutRequestInfo:
    """A verified LogoutRequest from an SP."""

    id: str
    issuer: str
    destination: str | None
    name_id: str
    name_id_format: str | None
    name_qualifier: str | None
    sp_name_qualifier: str | None
    session_indexes: list[str]
    relay_state: str | None
    xml: str


@dataclass(frozen=True)
class LogoutResponseInfo:
    """A LogoutResponse from an SP, with the outcome of its signature check."""

    id: str
    issuer: str | None
    in_response_to: str | None
    destination: str | None
    status: str | None
    relay_state: str | None
    signed: bool
    xml: str


class TestIdP:
    """pysaml2 IdP that mints, signs and encrypts SAML messages for tests.

    `sp_metadata` is the SP metadata XML exactly as the portal serves it (or
    a list, for an IdP shared by tenants, SSO-S15). `key` and `cert` are PEM
    paths (see `make_keypair`). `base_url` is where the IdP says it lives:
    its SSO endpoint is `<base_url>/sso` and its SLO endpoint
    `<base_url>/slo` (Redirect binding), which AuthnRequest and
    LogoutRequest Destinations must match.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        sp_metadata: str | Sequence[str],
        key: str,
        cert: str,
        entity_id: str = IDP_ID,
        base_url: str = IDP,
    ) -> None:
        xmlsec1 = shutil.which("xmlsec1")
        if xmlsec1 is None:
            raise RuntimeError(
                "the xmlsec1 command is missing: apt-get install xmlsec1 "
                "(SAML tests never skip)"
            )
        self.xmlsec1 = xmlsec1
        self.entity_id = entity_id
        self.key_file = key
        self.cert_file = cert
        self.cert_pem = Path(cert).read_text()
        self.cert_b64 = cert_b64(self.cert_pem)
        self._sp_metadata = (
            [sp_metadata] if isinstance(sp_metadata, str) else list(sp_metadata)
        )
        self.base_url = base_url.rstrip("/")
        self.last_logout_request_id: str | None = None
        self.events: list[dict[str, Any]] = []  # appended by idp_server
        self._names = _ExactNames()
        self.server = self._build_server()

    # -- configuration ----------------------------------------------------

    @property
    def sso_url(self) -> str:
        return self.base_url + "/sso"

    @property
    def slo_url(self) -> str:
        return self.base_url + "/slo"

    def _build_server(self) -> Any:
        cfg = IdPConfig()
        cfg.load(
            {
                "entityid": self.entity_id,
                "key_file": self.key_file,
                "cert_file": self.cert_file,
                "xmlsec_binary": self.xmlsec1,
                "delete_tmpfiles": True,
                "metadata": {"inline": list(self._sp_metadata)},
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [
                                (self.sso_url, BINDING_HTTP_REDIRECT)
                            ],
                            "single_logout_service": [
                                (self.slo_url, BINDING_HTTP_REDIRECT)
                            ],
                        },
                        "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
                        "want_authn_requests_signed": True,
                        "policy": {
                            "default": {
                                "lifetime": {"minutes": 5},
                                "name_form": NAME_FORMAT_URI,
                            }
                        },
                    }
                },
            }
        )
        server = Server(config=cfg)
        # First match wins in from_local(); the stock converters stay behind
        # it for parsing.
        server.config.attribute_converters = [
            self._names,
            *server.config.attribute_converters,
        ]
        return server

    def rebase(self, base_url: str) -> None:
        """Move the SSO/SLO endpoints to `base_url` (entityID unchanged)."""
        self.base_url = base_url.rstrip("/")
        self.server = self._build_server()

    def add_sp_metadata(self, sp_metadata: str) -> None:
        """Trust one more SP, or replace a trusted SP's metadata.

        Metadata with an entityID already loaded replaces the old document
        (e.g. after the SP starts publishing an encryption key); any other
        is added (e.g. `other_tenant`'s, for an IdP shared by tenants).
        """
        entity_id = parse_xml(sp_metadata).get("entityID")
        self._sp_metadata = [
            document
            for document in self._sp_metadata
            if parse_xml(document).get("entityID") != entity_id
        ]
        self._sp_metadata.append(sp_metadata)
        self.server = self._build_server()

    def metadata(
        self,
        *,
        extra_certs_pem: Sequence[str] = (),
        include_slo: bool = True,
        sso_bindings: Sequence[str] = (BINDING_HTTP_REDIRECT,),
    ) -> str:
        """This IdP's metadata XML, as an administrator would upload it.

        EntityDescriptor(entityID) / IDPSSODescriptor with
        `WantAuthnRequestsSigned="true"`, one signing KeyDescriptor per
        certificate (own first, then `extra_certs_pem`), the SLO endpoint
        (Redirect; omitted with `include_slo=False`), the emailAddress
        NameIDFormat and one SSO endpoint per binding in `sso_bindings` (all
        at `<base_url>/sso`; only Redirect is actually served).
        """
        root = etree.Element(MD + "EntityDescriptor", nsmap={"md": NS["md"]})
        root.set("entityID", self.entity_id)
        idp = etree.SubElement(root, MD + "IDPSSODescriptor")
        idp.set("WantAuthnRequestsSigned", "true")
        idp.set("protocolSupportEnumeration", NS["samlp"])
        for pem in [self.cert_pem, *extra_certs_pem]:
            descriptor = etree.SubElement(idp, MD + "KeyDescriptor", use="signing")
            key_info = etree.SubElement(
                descriptor, DS + "KeyInfo", nsmap={"ds": NS["ds"]}
            )
            data = etree.SubElement(key_info, DS + "X509Data")
            etree.SubElement(data, DS + "X509Certificate").text = cert_b64(pem)
        if include_slo:
            etree.SubElement(
                idp,
                MD + "SingleLogoutService",
                Binding=BINDING_HTTP_REDIRECT,
                Location=self.slo_url,
            )
        etree.SubElement(idp, MD + "NameIDFormat").text = NAMEID_FORMAT_EMAILADDRESS
        for binding in sso_bindings:
            etree.SubElement(
                idp, MD + "SingleSignOnService", Binding=binding, Location=self.sso_url
            )
        return to_xml(root)

    # -- signing and encryption -------------------------------------------

    def _sign_element(
        self,
        root: Any,
        target: Any,
        *,
        sign_alg: str,
        digest_alg: str,
        key_file: str | None,
        cert_pem: str | None,
        template_edit: Callable[[Any, Any], None] | None,
    ) -> Any:
        """Insert a signature template into `target`, sign, return new root."""
        target_id = target.get("ID")
        if not target_id:
            raise ValueError(f"{target.tag} has no ID to sign")
        template = parse_xml(
            str(
                pre_signature_part(
                    target_id,
                    public_key=cert_b64(cert_pem) if cert_pem else self.cert_b64,
                    sign_alg=sign_alg,
                    digest_alg=digest_alg,
                )
            )
        )
        issuer = target.find("saml:Issuer", NS)
        position = 0 if issuer is None else list(target).index(issuer) + 1
        target.insert(position, template)
        if template_edit is not None:
            template_edit(template, target)
        namespace, local = target.tag[1:].split("}")
        signed = self.server.sec.sign_statement(
            to_xml(root),
            f"{namespace}:{local}",
            key_file=key_file or self.key_file,
            node_id=target_id,
        )
        return parse_xml(signed)

    def sign_tree(
        self,
        root: Any,
        *,
        sign_response: bool = True,
        sign_assertion: bool = True,
        encrypt: EncryptAlg | None = None,
        sp_id: str | None = None,
        sp_enc_cert_pem: str | None = None,
        sign_alg: str = SIG_RSA_SHA256,
        digest_alg: str = DIGEST_SHA256,
        key_file: str | None = None,
        cert_pem: str | None = None,
        template_edit: Callable[[Any, Any], None] | None = None,
    ) -> str:
        """Sign (and encrypt) an unsigned message tree; return the XML.

        Order: every `saml:Assertion` child of the root is signed (if
        `sign_assertion`), then the first Assertion is encrypted (if
        `encrypt`), then the root is signed (if `sign_response`). The root
        may be any ID-carrying SAML message (Response, LogoutRequest, ...).
        `key_file`/`cert_pem` sign with another key and embed its
        certificate (attacks); `template_edit(signature, signed_element)`
        may alter each ds:Signature template before xmlsec1 fills it in.
        """
        options: dict[str, Any] = {
            "sign_alg": sign_alg,
            "digest_alg": digest_alg,
            "key_file": key_file,
            "cert_pem": cert_pem,
            "template_edit": template_edit,
        }
        if sign_assertion:
            ids = [a.get("ID") for a in root.findall("saml:Assertion", NS)]
            for assertion_id in ids:
                target = root.find(f"saml:Assertion[@ID='{assertion_id}']", NS)
                root = self._sign_element(root, target, **options)
        if encrypt is not None:
            root = self._encrypt(root, encrypt, sp_id, sp_enc_cert_pem)
        if sign_response:
            root = self._sign_element(root, root, **options)
        return to_xml(root)

    def _encryption_cert(self, sp_id: str | None, cert_pem: str | None) -> str:
        if cert_pem:
            return cert_pem
        if sp_id is None:
            raise ValueError("encryption needs sp_id or sp_enc_cert_pem")
        certs = self.server.metadata.certs(sp_id, "any", "encryption")
        if not certs:
            certs = self.server.metadata.certs(sp_id, "any", "signing")
        if not certs:
            raise ValueError(f"no certificate for {sp_id} in its metadata")
        return cert_pem_from_b64(certs[0][1])

    def _encrypt(
        self, root: Any, algorithm: str, sp_id: str | None, cert_pem: str | None
    ) -> Any:
        msg_enc, key_enc, session_key = ENCRYPTION[algorithm]
        pem = self._encryption_cert(sp_id, cert_pem)
        assertion = root.find("saml:Assertion", NS)
        if assertion is None:
            raise ValueError("no Assertion to encrypt")
        # Declare every namespace on the Assertion itself, so the plaintext
        # stands alone once decrypted (digests are unaffected: exc-c14n).
        standalone = parse_xml(etree.tostring(assertion))
        wrapper = etree.Element(SAML + "EncryptedAssertion")
        wrapper.append(standalone)
        root.replace(assertion, wrapper)
        template = pre_encryption_part(
            msg_enc=msg_enc, key_enc=key_enc, encrypt_cert=cert_b64(pem)
        )
        xpath = "".join(
            f"/*[local-name()='{name}']"
            for name in (etree.QName(root).localname, "EncryptedAssertion", "Assertion")
        )
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as cert_file:
            cert_file.write(pem)
            cert_file.flush()
            encrypted = self.server.sec.encrypt_assertion(
                to_xml(root),
                cert_file.name,
                str(template),
                key_type=session_key,
                node_xpath=xpath,
            )
        return parse_xml(encrypted)

    def resign(
        self,
        xml: str,
        edit: Edit | None = None,
        *,
        sign_response: bool = True,
        sign_assertion: bool = True,
        sign_alg: str = SIG_RSA_SHA256,
        digest_alg: str = DIGEST_SHA256,
        key_file: str | None = None,
        cert_pem: str | None = None,
        template_edit: Callable[[Any, Any], None] | None = None,
    ) -> str:
        """Strip every ds:Signature, apply `edit(root)`, sign again.

        The bad value then carries a valid signature by this IdP's key (or
        `key_file`, embedding `cert_pem`). Signs each plaintext Assertion
        child of the root, then the root, per the flags; see `sign_tree`.
        Refuses encrypted input (use `response(edit=...)` instead, which
        edits before encrypting).
        """
        root = parse_xml(xml)
        if root.find(".//saml:EncryptedAssertion", NS) is not None:
            raise ValueError("resign() cannot edit an encrypted Assertion")
        for signature in root.findall(".//ds:Signature", NS):
            signature.getparent().remove(signature)
        if edit is not None:
            edit(root)
        return self.sign_tree(
            root,
            sign_response=sign_response,
            sign_assertion=sign_assertion,
            sign_alg=sign_alg,
            digest_alg=digest_alg,
            key_file=key_file,
            cert_pem=cert_pem,
            template_edit=template_edit,
        )

    # -- SSO --------------------------------------------------------------

    def response(
        self,
        *,
        sp_id: str,
        acs: str,
        email: str,
        attrs: Mapping[str, Sequence[str]]
        | Sequence[tuple[str, Sequence[str]]]
        | None = None,
        in_response_to: str | None = None,
        sign_response: bool = True,
        sign_assertion: bool = True,
        encrypt: EncryptAlg | None = None,
        sp_enc_cert_pem: str | None = None,
        name_id: str | Any | None = None,
        name_id_format: str | None = NAMEID_FORMAT_EMAILADDRESS,
        session_index: str | None = None,
        issuer: str | None = None,
        now: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
        not_before: dt.datetime | None = None,
        not_on_or_after: dt.datetime | None = None,
        subject_not_on_or_after: dt.datetime | None = None,
        session_not_on_or_after: dt.datetime | None = None,
        destination: str | None | _Default = DEFAULT,
        recipient: str | None | _Default = DEFAULT,
        audience: str | Sequence[str] | None | _Default = DEFAULT,
        name_format: str | None = NAME_FORMAT_URI,
        authn_context: str = PPT,
        edit: Edit | None = None,
        sign_alg: str = SIG_RSA_SHA256,
        digest_alg: str = DIGEST_SHA256,
    ) -> str:
        """A signed SAML Response for `email`, as XML text (not encoded).

        pysaml2 builds the unsigned Response (Issuer, Status Success, one
        Assertion with Subject/NameID, bearer SubjectConfirmation with
        Recipient=`acs`, Conditions with Audience=`sp_id`, an AuthnStatement
        with a SessionIndex and `authn_context`, an AttributeStatement);
        the overrides below are applied; `edit(root)` may change anything
        else; then `sign_tree` signs the Assertion, encrypts it, and signs
        the Response.

        * `attrs`: {name: [values]} or [(name, [values]), ...] (the list form
          repeats a name as separate Attribute elements). Names are sent
          verbatim with NameFormat `name_format` (None omits it); values are
          xs:string. No attrs: no AttributeStatement.
        * NameID: `name_id` as a string (format `name_id_format`, None omits
          Format) or a ready `saml2.saml.NameID`; default: `email` as an
          emailAddress NameID.
        * `in_response_to`: sets Response and SubjectConfirmationData
          InResponseTo; None leaves both out (IdP-initiated).
        * Time: `now` (default: the real clock) is IssueInstant, AuthnInstant
          and Conditions NotBefore; Conditions and SubjectConfirmationData
          NotOnOrAfter are `now + lifetime`. `not_before`, `not_on_or_after`,
          `subject_not_on_or_after` override each; `session_not_on_or_after`
          adds SessionNotOnOrAfter to the AuthnStatement.
        * `session_index`: the AuthnStatement SessionIndex (default random).
        * `issuer`: both Issuers (Response and Assertion).
        * `destination`, `recipient`: DEFAULT is `acs`; None removes the
          attribute; a string replaces it (Recipient on every
          SubjectConfirmationData). `audience`: DEFAULT is `sp_id`; None
          removes the AudienceRestriction; a string or list replaces the
          Audience elements.
        * `encrypt`: None (plaintext) or a key of ENCRYPTION: "gcm"
          (aes256-gcm + rsa-oaep-mgf1p, what the portal accepts),
          "gcm-rsa15", "tripledes" (pysaml2's default: tripledes-cbc +
          rsa-oaep-mgf1p), "aes256-cbc" (+ rsa-oaep-mgf1p),
          "aes128-cbc-rsa15". The key goes to `sp_enc_cert_pem`, else the
          SP metadata's encryption (or else signing) certificate.
        * `sign_alg`/`digest_alg`: keep the SHA-256 defaults except to make
          deliberately weak input.
        """
        if isinstance(name_id, str):
            subject = NameID(format=name_id_format, text=name_id)
        elif name_id is None:
            subject = NameID(format=name_id_format, text=email)
        else:
            subject = name_id
        pairs = list(attrs.items()) if isinstance(attrs, Mapping) else list(attrs or [])
        identity = {
            f"{i}{_ATTR_SEP}{name}": list(vals) for i, (name, vals) in enumerate(pairs)
        }
        self._names.name_format = name_format or ""
        unsigned = self.server.create_authn_response(
            identity=identity,
            in_response_to=in_response_to,
            destination=acs,
            sp_entity_id=sp_id,
            userid=email,
            name_id=subject,
            authn={"class_ref": authn_context},
            sign_response=False,
            sign_assertion=False,
            encrypt_assertion=False,
            release_policy=_ReleaseAll(self.server.metadata, name_format or ""),
        )
        if not isinstance(unsigned, samlp.Response):
            raise RuntimeError(f"pysaml2 refused to build a Response: {unsigned}")
        root = parse_xml(unsigned.to_string())
        self._apply_overrides(
            root,
            now=now or dt.datetime.now(dt.UTC),
            lifetime=lifetime,
            not_before=not_before,
            not_on_or_after=not_on_or_after,
            subject_not_on_or_after=subject_not_on_or_after,
            session_not_on_or_after=session_not_on_or_after,
            session_index=session_index,
            issuer=issuer,
            destination=destination,
            recipient=recipient,
            audience=audience,
        )
        if edit is not None:
            edit(root)
        return self.sign_tree(
            root,
            sign_response=sign_response,
            sign_assertion=sign_assertion,
            encrypt=encrypt,
            sp_id=sp_id,
            sp_enc_cert_pem=sp_enc_cert_pem,
            sign_alg=sign_alg,
            digest_alg=digest_alg,
        )

    @staticmethod
    def _apply_overrides(
        root: Any,
        *,
        now: dt.datetime,
        lifetime: dt.timedelta,
        not_before: dt.datetime | None,
        not_on_or_after: dt.datetime | None,
        subject_not_on_or_after: dt.datetime | None,
        session_not_on_or_after: dt.datetime | None,
        session_index: str | None,
        issuer: str | None,
        destination: str | None | _Default,
        recipient: str | None | _Default,
        audience: str | Sequence[str] | None | _Default,
    ) -> None:
        assertion = root.find("saml:Assertion", NS)
        root.set("IssueInstant", saml_time(now))
        assertion.set("IssueInstant", saml_time(now))
        conditions = assertion.find("saml:Conditions", NS)
        conditions.set("NotBefore", saml_time(not_before or now))
        conditions.set("NotOnOrAfter", saml_time(not_on_or_after or now + lifetime))
        for data in assertion.iterfind(".//saml:SubjectConfirmationData", NS):
            data.set(
                "NotOnOrAfter", saml_time(subject_not_on_or_after or now + lifetime)
            )
            if recipient is None:
                data.attrib.pop("Recipient", None)
            elif isinstance(recipient, str):
                data.set("Recipient", recipient)
        statement = assertion.find("saml:AuthnStatement", NS)
        statement.set("AuthnInstant", saml_time(now))
        if session_index is not None:
            statement.set("SessionIndex", session_index)
        if session_not_on_or_after is not None:
            statement.set("SessionNotOnOrAfter", saml_time(session_not_on_or_after))
        if issuer is not None:
            for element in (root, assertion):
                element.find("saml:Issuer", NS).text = issuer
        if destination is None:
            root.attrib.pop("Destination", None)
        elif isinstance(destination, str):
            root.set("Destination", destination)
        if audience is not DEFAULT:
            for restriction in conditions.findall("saml:AudienceRestriction", NS):
                conditions.remove(restriction)
            if audience is not None:
                restriction = etree.SubElement(conditions, SAML + "AudienceRestriction")
                values = [audience] if isinstance(audience, str) else list(audience)
                for value in values:
                    etree.SubElement(restriction, SAML + "Audience").text = value

    def error_response(
        self,
        *,
        sp_id: str,
        acs: str,
        in_response_to: str | None = None,
        status: str = STATUS_AUTHN_FAILED,
        message: str = "Authentication failed",
        sign_response: bool = True,
    ) -> str:
        """A signed Response without an Assertion (for `idp_status`).

        Top-level StatusCode Responder, second-level `status`, a
        StatusMessage, Destination `acs`. `sp_id` is accepted for symmetry
        with `response()` and unused (no Assertion, so no Audience).
        """
        unsigned = self.server.create_error_response(
            in_response_to, acs, (status, message), sign=False
        )
        root = parse_xml(unsigned.to_string())
        root.set("Destination", acs)
        return self.sign_tree(root, sign_response=sign_response, sign_assertion=False)

    def parse_authn_request_url(self, login_url: str) -> AuthnRequestInfo:
        """Verify and decode the SP's Redirect-binding AuthnRequest URL.

        pysaml2 checks the query signature (SigAlg, Signature, RelayState)
        against the SP's signing certificates from its metadata and raises
        (`IncorrectlySigned`, re-exported here, or `ValueError`) on a
        missing, wrong or tampered signature; it also requires the
        Destination to be this IdP's `<base_url>/sso` and the ACS URL to be
        one of the SP's metadata endpoints.
        """
        query = _query(login_url)
        if "SAMLRequest" not in query:
            raise ValueError("no SAMLRequest in the login URL")
        request = self.server.parse_authn_request(
            query["SAMLRequest"],
            BINDING_HTTP_REDIRECT,
            relay_state=query.get("RelayState"),
            sigalg=query.get("SigAlg"),
            signature=query.get("Signature"),
        )
        if request is None:
            raise ValueError("pysaml2 rejected the AuthnRequest")
        message = request.message
        args = self.server.response_args(message, [BINDING_HTTP_POST])
        policy = message.name_id_policy
        return AuthnRequestInfo(
            id=message.id,
            sp_id=args["sp_entity_id"],
            acs=args["destination"],
            binding=args["binding"],
            relay_state=query.get("RelayState"),
            name_id_format=None if policy is None else policy.format,
            force_authn=str(message.force_authn).lower() == "true",
            xml=_text(request.xmlstr),
        )

    def answer(
        self,
        login_url: str,
        *,
        email: str,
        attrs: Mapping[str, Sequence[str]]
        | Sequence[tuple[str, Sequence[str]]]
        | None = None,
        **kw: Any,
    ) -> tuple[str, str | None]:
        """Answer an SP-initiated login: (SAMLResponse base64, RelayState).

        Verifies the AuthnRequest (see `parse_authn_request_url`; raises on a
        bad or missing signature), then builds `response()` for the SP and
        ACS it names with InResponseTo = the request ID. `kw` goes to
        `response()` and may override sp_id, acs or in_response_to.
        """
        info = self.parse_authn_request_url(login_url)
        params: dict[str, Any] = {
            "sp_id": info.sp_id,
            "acs": info.acs,
            "in_response_to": info.id,
        }
        params.update(kw)
        xml = self.response(email=email, attrs=attrs, **params)
        return post_form(xml), info.relay_state

    # -- Redirect binding -------------------------------------------------

    def redirect_url(
        self,
        destination: str,
        typ: Literal["SAMLRequest", "SAMLResponse"],
        xml: str,
        *,
        relay_state: str | None = None,
        sign: bool = True,
        lowercase: bool = False,
        sign_alg: str = SIG_RSA_SHA256,
        key_file: str | None = None,
    ) -> str:
        """A Redirect-binding URL built here rather than by pysaml2.

        Each value is DEFLATEd/base64-encoded as needed and percent-encoded
        with `quote(safe="")`; with `lowercase` every escape is lower case
        (`%2f`, `%3d`: what Entra ID and ADFS send) and the signature is
        computed over exactly that string, so only a verifier that uses the
        raw query (validate_signature_from_qs) accepts it.
        """

        def enc(value: str) -> str:
            text = quote(value, safe="")
            return _lower_escapes(text) if lowercase else text

        parts = [f"{typ}={enc(_deflate_b64(xml))}"]
        if relay_state is not None:
            parts.append(f"RelayState={enc(relay_state)}")
        if sign:
            parts.append(f"SigAlg={enc(sign_alg)}")
            key = serialization.load_pem_private_key(
                Path(key_file or self.key_file).read_bytes(), password=None
            )
            assert isinstance(key, rsa.RSAPrivateKey)
            value = key.sign(
                "&".join(parts).encode(), padding.PKCS1v15(), _HASHES[sign_alg]
            )
            parts.append(f"Signature={enc(base64.b64encode(value).decode())}")
        glue = "&" if urlsplit(destination).query else "?"
        return destination + glue + "&".join(parts)

    def redirect_query_lowercase(
        self,
        *,
        destination: str,
        typ: Literal["SAMLRequest", "SAMLResponse"],
        xml: str,
        relay_state: str | None = None,
    ) -> str:
        """`redirect_url(..., lowercase=True)`: Entra/ADFS-style escapes."""
        return self.redirect_url(
            destination, typ, xml, relay_state=relay_state, lowercase=True
        )

    def _pysaml2_redirect(
        self,
        destination: str,
        xml: str,
        *,
        response: bool,
        relay_state: str | None,
        sign: bool,
        sign_alg: str,
    ) -> str:
        info = self.server.apply_binding(
            BINDING_HTTP_REDIRECT,
            xml,
            destination=destination,
            relay_state=relay_state or "",
            response=response,
            sign=sign,
            sigalg=sign_alg,
        )
        return dict(info["headers"])["Location"]

    # -- SLO --------------------------------------------------------------

    def logout_request(
        self,
        *,
        sp_sls_url: str,
        name_id: str | Any,
        session_index: str | Sequence[str] | None = None,
        binding: Literal["redirect", "post"] = "redirect",
        sign: bool = True,
        relay_state: str | None = None,
        name_id_format: str | None = NAMEID_FORMAT_EMAILADDRESS,
        lowercase_escapes: bool = False,
        edit: Edit | None = None,
        sign_alg: str = SIG_RSA_SHA256,
    ) -> str:
        """An IdP-initiated LogoutRequest to the SP's SLS.

        `name_id`: a string (with `name_id_format`) or a `NameID`.
        `session_index`: one value, several, or None (all sessions).
        Redirect: the full URL with SAMLRequest, RelayState (if given),
        SigAlg and Signature (rsa-sha256 over the query; pysaml2 encodes in
        upper case, `lowercase_escapes` switches to `redirect_url`); with
        `sign=False` no SigAlg/Signature. POST: the base64 SAMLRequest value,
        the XML carrying an enveloped signature (none with `sign=False`);
        RelayState then goes in its own form field. `edit(root)` may alter
        the XML before signing. The ID is kept in `last_logout_request_id`
        (the SP's LogoutResponse must answer it).
        """
        if isinstance(name_id, str):
            subject = NameID(format=name_id_format, text=name_id)
        else:
            subject = name_id
        if session_index is None:
            indexes = None
        elif isinstance(session_index, str):
            indexes = [session_index]
        else:
            indexes = list(session_index)
        request_id, request = self.server.create_logout_request(
            sp_sls_url, "", name_id=subject, session_indexes=indexes, sign=False
        )
        self.last_logout_request_id = request_id
        root = parse_xml(request.to_string())
        if edit is not None:
            edit(root)
        if binding == "post":
            if sign:
                return post_form(
                    self.sign_tree(root, sign_assertion=False, sign_alg=sign_alg)
                )
            return post_form(to_xml(root))
        xml = to_xml(root)
        if lowercase_escapes:
            return self.redirect_url(
                sp_sls_url,
                "SAMLRequest",
                xml,
                relay_state=relay_state,
                sign=sign,
                lowercase=True,
                sign_alg=sign_alg,
            )
        return self._pysaml2_redirect(
            sp_sls_url,
            xml,
            response=False,
            relay_state=relay_state,
            sign=sign,
            sign_alg=sign_alg,
        )

    def _verified_logout_request(self, url: str) -> tuple[Any, LogoutRequestInfo]:
        query = _query(url)
        if "SAMLRequest" not in query:
            raise ValueError("no SAMLRequest in the logout URL")
        request = self.server.parse_logout_request(
            query["SAMLRequest"],
            BINDING_HTTP_REDIRECT,
            relay_state=query.get("RelayState"),
            sigalg=query.get("SigAlg"),
            signature=query.get("Signature"),
        )
        if request is None:
            raise ValueError("pysaml2 rejected the LogoutRequest")
        message = request.message
        name_id = message.name_id
        info = LogoutRequestInfo(
            id=message.id,
            issuer=message.issuer.text.strip(),
            destination=message.destination,
            name_id=name_id.text,
            name_id_format=name_id.format,
            name_qualifier=name_id.name_qualifier,
            sp_name_qualifier=name_id.sp_name_qualifier,
            session_indexes=[index.text for index in message.session_index],
            relay_state=query.get("RelayState"),
            xml=_text(request.xmlstr),
        )
        return message, info

    def parse_logout_request(self, url: str) -> LogoutRequestInfo:
        """Verify and decode an SP's Redirect-binding LogoutRequest URL.

        pysaml2 requires a valid query signature by one of the SP's metadata
        signing certificates and Destination = `<base_url>/slo`; it raises
        otherwise (IncorrectlySigned, OtherError) and so does this.
        """
        return self._verified_logout_request(url)[1]

    def logout_response(
        self,
        sp_logout_url: str,
        *,
        status: str | None = None,
        sign: bool = True,
        lowercase_escapes: bool = False,
        edit: Edit | None = None,
        sign_alg: str = SIG_RSA_SHA256,
    ) -> str:
        """Answer an SP's LogoutRequest URL with a signed redirect URL.

        Verifies the request first (`parse_logout_request`), then sends a
        LogoutResponse (InResponseTo = the request ID, Destination = the
        SP's Redirect SLO endpoint from its metadata, top-level StatusCode
        Success, or Responder with second-level `status` when `status` is
        another URI) to that endpoint, echoing RelayState. `edit(root)` may
        alter the XML (wrong InResponseTo, Destination, ...) before the
        query is signed; `sign=False` leaves SigAlg/Signature out.
        """
        message, info = self._verified_logout_request(sp_logout_url)
        status_element = None
        if status is not None and status != STATUS_SUCCESS:
            status_element = samlp.Status(
                status_code=samlp.StatusCode(
                    value=STATUS_RESPONDER, status_code=samlp.StatusCode(value=status)
                )
            )
        response = self.server.create_logout_response(
            message,
            bindings=[BINDING_HTTP_REDIRECT],
            status=status_element,
            sign=False,
        )
        root = parse_xml(response.to_string())
        destination = root.get("Destination")
        if edit is not None:
            edit(root)
        xml = to_xml(root)
        if lowercase_escapes:
            return self.redirect_url(
                destination,
                "SAMLResponse",
                xml,
                relay_state=info.relay_state,
                sign=sign,
                lowercase=True,
                sign_alg=sign_alg,
            )
        return self._pysaml2_redirect(
            destination,
            xml,
            response=True,
            relay_state=info.relay_state,
            sign=sign,
            sign_alg=sign_alg,
        )

    def sp_signing_certs(self, sp_id: str) -> list[str]:
        """PEM signing certificates of `sp_id` from its loaded metadata."""
        certs = self.server.metadata.certs(sp_id, "any", "signing")
        return [cert_pem_from_b64(cert) for _name, cert in certs]

    def parse_logout_response(
        self, url: str, *, require_signature: bool = True
    ) -> LogoutResponseInfo:
        """Decode an SP's Redirect-binding LogoutResponse to our request.

        The query signature is checked over the raw query string against the
        issuing SP's metadata signing certificates (`verify_redirect_query`);
        with `require_signature` (default) an unsigned or badly signed
        message raises ValueError, else `signed` reports the outcome.
        """
        query = _query(url)
        if "SAMLResponse" not in query:
            raise ValueError("no SAMLResponse in the URL")
        xml = inflate_b64(query["SAMLResponse"])
        root = parse_xml(xml)
        issuer_element = root.find("saml:Issuer", NS)
        issuer = None if issuer_element is None else issuer_element.text
        certs = self.sp_signing_certs(issuer) if issuer else []
        signed = verify_redirect_query(url, certs)
        if require_signature and not signed:
            raise ValueError("LogoutResponse signature missing or invalid")
        code = root.find("samlp:Status/samlp:StatusCode", NS)
        return LogoutResponseInfo(
            id=root.get("ID"),
            issuer=issuer,
            in_response_to=root.get("InResponseTo"),
            destination=root.get("Destination"),
            status=None if code is None else code.get("Value"),
            relay_state=query.get("RelayState"),
            signed=signed,
            xml=xml,
        )
