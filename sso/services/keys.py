"""The SP's own keys (SSO-F4): RSA-3072, self-signed for five years.

The private key is encrypted under the tenant keyring (purpose `sso`) and
is never shown. "Prepare next" publishes a second certificate in the SP
metadata; "activate" swaps them and keeps the old key 30 days so that
assertions encrypted to it still decrypt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from portal.db import current_schema
from portal.errors import ApplicationError
from portal.models import Member
from portal.services.audit import audit_event_record
from portal.services.keyring import field_aad, keyring_decrypt, keyring_encrypt
from portal.services.registry import audit_exempt, audits
from sso.models import IdentityProvider, SpKey, SpKeyState

KEY_PURPOSE = "sso"
CERT_YEARS = 5
RETIRED_KEEP = timedelta(days=30)


@dataclass(frozen=True)
class SpKeyMaterial:
    """The decrypted SP keys the settings builder needs."""

    active_key_pem: str
    active_cert_pem: str
    next_cert_pem: str | None
    # Active first, then the prepared next key (the metadata already offers
    # its certificate for encryption), then keys retired within 30 days.
    decrypt_keys: tuple[str, ...]


def _generate(common_name: str) -> tuple[bytes, str, str, datetime]:
    key = rsa.generate_private_key(
        public_exponent=65537, key_size=settings.SSO_SP_KEY_BITS
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = timezone.now()
    not_after = now + timedelta(days=365 * CERT_YEARS)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    # The certificate holds whole seconds; store exactly what it says.
    not_after = cert.not_valid_after_utc
    return key_pem, cert_pem, hashlib.sha256(cert_der).hexdigest(), not_after


def _store(state: str) -> SpKey:
    key_pem, cert_pem, fingerprint, not_after = _generate(f"{current_schema()} SAML SP")
    row = SpKey(
        state=state,
        private_key=b"",
        certificate=cert_pem,
        fingerprint=fingerprint,
        not_after=not_after,
        activated_at=timezone.now() if state == SpKeyState.ACTIVE else None,
    )
    row.save()
    row.private_key = keyring_encrypt(
        purpose=KEY_PURPOSE,
        plaintext=key_pem,
        aad=field_aad(table="sso_spkey", column="private_key", pk=row.pk),
    )
    row.save(update_fields=["private_key"])
    return row


def _bump_version() -> None:
    """Invalidate every process's cached SAML settings for this tenant."""
    IdentityProvider.objects.update(version=F("version") + 1)


@audits("sso.sp_key.created")
def sp_key_ensure() -> SpKey:
    """The active SP key, created on first use (the first visit to `/sso/`)."""
    existing = SpKey.objects.filter(state=SpKeyState.ACTIVE).first()
    if existing is not None:
        return existing
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                [f"sso-sp-key:{current_schema()}"],
            )
        existing = SpKey.objects.filter(state=SpKeyState.ACTIVE).first()
        if existing is not None:
            return existing
        row = _store(SpKeyState.ACTIVE)
        audit_event_record(
            action="sso.sp_key.created",
            target_label=f"SP key {row.fingerprint[:16]}",
            changes={"fingerprint": row.fingerprint, "state": row.state},
        )
    return row


@audits("sso.sp_key.prepared")
@transaction.atomic
def sp_key_prepare_next(*, actor: Member | None) -> SpKey:
    """Create the next key and publish its certificate in the SP metadata."""
    sp_key_ensure()
    if SpKey.objects.filter(state=SpKeyState.NEXT).exists():
        raise ApplicationError(
            "A next key is already prepared. Activate it first.", code="next_exists"
        )
    row = _store(SpKeyState.NEXT)
    _bump_version()
    audit_event_record(
        action="sso.sp_key.prepared",
        actor=actor,
        target_label=f"SP key {row.fingerprint[:16]}",
        changes={"fingerprint": row.fingerprint},
    )
    return row


@audits("sso.sp_key.activated")
@transaction.atomic
def sp_key_activate(*, actor: Member | None) -> SpKey:
    """Make the prepared key active; the old one decrypts for 30 more days."""
    nxt = SpKey.objects.select_for_update().filter(state=SpKeyState.NEXT).first()
    if nxt is None:
        raise ApplicationError("Prepare a next key first.", code="no_next_key")
    now = timezone.now()
    old = SpKey.objects.select_for_update().filter(state=SpKeyState.ACTIVE).first()
    if old is not None:
        old.state = SpKeyState.RETIRED
        old.retired_at = now
        old.save(update_fields=["state", "retired_at"])
    nxt.state = SpKeyState.ACTIVE
    nxt.activated_at = now
    nxt.save(update_fields=["state", "activated_at"])
    _bump_version()
    audit_event_record(
        action="sso.sp_key.activated",
        actor=actor,
        target_label=f"SP key {nxt.fingerprint[:16]}",
        changes={
            "fingerprint": nxt.fingerprint,
            "retired": old.fingerprint if old else None,
        },
    )
    return nxt


def _decrypt(row: SpKey) -> str:
    return keyring_decrypt(
        purpose=KEY_PURPOSE,
        blob=bytes(row.private_key),
        aad=field_aad(table="sso_spkey", column="private_key", pk=row.pk),
    ).decode()


@audit_exempt("read: decrypts the SP keys for the settings builder")
def sp_key_material() -> SpKeyMaterial:
    """The active key and certificate, the next certificate, the decryption keys."""
    active = sp_key_ensure()
    rows = list(SpKey.objects.exclude(pk=active.pk))
    now = timezone.now()
    nxt = next((r for r in rows if r.state == SpKeyState.NEXT), None)
    retired = [
        r
        for r in sorted(rows, key=lambda r: r.retired_at or now, reverse=True)
        if r.state == SpKeyState.RETIRED
        and r.retired_at is not None
        and r.retired_at + RETIRED_KEEP > now
    ]
    active_pem = _decrypt(active)
    others = ([nxt] if nxt else []) + retired
    return SpKeyMaterial(
        active_key_pem=active_pem,
        active_cert_pem=active.certificate,
        next_cert_pem=nxt.certificate if nxt else None,
        decrypt_keys=(active_pem, *(_decrypt(r) for r in others)),
    )


@audit_exempt("read")
def sp_key_list() -> list[SpKey]:
    return list(SpKey.objects.defer("private_key").order_by("-created_at"))
