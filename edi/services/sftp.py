"""The SFTP drop box: keys, host key, sign-in decisions, limits, uploads.

EDI-C3. The paramiko classes in `edi/sftpd.py` are the interface: they
parse the protocol and call the functions here, which hold every rule.

Where things live:

- `tenants.SftpAccount` (public) maps the username, the tenant's slug, to
  the tenant; it exists while the tenant has at least one key.
- `edi.SftpKey` (tenant schema) holds the keys allowed to sign in.
- `tenants.SftpAuthEvent` (public) holds every sign-in outcome: the
  counters that every `sftpd` process shares for the per-IP ban and the
  per-username block.
- Concurrent sessions are counted with PostgreSQL session-level advisory
  locks, one lock per slot, held on a dedicated connection for the life
  of the session (`SessionSlots`). Every process sees them, and a crashed
  process releases its slots when its connections drop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import posixpath
import re
import secrets
import struct
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from edi.models import EdiFile, EdiMode, EdiSource, SftpKey
from edi.services.receive import EmptyFile, edi_file_receive
from edi.services.spool import SpoolWriter
from portal import context
from portal.db import current_schema
from portal.errors import ApplicationError, Conflict
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits
from tenants.models import SftpAccount, SftpAuthEvent, Tenant, TenantStatus
from tenants.services.platform import platform_audit_record

if TYPE_CHECKING:
    import paramiko
    import psycopg

    from portal.models import Member


@dataclass(frozen=True)
class SftpLimits:
    """EDI-C3's limits; tests pass smaller ones to a server they start."""

    failures_per_connection: int = 3
    ip_failures: int = 10
    ip_window: timedelta = timedelta(minutes=10)
    ip_ban: timedelta = timedelta(minutes=30)
    username_failures: int = 30
    username_window: timedelta = timedelta(minutes=10)
    username_block: timedelta = timedelta(minutes=15)
    trusted_ip_window: timedelta = timedelta(days=30)
    sessions_per_tenant: int = 4
    sessions_per_ip: int = 20
    idle_timeout: timedelta = timedelta(minutes=15)
    # An unauthenticated connection is dropped after this long.
    auth_timeout: timedelta = timedelta(seconds=60)


DEFAULT_LIMITS = SftpLimits()
AUTH_EVENT_RETENTION = timedelta(days=31)
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


class SessionLimitReached(ApplicationError):
    code = "sftp_session_limit"
    status = 429


class PathOutsideRoot(ApplicationError):
    code = "sftp_path_outside_root"
    status = 403


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


# -- host key ----------------------------------------------------------------


@dataclass(frozen=True)
class HostKey:
    key: paramiko.PKey
    path: Path
    algorithm: str
    sha256: str
    md5: str


@audit_exempt("pure: derives a path")
def sftp_host_key_default_path() -> Path:
    return Path(settings.PORTAL_DATA_DIR) / "sftp" / "ssh_host_ed25519_key"


def _host_key_info(key: paramiko.PKey, path: Path) -> HostKey:
    blob = key.asbytes()
    md5 = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return HostKey(
        key=key,
        path=path,
        algorithm=key.get_name(),
        sha256=sftp_key_fingerprint(blob),
        md5="MD5:" + ":".join(md5[i : i + 2] for i in range(0, len(md5), 2)),
    )


def _host_key_load(path: Path) -> HostKey:
    import paramiko

    mode = path.stat().st_mode
    if mode & 0o077:
        raise ApplicationError(
            f"The SFTP host key {path} is readable by others (mode "
            f"{mode & 0o777:o}); run chmod 600 on it.",
            code="sftp_host_key_insecure",
        )
    try:
        key = paramiko.Ed25519Key.from_private_key_file(str(path))
    except (paramiko.SSHException, ValueError) as exc:
        raise ApplicationError(
            f"The SFTP host key {path} is not a usable Ed25519 key ({exc}). It "
            "is never regenerated: restore it, or remove it to make a new one "
            "(clients will then warn about a changed host key).",
            code="sftp_host_key_invalid",
        ) from None
    return _host_key_info(key, path)


@audit_exempt("server start-up: writes no tenant or platform data")
def sftp_host_key_ensure(*, path: Path | None = None) -> HostKey:
    """Load the server's Ed25519 host key, creating it (0600) the first time.

    An existing file is never replaced: a damaged or world-readable key
    raises `ApplicationError` instead. Two processes starting at once
    create one key (the second finds the first's file).
    """
    path = Path(path or sftp_host_key_default_path())
    if path.exists():
        return _host_key_load(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # link() refuses to replace: the first process to get here wins.
            os.link(temp, path)
        except FileExistsError:
            return _host_key_load(path)
    finally:
        temp.unlink(missing_ok=True)
    pub_path = path.with_name(path.name + ".pub")
    pub_path.write_bytes(public + b" portal-sftpd\n")
    return _host_key_load(path)


@audit_exempt("read")
def sftp_host_key_fingerprints(*, path: Path | None = None) -> HostKey | None:
    """The host key's fingerprints for `/edi/`, or None before first start."""
    path = Path(path or sftp_host_key_default_path())
    if not path.exists():
        return None
    return _host_key_load(path)


# -- sign-in -----------------------------------------------------------------


@dataclass(frozen=True)
class SftpLogin:
    """Who signed in; plain values, so it can cross threads and schemas."""

    tenant_id: int
    schema_name: str
    username: str
    key_id: int
    key_name: str
    fingerprint: str

    @property
    def actor_label(self) -> str:
        return f"{self.key_name} ({self.fingerprint})"[:254]


def _banned_until(
    *, column: str, value: str, threshold: int, window: timedelta, ban: timedelta
) -> datetime | None:
    """End of the ban that `threshold` failures within `window` started.

    A ban starts at the failure that completes a run of `threshold` within
    any `window` and lasts `ban`. Counted in SQL over the shared rows.
    """
    now = timezone.now()
    table = SftpAuthEvent._meta.db_table
    with schema_context("public"), connection.cursor() as cursor:
        # The column name comes from this module, never from input.
        cursor.execute(
            f"""
            SELECT max(occurred_at) FROM (
                SELECT occurred_at, count(*) OVER (
                    ORDER BY occurred_at
                    RANGE BETWEEN %s::interval PRECEDING AND CURRENT ROW
                ) AS n
                FROM {table}
                WHERE {column} = %s AND NOT succeeded AND occurred_at > %s
            ) AS runs
            WHERE n >= %s
            """,  # noqa: S608
            [
                f"{int(window.total_seconds())} seconds",
                value,
                now - window - ban,
                threshold,
            ],
        )
        row = cursor.fetchone()
    started = row[0] if row else None
    if started is None or started + ban <= now:
        return None
    until: datetime = started + ban
    return until


@audit_exempt("read")
def sftp_ip_banned_until(
    *, ip: str, limits: SftpLimits = DEFAULT_LIMITS
) -> datetime | None:
    """When the ban on `ip` ends (10 failures in 10 minutes: 30 minutes)."""
    return _banned_until(
        column="ip",
        value=ip,
        threshold=limits.ip_failures,
        window=limits.ip_window,
        ban=limits.ip_ban,
    )


@audit_exempt("read")
def sftp_username_blocked_until(
    *, username: str, ip: str, limits: SftpLimits = DEFAULT_LIMITS
) -> datetime | None:
    """When the block on `username` ends for `ip`; None if not blocked.

    30 failures in 10 minutes block a username for 15 minutes, except from
    IPs that signed in as it within 30 days: otherwise anyone could lock
    the HR system out.
    """
    until = _banned_until(
        column="username",
        value=username,
        threshold=limits.username_failures,
        window=limits.username_window,
        ban=limits.username_block,
    )
    if until is None:
        return None
    with schema_context("public"):
        trusted = SftpAuthEvent.objects.filter(
            username=username,
            ip=ip,
            succeeded=True,
            occurred_at__gte=timezone.now() - limits.trusted_ip_window,
        ).exists()
    return None if trusted else until


def _account(username: str) -> Tenant | None:
    with schema_context("public"):
        account = (
            SftpAccount.objects.select_related("tenant")
            .filter(username=username)
            .first()
        )
    return account.tenant if account is not None else None


def _record(username: str, ip: str, *, succeeded: bool) -> None:
    with schema_context("public"):
        SftpAuthEvent.objects.create(
            username=username[:100], ip=ip, succeeded=succeeded
        )


@audits("edi.sftp.login_failed", "platform.sftp.login_failed")
def sftp_login_failed(
    *,
    username: str,
    ip: str,
    reason: str,
    method: str = "publickey",
    fingerprint: str = "",
) -> None:
    """Count a failed sign-in and audit it with the IP and key fingerprint.

    The audit event goes to the tenant's log when `username` names an
    active tenant, else to the platform log (the tenant is unknown, or
    inactive and its schema may be going away). Works from any schema.
    """
    username = username[:100]
    _record(username, ip, succeeded=False)
    changes = {
        "username": username,
        "ip": ip,
        "method": method,
        "reason": reason,
        "fingerprint": fingerprint,
    }
    tenant = _account(username)
    with context.actor_context(
        actor_type="anonymous", actor_id="", actor_label=username, ip=ip, source="sftp"
    ):
        if tenant is not None and tenant.status == TenantStatus.ACTIVE:
            with tenant_context(tenant):
                audit_event_record(
                    action="edi.sftp.login_failed",
                    target_label=username,
                    changes=changes,
                )
        else:
            platform_audit_record(
                action="platform.sftp.login_failed",
                tenant=tenant,
                changes=changes,
                target_type="sftp_account",
                target_id=username,
            )


@audits("edi.sftp.login_failed", "platform.sftp.login_failed")
def sftp_login_check_key(
    *,
    username: str,
    ip: str,
    key_blob: bytes,
    key_type: str,
    key_bits: int,
    limits: SftpLimits = DEFAULT_LIMITS,
) -> SftpLogin | None:
    """May this public key sign in as `username` from `ip`?

    Returns the login when the IP is not banned, the username is not
    blocked for this IP, the username names an active tenant and the key
    is one of that tenant's keys (and of an allowed algorithm and size).
    Otherwise records one failure (`sftp_login_failed`) and returns None:
    an unknown user and a wrong key get the same answer. The caller must
    still check the client's signature and then call
    `sftp_login_succeeded`. Works from any schema.
    """
    username = username[:100]  # longer than any slug; bounded for the logs
    fingerprint = sftp_key_fingerprint(key_blob)
    reason = ""
    login: SftpLogin | None = None
    if sftp_ip_banned_until(ip=ip, limits=limits) is not None:
        reason = "ip_banned"
    elif (
        sftp_username_blocked_until(username=username, ip=ip, limits=limits) is not None
    ):
        reason = "username_blocked"
    elif key_type not in ALLOWED_KEY_TYPES or (
        key_type == "ssh-rsa" and key_bits < MIN_RSA_BITS
    ):
        reason = "key_refused"
    else:
        tenant = _account(username)
        if tenant is None:
            reason = "unknown_username"
        elif tenant.status != TenantStatus.ACTIVE:
            reason = "tenant_inactive"
        else:
            with tenant_context(tenant):
                sftp_key = SftpKey.objects.filter(fingerprint=fingerprint).first()
            expected = f"{key_type} {base64.b64encode(key_blob).decode()}"
            if sftp_key is None or sftp_key.public_key != expected:
                reason = "unknown_key"
            else:
                login = SftpLogin(
                    tenant_id=tenant.pk,
                    schema_name=tenant.schema_name,
                    username=username,
                    key_id=sftp_key.pk,
                    key_name=sftp_key.name,
                    fingerprint=fingerprint,
                )
    if login is None:
        sftp_login_failed(
            username=username, ip=ip, reason=reason, fingerprint=fingerprint
        )
    return login


def _tenant_for(login: SftpLogin) -> Tenant:
    with schema_context("public"):
        return Tenant.objects.get(pk=login.tenant_id)


@audits("edi.sftp.login_succeeded")
def sftp_login_succeeded(*, login: SftpLogin, ip: str) -> None:
    """Record a proven sign-in: the shared counter, the key's last use and
    the tenant's audit log. Works from any schema."""
    _record(login.username, ip, succeeded=True)
    with (
        tenant_context(_tenant_for(login)),
        context.actor_context(
            actor_type="sftp_key",
            actor_id=str(login.key_id),
            actor_label=login.actor_label,
            ip=ip,
            source="sftp",
        ),
        transaction.atomic(),
    ):
        SftpKey.objects.filter(pk=login.key_id).update(
            last_used_at=timezone.now(), last_used_ip=ip
        )
        audit_event_record(
            action="edi.sftp.login_succeeded",
            target_label=login.username,
            changes={
                "username": login.username,
                "ip": ip,
                "fingerprint": login.fingerprint,
                "key": login.key_name,
            },
        )


@audit_exempt("housekeeping: drops expired counters")
def sftp_auth_events_prune(*, older_than: timedelta = AUTH_EVENT_RETENTION) -> int:
    """Delete sign-in counters older than any rule looks (daily upkeep)."""
    with schema_context("public"):
        deleted, _ = SftpAuthEvent.objects.filter(
            occurred_at__lt=timezone.now() - older_than
        ).delete()
    return deleted


# -- sessions ----------------------------------------------------------------


def _lock_key(scope: str, value: str, slot: int) -> int:
    digest = hashlib.sha256(f"sftp-session:{scope}:{value}:{slot}".encode()).digest()
    key: int = struct.unpack(">q", digest[:8])[0]
    return key


class SessionSlots:
    """One tenant slot and one IP slot, held as PostgreSQL advisory locks.

    The locks live on a dedicated connection (not Django's, which belongs
    to one thread): `release()` closes it, and so does a process that dies.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn: psycopg.Connection[Any] | None = conn
        self._lock = threading.Lock()

    def release(self) -> None:
        """Free both slots; safe to call again, from any thread."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _take_slot(
    conn: psycopg.Connection[Any], scope: str, value: str, limit: int
) -> bool:
    for slot in range(limit):
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s)", [_lock_key(scope, value, slot)]
        ).fetchone()
        if row and row[0]:
            return True
    return False


@audits("edi.sftp.session_refused")
def sftp_session_open(
    *, login: SftpLogin, ip: str, limits: SftpLimits = DEFAULT_LIMITS
) -> SessionSlots:
    """Take a session slot for the tenant and one for the IP.

    At most `sessions_per_tenant` sessions per tenant and
    `sessions_per_ip` per IP, across every sftpd process. Raises
    `SessionLimitReached` (audited in the tenant's log) when either is
    full. The caller must `release()` the slots when the session ends.
    """
    import psycopg

    params = connection.get_connection_params()
    conn = psycopg.connect(**params, autocommit=True)
    scope = ""
    try:
        limit = limits.sessions_per_tenant
        if not _take_slot(conn, "tenant", login.schema_name, limit):
            scope = "tenant"
        elif not _take_slot(conn, "ip", ip, limits.sessions_per_ip):
            scope, limit = "ip", limits.sessions_per_ip
    except BaseException:
        conn.close()
        raise
    if not scope:
        return SessionSlots(conn)
    conn.close()
    with (
        tenant_context(_tenant_for(login)),
        context.actor_context(
            actor_type="sftp_key",
            actor_id=str(login.key_id),
            actor_label=login.actor_label,
            ip=ip,
            source="sftp",
        ),
    ):
        audit_event_record(
            action="edi.sftp.session_refused",
            target_label=login.username,
            changes={
                "scope": scope,
                "limit": limit,
                "ip": ip,
                "fingerprint": login.fingerprint,
            },
        )
    what = "this account" if scope == "tenant" else "your address"
    raise SessionLimitReached(
        f"Too many SFTP sessions for {what} (at most {limit}).",
        details={"scope": scope, "limit": limit},
    )


# -- the virtual root and uploads --------------------------------------------

_UPLOAD_NAME_RE = re.compile(r"^[^/\x00-\x1f\x7f]{1,251}\.csv$", re.IGNORECASE)


@audit_exempt("pure: path arithmetic")
def sftp_path_resolve(*, root: str, path: str) -> str:
    """The real path that the client's `path` names inside `root`.

    The client's path is normalised, joined to the root (an absolute path
    counts from the root) and resolved with `realpath`; the result must be
    the root or lie under it. `/t1` is not under `/t10`. Raises
    `PathOutsideRoot` otherwise (`..`, symlinks out, NUL bytes).
    """
    if "\x00" in path:
        raise PathOutsideRoot("Invalid path.")
    relative = posixpath.normpath(path.lstrip("/") or ".")
    resolved = os.path.realpath(os.path.join(root, relative))
    if resolved != root and not resolved.startswith(root + os.sep):
        raise PathOutsideRoot("The path is outside your directory.")
    return resolved


@audit_exempt("pure: path arithmetic")
def sftp_virtual_path(path: str) -> str:
    """What the client sees as the canonical form of `path` ("/" = root)."""
    return posixpath.normpath("/" + path.lstrip("/")) if path else "/"


@audit_exempt("pure: validation")
def sftp_upload_name_allowed(name: str) -> bool:
    """A `*.csv` name that is not hidden (parts of uploads start with '.')."""
    return bool(_UPLOAD_NAME_RE.match(name)) and not name.startswith(".")


@audit_exempt("pure: derives a mode")
def sftp_upload_mode(name: str) -> str | None:
    """DESIGN.md: `full…` is full, `delta…` is delta, else the default."""
    lowered = name.lower()
    if lowered.startswith("full"):
        return EdiMode.FULL
    if lowered.startswith("delta"):
        return EdiMode.DELTA
    return None


@audits("edi.sftp.path_denied")
def sftp_path_denied(*, operation: str, path: str, fingerprint: str) -> None:
    """Audit a path outside the root (EDI §7: traversal is audited).

    Runs in the session's tenant context, which carries the IP.
    """
    audit_event_record(
        action="edi.sftp.path_denied",
        changes={
            "operation": operation,
            "path": path[:500],
            "fingerprint": fingerprint,
        },
    )


@audits("edi.sftp.upload_refused")
def sftp_upload_refused(*, name: str, reason: str, size: int, fingerprint: str) -> None:
    """Audit an upload that was cut off (too large, write error).

    Runs in the session's tenant context; nothing is imported.
    """
    audit_event_record(
        action="edi.sftp.upload_refused",
        changes={
            "name": name[:255],
            "reason": reason,
            "size": size,
            "fingerprint": fingerprint,
        },
    )


@audits("edi.file.received", "edi.file.duplicate", "edi.sftp.upload_empty")
def sftp_upload_receive(
    *, writer: SpoolWriter, original_name: str, sftp_key_id: int
) -> EdiFile:
    """Make a closed upload durable and receive it as an EDI file.

    Runs in the session's tenant context. fsyncs and renames the part
    (`SpoolWriter.finish`), then `edi_file_receive` (source `sftp`, the
    mode from the name) commits the `EdiFile` and enqueues the import.
    Returns only once that is committed. A zero-byte upload is audited
    (`edi.sftp.upload_empty`) and `EmptyFile` is raised: nothing imported.
    """
    spooled = writer.finish()
    sftp_key = SftpKey.objects.filter(pk=sftp_key_id).first()
    try:
        return edi_file_receive(
            spooled=spooled,
            source=EdiSource.SFTP,
            original_name=original_name,
            mode=sftp_upload_mode(original_name),
            sftp_key=sftp_key,
        )
    except EmptyFile:
        audit_event_record(
            action="edi.sftp.upload_empty",
            changes={
                "name": original_name[:255],
                "fingerprint": sftp_key.fingerprint if sftp_key else "",
            },
        )
        raise
