"""SFTP sign-in decisions and limits (EDI-C3).

`tenants.SftpAuthEvent` (public) holds every sign-in outcome: the counters
that every `sftpd` process shares for the per-IP ban and the per-username
block. Concurrent sessions are counted with PostgreSQL session-level
advisory locks, one lock per slot, held on a dedicated connection for the
life of the session (`SessionSlots`); a crashed process releases its slots
when its connections drop."""

from __future__ import annotations

import base64
import hashlib
import struct
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from edi.models import SftpKey
from edi.services.sftp.keys import (
    ALLOWED_KEY_TYPES,
    MIN_RSA_BITS,
    sftp_key_fingerprint,
)
from portal import context
from portal.errors import ApplicationError
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits
from tenants.models import SftpAccount, SftpAuthEvent, Tenant, TenantStatus
from tenants.services.platform import platform_audit_record

if TYPE_CHECKING:
    import psycopg


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


class SessionLimitReached(ApplicationError):
    code = "sftp_session_limit"
    status = 429


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
