"""The tenant's IdP configuration, its policies and the python3-saml settings.

One service stores an IdP, whichever way it arrives (metadata upload, the
`sso_configure` command, a metadata URL or the manual form), so the page
and the command store identical rows (SSO-F1). `saml_settings()` builds
python3-saml's settings from the tenant's canonical origin, never from the
request (SSO-S1), and caches them per process until the config changes.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from portal.db import current_schema, row_first
from portal.errors import ApplicationError, NotFound, PermissionDenied
from portal.models import Member
from portal.roles import Role
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits
from sso.errors import SamlError
from sso.models import (
    NAME_ID_FORMAT_URIS,
    Binding,
    CertificateSource,
    GroupMatch,
    GroupRoleMapping,
    IdentityProvider,
    IdpCertificate,
    NameIdFormat,
    Preset,
)
from sso.services.keys import sp_key_material
from sso.services.xmlcheck import MAX_METADATA_BYTES, NS_DS, xml_parse_hardened

BINDING_URIS = {
    Binding.REDIRECT: C.BINDING_HTTP_REDIRECT,
    Binding.POST: C.BINDING_HTTP_POST,
}
NS_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
# A KeyDescriptor without `use` serves both purposes; `use="encryption"`
# never verifies a signature (ADFS publishes its token-decrypting key so).
SIGNING_CERTS = etree.XPath(
    "md:KeyDescriptor[not(@use) or normalize-space(@use)='signing']"
    "/ds:KeyInfo/ds:X509Data/ds:X509Certificate",
    namespaces={"md": NS_MD, "ds": NS_DS},
)

PRESETS: dict[str, dict[str, str]] = {
    Preset.ENTRA: {
        "email_attribute": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
        "first_name_attribute": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
        "last_name_attribute": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
        "groups_attribute": "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
        "immutable_id_attribute": "http://schemas.microsoft.com/identity/claims/objectidentifier",
    },
    Preset.OKTA: {
        "email_attribute": "email",
        "first_name_attribute": "firstName",
        "last_name_attribute": "lastName",
        "groups_attribute": "groups",
        "immutable_id_attribute": "",
    },
    Preset.GOOGLE: {
        "email_attribute": "email",
        "first_name_attribute": "firstName",
        "last_name_attribute": "lastName",
        "groups_attribute": "groups",
        "immutable_id_attribute": "",
    },
    Preset.ADFS: {
        "email_attribute": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
        "first_name_attribute": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
        "last_name_attribute": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
        "groups_attribute": "http://schemas.xmlsoap.org/claims/Group",
        "immutable_id_attribute": "",
    },
}
ENCRYPTION_METHODS = (
    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
    "http://www.w3.org/2009/xmlenc11#aes128-gcm",
    "http://www.w3.org/2009/xmlenc11#rsa-oaep",
    "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
)
POLICY_FIELDS = frozenset(
    {
        "enforce_sso",
        "allow_idp_initiated",
        "landing_path",
        "jit_enabled",
        "allowed_email_domains",
        "sign_authn_requests",
        "want_assertions_encrypted",
        "signed_response_suffices",
        "name_id_format",
        "default_role",
        "group_match",
        "group_required",
        "role_mapping_enabled",
        "preset",
        "email_attribute",
        "first_name_attribute",
        "last_name_attribute",
        "groups_attribute",
        "immutable_id_attribute",
        "employee_id_attribute",
    }
)
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
TEST_FRESHNESS = timedelta(hours=24)


# --- certificates -----------------------------------------------------------


@dataclass(frozen=True)
class ParsedCert:
    pem: str
    fingerprint: str
    subject: str
    not_after: datetime


_PEM_BODY = re.compile(
    r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL
)


@audit_exempt("pure: parses a certificate")
def certificate_parse(text: str) -> ParsedCert:
    """Normalise a PEM (headers, CRLFs or bare base64) and describe it."""
    text = (text or "").strip()
    match = _PEM_BODY.search(text)
    body = match.group(1) if match else text
    body = "".join(body.split())
    if not body or not re.fullmatch(r"[A-Za-z0-9+/=]+", body):
        raise ApplicationError(
            "This is not a PEM certificate. Paste the text between "
            "-----BEGIN CERTIFICATE----- and -----END CERTIFICATE-----.",
            code="certificate_invalid",
            details={"certificate": ["Not a PEM certificate."]},
        )
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    pem = (
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(lines)
        + "\n-----END CERTIFICATE-----\n"
    )
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ApplicationError(
            "The certificate could not be read. Copy it again from the IdP.",
            code="certificate_invalid",
            details={"certificate": ["Unreadable certificate."]},
        ) from None
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
        raise ApplicationError(
            "Only RSA signing certificates of 2048 bits or more are accepted.",
            code="certificate_weak",
            details={"certificate": ["RSA ≥ 2048 bits required."]},
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    return ParsedCert(
        pem=pem,
        fingerprint=hashlib.sha256(der).hexdigest(),
        subject=cert.subject.rfc4514_string()[:500],
        not_after=cert.not_valid_after_utc,
    )


@audit_exempt("pure: formats a fingerprint")
def fingerprint_display(fingerprint: str) -> str:
    return ":".join(
        fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)
    ).upper()


# --- metadata ---------------------------------------------------------------


@dataclass(frozen=True)
class IdpDescription:
    """An IdP as described by metadata or the manual form."""

    entity_id: str
    sso_url: str
    sso_binding: str
    slo_url: str = ""
    slo_binding: str = Binding.REDIRECT
    certificates: tuple[ParsedCert, ...] = field(default_factory=tuple)


def _https_or_debug(url: str, label: str) -> str:
    url = (url or "").strip()
    # http only where the portal itself runs on http (PORTAL_DEBUG, tests).
    plain = settings.DEBUG or settings.PORTAL_PUBLIC_SCHEME == "http"
    allowed = ("https://", "http://") if plain else ("https://",)
    if not url.startswith(allowed) or len(url) > 2048 or any(c.isspace() for c in url):
        raise ApplicationError(
            f"The {label} must be an https:// URL.",
            code="url_invalid",
            details={label: ["An https:// URL is required."]},
        )
    return url


@audit_exempt("pure: parses metadata")
def idp_metadata_parse(data: bytes) -> IdpDescription:
    """Read an IdP's metadata XML: entityID, SSO/SLO URLs, every signing cert.

    The hardened parser runs first (no DTD, ≤ 1 MiB; SSO-S4), then
    python3-saml's `parse()` (never `parse_remote`). SSO prefers Redirect and
    falls back to POST for POST-only IdPs such as some ADFS farms.
    """
    try:
        root = xml_parse_hardened(data, limit=MAX_METADATA_BYTES)
    except SamlError as exc:
        raise ApplicationError(
            {
                "dtd_forbidden": "The metadata contains a DOCTYPE, which is never "
                "allowed. Download the metadata from the IdP again.",
                "too_large": "The metadata is larger than 1 MiB.",
            }.get(exc.code, "The metadata is not well-formed XML."),
            code=f"metadata_{exc.code}",
        ) from None
    descriptors = root.findall(f".//{{{NS_MD}}}IDPSSODescriptor")
    if not descriptors:
        raise ApplicationError(
            "This metadata describes no identity provider (no IDPSSODescriptor). "
            "Use the IdP's metadata, not the SP's.",
            code="metadata_not_idp",
        )
    if len(descriptors) > 1:
        raise ApplicationError(
            "This metadata describes several identity providers. Upload the "
            "metadata of the one application only.",
            code="metadata_ambiguous",
        )
    text = etree.tostring(root)
    # python3-saml reads the first EntityDescriptor; inside an
    # EntitiesDescriptor, name the one that holds the IDPSSODescriptor.
    owner = descriptors[0].getparent()
    named = owner.get("entityID") if owner is not None and owner is not root else None
    select = {"entity_id": named} if named and "'" not in named else {}
    redirect = OneLogin_Saml2_IdPMetadataParser.parse(text, **select)
    idp = redirect.get("idp", {})
    sso_binding = Binding.REDIRECT
    if not idp.get("singleSignOnService"):
        idp = OneLogin_Saml2_IdPMetadataParser.parse(
            text, required_sso_binding=C.BINDING_HTTP_POST, **select
        ).get("idp", {})
        sso_binding = Binding.POST
    slo_binding = Binding.REDIRECT
    slo = redirect.get("idp", {}).get("singleLogoutService")
    if not slo:
        slo = (
            OneLogin_Saml2_IdPMetadataParser.parse(
                text, required_slo_binding=C.BINDING_HTTP_POST, **select
            )
            .get("idp", {})
            .get("singleLogoutService")
        )
        slo_binding = Binding.POST
    entity_id = idp.get("entityId") or ""
    sso_url = (idp.get("singleSignOnService") or {}).get("url") or ""
    if not entity_id or not sso_url:
        raise ApplicationError(
            "The metadata lacks the IdP's entityID or a Redirect/POST single "
            "sign-on URL.",
            code="metadata_incomplete",
        )
    # Not python3-saml's x509cert: with a lone encryption key it reports
    # that key, which must never verify a signature.
    raw_certs = [
        "".join((node.text or "").split()) for node in SIGNING_CERTS(descriptors[0])
    ]
    if not raw_certs:
        raise ApplicationError(
            "The metadata contains no signing certificate.", code="metadata_no_cert"
        )
    certs: dict[str, ParsedCert] = {}
    for raw in raw_certs:
        parsed = certificate_parse(raw)
        certs.setdefault(parsed.fingerprint, parsed)
    return IdpDescription(
        entity_id=entity_id.strip(),
        sso_url=_https_or_debug(sso_url, "SSO URL"),
        sso_binding=sso_binding,
        slo_url=_https_or_debug(slo["url"], "SLO URL")
        if slo and slo.get("url")
        else "",
        slo_binding=slo_binding if slo else Binding.REDIRECT,
        certificates=tuple(certs.values()),
    )


# --- storing the IdP ----------------------------------------------------------


def _require(actor: Member | None, capability: str = "sso.edit") -> None:
    from portal.roles import can

    if actor is not None and not can(actor, capability):
        raise PermissionDenied("Your role cannot change single sign-on.")


@audit_exempt("read")
def idp_get() -> IdentityProvider | None:
    # Read on every SAML request: row_first skips the query compiler.
    return row_first(IdentityProvider, order_by="id")


@audit_exempt("read")
def idp_require() -> IdentityProvider:
    idp = idp_get()
    if idp is None:
        raise NotFound("Single sign-on is not set up yet.", code="sso_not_configured")
    return idp


@audits("sso.idp.configured")
@transaction.atomic
def idp_configure(
    *,
    description: IdpDescription,
    actor: Member | None,
    source: str,
    metadata_url: str = "",
    replace_certificates: bool = True,
) -> IdentityProvider:
    """Store the IdP (one row per tenant) and its certificates, audited.

    With `replace_certificates`, the certificate list becomes exactly the
    described one (an admin's upload or manual edit); otherwise certificates
    are only added (the scheduled refresh, SSO-F2).
    """
    _require(actor)
    if not description.certificates:
        raise ApplicationError(
            "At least one IdP signing certificate is required.", code="no_certificate"
        )
    entity_id = description.entity_id.strip()
    if not entity_id or len(entity_id) > 1024:
        raise ApplicationError(
            "The IdP entity ID is required.", code="entity_id_invalid"
        )
    idp = IdentityProvider.objects.select_for_update().first()
    created = idp is None
    if idp is None:
        idp = IdentityProvider()
        idp.default_role = Role.MEMBER
    before = {
        "entity_id": idp.entity_id,
        "sso_url": idp.sso_url,
        "slo_url": idp.slo_url,
    }
    idp.entity_id = entity_id
    idp.sso_url = _https_or_debug(description.sso_url, "SSO URL")
    idp.sso_binding = description.sso_binding
    idp.slo_url = (
        _https_or_debug(description.slo_url, "SLO URL") if description.slo_url else ""
    )
    idp.slo_binding = description.slo_binding
    if metadata_url:
        idp.metadata_url = metadata_url
        idp.metadata_fetched_at = timezone.now()
        idp.metadata_refresh_error = ""
    idp.full_clean(exclude=["version"])
    idp.save()
    existing = {c.fingerprint: c for c in idp.certificates.all()}
    wanted = {c.fingerprint: c for c in description.certificates}
    added = [fp for fp in wanted if fp not in existing]
    removed = (
        [fp for fp in existing if fp not in wanted] if replace_certificates else []
    )
    for fp in added:
        cert = wanted[fp]
        IdpCertificate.objects.create(
            idp=idp,
            pem=cert.pem,
            fingerprint=fp,
            subject=cert.subject,
            not_after=cert.not_after,
            source=source,
        )
    if removed:
        IdpCertificate.objects.filter(idp=idp, fingerprint__in=removed).delete()
    IdentityProvider.objects.filter(pk=idp.pk).update(version=F("version") + 1)
    idp.refresh_from_db()
    audit_event_record(
        action="sso.idp.configured",
        actor=actor,
        target_label=f"IdP {entity_id[:200]}",
        changes={
            "created": created,
            "source": source,
            "before": before,
            "after": {
                "entity_id": idp.entity_id,
                "sso_url": idp.sso_url,
                "slo_url": idp.slo_url,
            },
            "certificates_added": added,
            "certificates_removed": removed,
        },
    )
    return idp


@audits("sso.idp.configured")
def idp_configure_from_metadata(
    *, data: bytes, actor: Member | None, metadata_url: str = ""
) -> IdentityProvider:
    """Parse uploaded metadata and store it (the page and `sso_configure`)."""
    description = idp_metadata_parse(data)
    return idp_configure(
        description=description,
        actor=actor,
        source=CertificateSource.METADATA,
        metadata_url=metadata_url,
    )


@audits("sso.idp.configured")
def idp_configure_manual(
    *,
    entity_id: str,
    sso_url: str,
    slo_url: str,
    certificates: list[str],
    actor: Member | None,
    sso_binding: str = Binding.REDIRECT,
) -> IdentityProvider:
    """The manual form: entityID, URLs and PEM certificates (never fingerprints)."""
    parsed: dict[str, ParsedCert] = {}
    for text in certificates:
        if text.strip():
            cert = certificate_parse(text)
            parsed.setdefault(cert.fingerprint, cert)
    description = IdpDescription(
        entity_id=entity_id,
        sso_url=sso_url,
        sso_binding=sso_binding,
        slo_url=slo_url,
        certificates=tuple(parsed.values()),
    )
    return idp_configure(
        description=description, actor=actor, source=CertificateSource.MANUAL
    )


@audits("sso.certificate.removed")
@transaction.atomic
def idp_certificate_remove(*, fingerprint: str, actor: Member | None) -> None:
    """Remove one IdP certificate; never the last one."""
    _require(actor)
    idp = IdentityProvider.objects.select_for_update().first()
    if idp is None:
        raise NotFound("Single sign-on is not set up yet.")
    certs = list(idp.certificates.all())
    target = next((c for c in certs if c.fingerprint == fingerprint), None)
    if target is None:
        raise NotFound("No such certificate.")
    if len(certs) == 1:
        raise ApplicationError(
            "This is the IdP's last certificate; upload its replacement first.",
            code="last_certificate",
        )
    target.delete()
    IdentityProvider.objects.filter(pk=idp.pk).update(version=F("version") + 1)
    audit_event_record(
        action="sso.certificate.removed",
        actor=actor,
        target_label=f"IdP certificate {fingerprint[:16]}",
        changes={"fingerprint": fingerprint, "subject": target.subject},
    )


@audits("sso.policy.changed", "sso.enforcement.changed")
@transaction.atomic
def idp_policies_set(
    *, actor: Member | None, operator: bool = False, **changes: Any
) -> IdentityProvider:
    """Change SSO policies; enforcement needs a passed test within 24 h.

    `operator=True` is `sso_configure --enforce-sso`: an audited operator
    action that skips the test-connection requirement (SSO-F13).
    """
    _require(actor)
    unknown = set(changes) - POLICY_FIELDS
    if unknown:
        raise ApplicationError(f"Unknown SSO settings: {', '.join(sorted(unknown))}.")
    idp = IdentityProvider.objects.select_for_update().first()
    if idp is None:
        raise NotFound(
            "Connect the identity provider first.", code="sso_not_configured"
        )
    if "preset" in changes and changes["preset"] != Preset.CUSTOM:
        preset = changes["preset"]
        if preset not in PRESETS:
            raise ApplicationError("Unknown attribute preset.", code="preset_invalid")
        for key, value in PRESETS[preset].items():
            changes.setdefault(key, value)
    if "allowed_email_domains" in changes:
        changes["allowed_email_domains"] = email_domains_normalise(
            changes["allowed_email_domains"]
        )
    if "landing_path" in changes:
        path = str(changes["landing_path"] or "/").strip()
        if not path.startswith("/") or path.startswith("//") or "\\" in path:
            raise ApplicationError(
                "The landing page must be a path on this portal, like /members/.",
                code="landing_invalid",
                details={"landing_path": ["A path starting with / is required."]},
            )
        changes["landing_path"] = path
    if changes.get("default_role") == Role.OWNER:
        raise ApplicationError(
            "SSO never grants the owner role.", code="owner_protected"
        )
    if (
        changes.get("name_id_format", NameIdFormat.UNSPECIFIED)
        not in NameIdFormat.values
    ):
        raise ApplicationError("Unknown NameID format.")
    if changes.get("group_match", GroupMatch.EXACT) not in GroupMatch.values:
        raise ApplicationError("Unknown group matching.")
    enforcing = changes.get("enforce_sso") is True and not idp.enforce_sso
    if enforcing and not operator:
        fresh = idp.last_test_passed_at and (
            timezone.now() - idp.last_test_passed_at < TEST_FRESHNESS
        )
        if not fresh:
            raise ApplicationError(
                "Run a successful test connection (within the last 24 hours) "
                "before enforcing single sign-on.",
                code="test_required",
            )
    before = {key: getattr(idp, key) for key in changes}
    for key, value in changes.items():
        setattr(idp, key, value)
    idp.full_clean(exclude=["version"])
    idp.version = idp.version + 1
    idp.save()
    diff = {
        key: {"before": before[key], "after": changes[key]}
        for key in changes
        if before[key] != changes[key]
    }
    if "enforce_sso" in diff:
        audit_event_record(
            action="sso.enforcement.changed",
            actor=actor,
            target_label="SSO enforcement",
            changes={"enforce_sso": diff.pop("enforce_sso"), "operator": operator},
        )
    if diff:
        audit_event_record(
            action="sso.policy.changed",
            actor=actor,
            target_label="SSO policies",
            changes=diff,
        )
    return idp


@audit_exempt("pure: normalises input")
def email_domains_normalise(value: Any) -> list[str]:
    items = value.replace(",", "\n").split() if isinstance(value, str) else list(value)
    domains: list[str] = []
    for item in items:
        domain = str(item).strip().lower().lstrip("@")
        if not domain:
            continue
        if not _DOMAIN.match(domain):
            raise ApplicationError(
                f"“{domain[:80]}” is not a domain name.",
                code="domain_invalid",
                details={"allowed_email_domains": [f"Not a domain: {domain[:80]}"]},
            )
        if domain not in domains:
            domains.append(domain)
    return domains


@audits("sso.groups.changed")
@transaction.atomic
def group_mappings_set(
    *, mappings: list[tuple[str, str]], actor: Member | None
) -> list[GroupRoleMapping]:
    """Replace the group → role table (never the owner role)."""
    _require(actor)
    idp = IdentityProvider.objects.select_for_update().first()
    if idp is None:
        raise NotFound(
            "Connect the identity provider first.", code="sso_not_configured"
        )
    cleaned: dict[str, str] = {}
    for group, role in mappings:
        group = (group or "").strip()
        if not group:
            continue
        if role not in Role.values or role == Role.OWNER:
            raise ApplicationError(
                f"Group “{group[:80]}”: choose admin, user admin, read-only admin "
                "or member (never owner).",
                code="role_invalid",
            )
        if len(group) > 512:
            raise ApplicationError("Group names are at most 512 characters.")
        cleaned[group] = role
    before = {m.group: m.role for m in idp.group_mappings.all()}
    idp.group_mappings.all().delete()
    rows = [GroupRoleMapping(idp=idp, group=g, role=r) for g, r in cleaned.items()]
    GroupRoleMapping.objects.bulk_create(rows)
    IdentityProvider.objects.filter(pk=idp.pk).update(version=F("version") + 1)
    audit_event_record(
        action="sso.groups.changed",
        actor=actor,
        target_label="SSO group mapping",
        changes={"before": before, "after": cleaned},
    )
    return rows


# --- python3-saml settings ----------------------------------------------------


@dataclass(frozen=True)
class SamlContext:
    """Everything one tenant's SAML endpoints need, built once per version."""

    idp: IdentityProvider | None
    origin: str
    entity_id: str
    acs_url: str
    sls_url: str
    settings: OneLogin_Saml2_Settings
    decrypt_settings: tuple[OneLogin_Saml2_Settings, ...]
    mappings: tuple[tuple[str, str], ...]
    built_at: float


_cache: dict[tuple[str, int], SamlContext] = {}
_cache_lock = threading.Lock()
CACHE_SECONDS = 60.0


@audit_exempt("read: derives URLs")
def sp_urls(origin: str) -> dict[str, str]:
    return {
        "entity_id": f"{origin}/sso/saml/metadata/",
        "acs_url": f"{origin}/sso/saml/acs/",
        "sls_url": f"{origin}/sso/saml/sls/",
        "login_url": f"{origin}/sso/saml/login/",
    }


def _origin() -> str:
    from tenants.services import tenant_origin

    tenant = getattr(connection, "tenant", None)
    if tenant is None or current_schema() == "public":
        raise NotFound("Not a tenant.")
    return tenant_origin(tenant)


def _settings_dict(
    idp: IdentityProvider | None,
    origin: str,
    certs: list[str],
    key_pem: str,
    cert_pem: str,
    next_cert: str | None,
) -> dict[str, Any]:
    urls = sp_urls(origin)
    sp: dict[str, Any] = {
        "entityId": urls["entity_id"],
        "assertionConsumerService": {
            "url": urls["acs_url"],
            "binding": C.BINDING_HTTP_POST,
        },
        "singleLogoutService": {
            "url": urls["sls_url"],
            "binding": C.BINDING_HTTP_REDIRECT,
        },
        "NameIDFormat": NAME_ID_FORMAT_URIS[
            NameIdFormat(idp.name_id_format) if idp else NameIdFormat.UNSPECIFIED
        ],
        "x509cert": cert_pem,
        "privateKey": key_pem,
    }
    if next_cert:
        sp["x509certNew"] = next_cert
    data: dict[str, Any] = {
        "strict": True,
        "debug": False,
        "sp": sp,
        "security": {
            "authnRequestsSigned": bool(idp.sign_authn_requests) if idp else True,
            "logoutRequestSigned": True,
            "logoutResponseSigned": True,
            "wantMessagesSigned": False,
            "wantAssertionsSigned": not (idp and idp.signed_response_suffices),
            "wantAssertionsEncrypted": bool(idp and idp.want_assertions_encrypted),
            "wantNameId": True,
            "wantNameIdEncrypted": False,
            "wantAttributeStatement": False,
            "requestedAuthnContext": False,
            "signMetadata": False,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            "rejectDeprecatedAlgorithm": True,
            "allowRepeatAttributeName": True,
            "allowSingleLabelDomains": settings.DEBUG,
        },
    }
    if idp is not None:
        data["idp"] = {
            "entityId": idp.entity_id,
            "singleSignOnService": {
                "url": idp.sso_url,
                "binding": BINDING_URIS[Binding(idp.sso_binding)],
            },
            "x509certMulti": {"signing": certs, "encryption": certs[:1]},
        }
        if idp.slo_url:
            data["idp"]["singleLogoutService"] = {
                "url": idp.slo_url,
                "binding": BINDING_URIS[Binding(idp.slo_binding)],
            }
    return data


@audit_exempt("read: builds (and caches) the python3-saml settings")
def saml_context(
    *, idp: IdentityProvider | None = None, fresh: bool = False
) -> SamlContext:
    """The tenant's SAML settings, rebuilt only when its config version changes.

    One query (the IdP row) per call; certificates, SP keys and the origin are
    read only on a rebuild (a version change, or after 60 s).
    """
    if idp is None:
        idp = idp_get()
    schema = current_schema()
    version = idp.version if idp else 0
    key = (schema, version)
    now = time.monotonic()
    cached = _cache.get(key)
    if cached and not fresh and now - cached.built_at < CACHE_SECONDS:
        if idp is not None:
            # Policies are read from the row just loaded, never a stale copy.
            return SamlContext(**{**cached.__dict__, "idp": idp})
        return cached
    origin = _origin()
    material = sp_key_material()
    certs = [c.pem for c in idp.certificates.all()] if idp else []
    mappings: tuple[tuple[str, str], ...] = (
        tuple(idp.group_mappings.values_list("group", "role")) if idp else ()
    )
    base = _settings_dict(
        idp,
        origin,
        certs,
        material.active_key_pem,
        material.active_cert_pem,
        material.next_cert_pem,
    )
    only_sp = idp is None
    built = OneLogin_Saml2_Settings(base, sp_validation_only=only_sp)
    decrypt = [built]
    for other in material.decrypt_keys[1:]:
        alt = _settings_dict(
            idp, origin, certs, other, material.active_cert_pem, material.next_cert_pem
        )
        decrypt.append(OneLogin_Saml2_Settings(alt, sp_validation_only=only_sp))
    urls = sp_urls(origin)
    context = SamlContext(
        idp=idp,
        origin=origin,
        entity_id=urls["entity_id"],
        acs_url=urls["acs_url"],
        sls_url=urls["sls_url"],
        settings=built,
        decrypt_settings=tuple(decrypt),
        mappings=mappings,
        built_at=now,
    )
    with _cache_lock:
        for stale in [k for k in _cache if k[0] == schema and k != key]:
            _cache.pop(stale, None)
        _cache[key] = context
    return context


@audit_exempt("clears process memory only")
def saml_context_forget() -> None:
    with _cache_lock:
        _cache.clear()


@audit_exempt("read: renders the SP metadata")
def sp_metadata_xml() -> str:
    """The SP metadata as served: ACS, SLS (Redirect and POST), keys (SSO-F3)."""
    context = saml_context()
    xml = context.settings.get_sp_metadata()
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    sp_descriptor = root.find(f"{{{NS_MD}}}SPSSODescriptor")
    if sp_descriptor is not None:
        sls = sp_descriptor.findall(f"{{{NS_MD}}}SingleLogoutService")
        if sls:
            post = etree.Element(
                f"{{{NS_MD}}}SingleLogoutService",
                Binding=C.BINDING_HTTP_POST,
                Location=context.sls_url,
            )
            sls[-1].addnext(post)
        for descriptor in sp_descriptor.findall(f"{{{NS_MD}}}KeyDescriptor"):
            if descriptor.get("use") != "encryption":
                continue
            for algorithm in ENCRYPTION_METHODS:
                etree.SubElement(
                    descriptor, f"{{{NS_MD}}}EncryptionMethod", Algorithm=algorithm
                )
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


@audit_exempt("read")
def idp_test_is_fresh(idp: IdentityProvider) -> bool:
    return bool(
        idp.last_test_passed_at
        and timezone.now() - idp.last_test_passed_at < TEST_FRESHNESS
    )


@audit_exempt("read")
def utc_now() -> datetime:
    return datetime.now(tz=UTC)
