"""The public keys a tenant registers for its SFTP drop box (EDI-C3)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from django.db import transaction
from django_tenants.utils import schema_context

from edi.models import SftpKey
from portal.db import current_schema
from portal.errors import ApplicationError, Conflict
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits
from tenants.models import SftpAccount, Tenant

if TYPE_CHECKING:
    from portal.models import Member


MAX_KEY_TEXT = 16 * 1024
MIN_RSA_BITS = 2048
ALLOWED_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
    }
)
KEY_HELP = "Use an Ed25519, ECDSA or RSA (at least 2048 bits) key."


class SftpKeyError(ApplicationError):
    code = "sftp_key_invalid"
    status = 400


# -- keys --------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedKey:
    """An OpenSSH public key, checked against EDI-C3's algorithms."""

    algorithm: str
    bits: int
    public_key: str  # "<type> <base64>", comment dropped
    fingerprint: str  # "SHA256:<unpadded base64>", as ssh-keygen -l prints
    comment: str


@audit_exempt("pure: derives a name")
def sftp_key_fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


_RFC4716_BEGIN = "---- BEGIN SSH2 PUBLIC KEY ----"
_RFC4716_END = "---- END SSH2 PUBLIC KEY ----"


def _rfc4716_to_openssh(text: str) -> str:
    """PuTTYgen's and WinSCP's export format to the one-line form."""
    body: list[str] = []
    comment = ""
    inside = continued = False
    for raw in text.splitlines():
        line = raw.strip()
        if line == _RFC4716_BEGIN:
            inside = True
            continue
        if line == _RFC4716_END:
            break
        if not inside or not line:
            continue
        if continued or ":" in line:
            continued = line.endswith("\\")
            if line.lower().startswith("comment:"):
                comment = line.split(":", 1)[1].strip().strip('"')
            continue
        body.append(line)
    data = "".join(body)
    try:
        blob = base64.b64decode(data, validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        key_type = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise SftpKeyError("The SSH2 public key block is not valid base64.") from None
    return f"{key_type} {data} {comment}".strip()


@audit_exempt("pure: parsing")
def sftp_key_parse(*, public_key_text: str) -> ParsedKey:
    """Parse one OpenSSH public key line (or an RFC 4716 block).

    Raises `SftpKeyError` with code `sftp_key_invalid` (garbage, several
    keys, a private key), `sftp_key_algorithm_refused` (DSA, security-key
    and certificate types) or `sftp_key_too_short` (RSA under 2048 bits).
    """
    text = (public_key_text or "").strip()
    if not text:
        raise SftpKeyError("Paste an OpenSSH public key.")
    if len(text) > MAX_KEY_TEXT:
        raise SftpKeyError("That is too long to be one public key.")
    if "PRIVATE KEY" in text:
        raise SftpKeyError(
            "This is a private key: keep it secret and paste the public key "
            "(the .pub file) instead.",
            code="sftp_key_private",
        )
    if text.startswith(_RFC4716_BEGIN):
        text = _rfc4716_to_openssh(text)
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise SftpKeyError("Paste exactly one public key line.")
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise SftpKeyError(
            "Not an OpenSSH public key line (expected 'ssh-ed25519 AAAA… comment')."
        )
    key_type, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) > 2 else ""
    if key_type == "ssh-dss":
        raise SftpKeyError(
            "DSA keys are refused. " + KEY_HELP, code="sftp_key_algorithm_refused"
        )
    if key_type not in ALLOWED_KEY_TYPES:
        if key_type.startswith(("ssh-", "ecdsa-", "sk-")) or "@" in key_type:
            raise SftpKeyError(
                f"Keys of type {key_type[:60]} are refused. " + KEY_HELP,
                code="sftp_key_algorithm_refused",
            )
        raise SftpKeyError(
            "Not an OpenSSH public key line (expected 'ssh-ed25519 AAAA… comment')."
        )
    try:
        blob = base64.b64decode(data, validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        blob_type = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise SftpKeyError("The key data is not valid base64.") from None
    if blob_type != key_type:
        raise SftpKeyError("The key type does not match the key data.")
    try:
        key = serialization.load_ssh_public_key(f"{key_type} {data}".encode())
    except (ValueError, UnsupportedAlgorithm):
        raise SftpKeyError("The key data is damaged.") from None
    if isinstance(key, dsa.DSAPublicKey):
        raise SftpKeyError(
            "DSA keys are refused. " + KEY_HELP, code="sftp_key_algorithm_refused"
        )
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise SftpKeyError(
                f"This RSA key has {bits} bits; at least {MIN_RSA_BITS} are required.",
                code="sftp_key_too_short",
                details={"bits": bits, "min_bits": MIN_RSA_BITS},
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        bits = 256
    else:  # pragma: no cover - the type whitelist above prevents it
        raise SftpKeyError("Unsupported key type.", code="sftp_key_algorithm_refused")
    canonical = base64.b64encode(blob).decode()
    return ParsedKey(
        algorithm=key_type,
        bits=bits,
        public_key=f"{key_type} {canonical}",
        fingerprint=sftp_key_fingerprint(blob),
        comment=comment[:100],
    )


def _current_tenant() -> Tenant:
    schema = current_schema()
    if schema == "public":
        raise ApplicationError(
            "SFTP keys belong to a tenant.", code="tenant_required", status=400
        )
    with schema_context("public"):
        return Tenant.objects.get(schema_name=schema)


@audits("edi.sftp_key.registered")
@transaction.atomic
def sftp_key_register(
    *, public_key_text: str, name: str, actor: Member | None
) -> SftpKey:
    """Allow a public key to sign in to the current tenant's drop box.

    Runs in the tenant's schema. Creates the `SftpKey` and, if missing,
    the public `SftpAccount` (username = the tenant's slug). Raises the
    `sftp_key_*` errors of `sftp_key_parse`, `sftp_key_name_required`, and
    `sftp_key_duplicate` (409) when the tenant already has this key.
    """
    parsed = sftp_key_parse(public_key_text=public_key_text)
    name = (name or "").strip() or parsed.comment
    if not name:
        raise ApplicationError(
            "Give the key a name.", code="sftp_key_name_required", status=400
        )
    if SftpKey.objects.filter(fingerprint=parsed.fingerprint).exists():
        raise Conflict(
            "This key is already registered.",
            code="sftp_key_duplicate",
            details={"fingerprint": parsed.fingerprint},
        )
    sftp_key = SftpKey(
        name=name[:100],
        algorithm=parsed.algorithm,
        bits=parsed.bits,
        public_key=parsed.public_key,
        fingerprint=parsed.fingerprint,
        created_by=actor,
    )
    sftp_key.full_clean()
    sftp_key.save()
    tenant = _current_tenant()
    with schema_context("public"):
        SftpAccount.objects.get_or_create(
            tenant_id=tenant.pk, defaults={"username": tenant.slug}
        )
    audit_event_record(
        action="edi.sftp_key.registered",
        target=sftp_key,
        actor=actor,
        changes={
            "name": sftp_key.name,
            "algorithm": sftp_key.algorithm,
            "bits": sftp_key.bits,
            "fingerprint": sftp_key.fingerprint,
        },
    )
    return sftp_key


@audits("edi.sftp_key.removed")
@transaction.atomic
def sftp_key_remove(*, sftp_key: SftpKey, actor: Member | None) -> None:
    """Revoke a key at once; the tenant's SFTP account goes with its last key.

    Runs in the tenant's schema. Files received with the key keep their
    row (their `sftp_key` becomes empty); the audit event names the key.
    """
    fingerprint, key_name = sftp_key.fingerprint, sftp_key.name
    audit_event_record(
        action="edi.sftp_key.removed",
        target=sftp_key,
        actor=actor,
        changes={"name": key_name, "fingerprint": fingerprint},
    )
    SftpKey.objects.filter(pk=sftp_key.pk).delete()
    if not SftpKey.objects.exists():
        tenant = _current_tenant()
        with schema_context("public"):
            SftpAccount.objects.filter(tenant_id=tenant.pk).delete()
