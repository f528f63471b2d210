"""The per-tenant encryption keyring (PORTAL-19..21).

Each tenant schema holds versioned data keys per purpose, stored only
wrapped by the master key (AES-256-GCM, associated data: schema, purpose,
version). Unwrapped keys stay in process memory for at most 60 seconds and
never reach caches, the broker, logs or task arguments. Destroying a key
nulls its wrapped bytes: everything encrypted under it is gone
(crypto-shredding). All functions work in the current tenant's schema.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from portal import crypto
from portal.crypto import KeyDestroyed, MasterKey, SecretBytes
from portal.db import current_schema, row_first
from portal.errors import TenantContextError
from portal.models import DataKey, DataKeyState
from portal.services.registry import audit_exempt, audits

PURPOSES = ("secrets", "sso", "edi", "pointdrive", "exports")
CACHE_SECONDS = 60
_CANARY = b"portal keyring canary"
_cache: dict[tuple[str, str, int], tuple[float, SecretBytes]] = {}
_cache_lock = threading.Lock()


@audit_exempt("read: parses settings")
def master_keys() -> list[MasterKey]:
    return crypto.parse_master_keys(settings.PORTAL_MASTER_KEY)


def _scope() -> str:
    """The current tenant's id, which binds keys and fields to this tenant.

    Tenant ids are never reused; schema names come back when a slug is
    provisioned again, so a restored key must not match by schema name.
    """
    schema = current_schema()
    if schema == "public":
        raise TenantContextError("The keyring works only in a tenant schema.")
    tenant = getattr(connection, "tenant", None)
    tenant_id = None
    if getattr(tenant, "schema_name", None) == schema:
        tenant_id = getattr(tenant, "pk", None)
    if tenant_id is None:
        from tenants.models import Tenant

        tenant_id = (
            Tenant.objects.filter(schema_name=schema)
            .values_list("pk", flat=True)
            .first()
        )
    if tenant_id is None:
        raise TenantContextError(f"No tenant owns the schema {schema!r}.")
    return f"tenant-{tenant_id}"


def _aad(schema: str, purpose: str, version: int) -> bytes:
    return f"{schema}|{purpose}|{version}".encode()


def _unwrap(row: DataKey, schema: str) -> SecretBytes:
    if row.state == DataKeyState.DESTROYED or row.wrapped is None:
        raise KeyDestroyed(f"{row.purpose} key v{row.version} was destroyed.")
    for master in master_keys():
        if master.id == row.master_key_id:
            return crypto.unwrap_key(
                master, bytes(row.wrapped), aad=_aad(schema, row.purpose, row.version)
            )
    raise crypto.DecryptionError(
        f"Master key {row.master_key_id} is not configured in PORTAL_MASTER_KEY."
    )


def _sweep(now: float) -> None:
    # Caller holds the lock. Expired keys leave memory on any access, not
    # only when the same key is asked for again (PORTAL-19: at most 60 s).
    for cache_key in [k for k, (expires, _) in _cache.items() if expires <= now]:
        del _cache[cache_key]


def _cached(schema: str, purpose: str, version: int) -> SecretBytes | None:
    with _cache_lock:
        _sweep(time.monotonic())
        entry = _cache.get((schema, purpose, version))
        return entry[1] if entry else None


def _remember(schema: str, purpose: str, version: int, key: SecretBytes) -> None:
    with _cache_lock:
        now = time.monotonic()
        _sweep(now)
        _cache[(schema, purpose, version)] = (now + CACHE_SECONDS, key)


@audit_exempt("clears process memory only")
def keyring_forget() -> None:
    """Drop every unwrapped key from this process's memory."""
    with _cache_lock:
        _cache.clear()


@audit_exempt("creating a missing key is part of the first encryption")
def keyring_active_key(*, purpose: str) -> tuple[int, SecretBytes]:
    """Return (version, key) of the purpose's active key, creating v1 if none."""
    if purpose not in PURPOSES:
        raise ValueError(f"Unknown key purpose {purpose!r}")
    schema = _scope()
    # Read on every encryption: row_first skips the query compiler.
    row = row_first(
        DataKey, "purpose = %s AND state = %s", [purpose, DataKeyState.ACTIVE]
    )
    if row is None:
        row = _create_key(purpose=purpose, schema=schema)
    key = _cached(schema, purpose, row.version)
    if key is None:
        key = _unwrap(row, schema)
        _remember(schema, purpose, row.version, key)
    return row.version, key


def _create_key(*, purpose: str, schema: str) -> DataKey:
    with transaction.atomic():
        # Serialise creation per purpose so two first writers agree.
        connection.cursor().execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))",
            [f"keyring:{schema}:{purpose}"],
        )
        existing = DataKey.objects.filter(
            purpose=purpose, state=DataKeyState.ACTIVE
        ).first()
        if existing is not None:
            return existing
        last = DataKey.objects.filter(purpose=purpose).order_by("-version").first()
        version = (last.version + 1) if last else 1
        return _store_new_key(purpose=purpose, version=version, schema=schema)


def _store_new_key(*, purpose: str, version: int, schema: str) -> DataKey:
    key = crypto.new_data_key()
    master = master_keys()[0]
    row = DataKey(
        purpose=purpose,
        version=version,
        state=DataKeyState.ACTIVE,
        wrapped=crypto.wrap_key(master, key, aad=_aad(schema, purpose, version)),
        master_key_id=master.id,
        fingerprint=crypto.key_fingerprint(key),
        canary=crypto.encrypt_field(key, version, _CANARY, aad=b"canary"),
    )
    row.save()
    # Only once the row is committed: a rolled-back key must never be used.
    transaction.on_commit(lambda: _remember(schema, purpose, version, key))
    return row


@audit_exempt("read: unwraps an existing key")
def keyring_key(*, purpose: str, version: int) -> SecretBytes:
    """Return a specific key version; raises `KeyDestroyed` once shredded."""
    schema = _scope()
    key = _cached(schema, purpose, version)
    if key is not None:
        return key
    row = DataKey.objects.filter(purpose=purpose, version=version).first()
    if row is None:
        raise KeyDestroyed(f"No {purpose} key v{version} in this tenant.")
    key = _unwrap(row, schema)
    _remember(schema, purpose, version, key)
    return key


@audit_exempt("pure: builds associated data")
def field_aad(*, table: str, column: str, pk: object) -> bytes:
    return f"{_scope()}|{table}|{column}|{pk}".encode()


@audit_exempt("encrypts bytes for a caller that audits its write")
def keyring_encrypt(*, purpose: str, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt a field value under the purpose's active key."""
    version, key = keyring_active_key(purpose=purpose)
    return crypto.encrypt_field(key, version, plaintext, aad=aad)


@audit_exempt("read: decrypts bytes")
def keyring_decrypt(*, purpose: str, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a field value; `KeyDestroyed` if its key was shredded."""
    version = crypto.field_version(blob)
    return crypto.decrypt_field(
        keyring_key(purpose=purpose, version=version), blob, aad=aad
    )


class _ChunksReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


@audit_exempt("pure: adapts an iterator of bytes to a file object")
def chunks_reader(chunks: Iterator[bytes]) -> BinaryIO:
    """A buffered, readable file over `chunks` (for `keyring_file_store`)."""
    return io.BufferedReader(_ChunksReader(chunks), buffer_size=1 << 20)


_FILE_PREFIX = struct.Struct(">4sIH")  # magic, key version, wrapped-key length
_FILE_MAGIC = b"PKF1"


@audit_exempt("writes a file for a caller that audits its write")
def keyring_file_store(*, purpose: str, file_id: str, src: BinaryIO, path: Path) -> int:
    """Encrypt `src` into `path` with a fresh per-file key; return its size.

    The file key is wrapped by the purpose key and stored in the file's
    prefix, so destroying the purpose key shreds every file under it. Writes
    to a temporary name and renames, so a crash leaves no half file.
    """
    version, purpose_key = keyring_active_key(purpose=purpose)
    file_key = crypto.new_data_key()
    wrapped = crypto.wrap_key(
        crypto.MasterKey(id="file", key=purpose_key), file_key, aad=file_id.encode()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: two deliveries of one job must not share a file.
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.part")
    with open(tmp, "wb") as dst:
        dst.write(_FILE_PREFIX.pack(_FILE_MAGIC, version, len(wrapped)))
        dst.write(wrapped)
        size = crypto.encrypt_stream(
            file_key, src, dst, file_id=file_id, size=_source_size(src)
        )
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    return size


def _source_size(src: BinaryIO) -> int:
    """The source's remaining size, or UNKNOWN_SIZE for a generator stream."""
    try:
        if src.seekable():
            here = src.tell()
            end = src.seek(0, os.SEEK_END)
            src.seek(here)
            return end - here
    except (OSError, ValueError):
        pass
    return crypto.UNKNOWN_SIZE


@audit_exempt("read: decrypts a file")
def keyring_file_open(*, purpose: str, file_id: str, path: Path) -> Iterator[bytes]:
    """Yield the verified plaintext of a file written by `keyring_file_store`."""
    with open(path, "rb") as src:
        magic, version, length = _FILE_PREFIX.unpack(src.read(_FILE_PREFIX.size))
        if magic != _FILE_MAGIC:
            raise crypto.DecryptionError("Not a keyring file.")
        purpose_key = keyring_key(purpose=purpose, version=version)
        file_key = crypto.unwrap_key(
            crypto.MasterKey(id="file", key=purpose_key),
            src.read(length),
            aad=file_id.encode(),
        )
        yield from crypto.decrypt_stream(file_key, src, file_id=file_id)


@audits("portal.keyring.rotated")
@transaction.atomic
def keyring_rotate(*, purpose: str) -> DataKey:
    """Make a new active version of `purpose`; the old one is retired.

    Data under the retired version stays readable until a re-encryption job
    moves it and the retired key is destroyed.
    """
    from portal.services.audit import audit_event_record

    schema = _scope()
    # Evaluate the queryset: an unevaluated select_for_update locks nothing.
    list(DataKey.objects.select_for_update().filter(purpose=purpose))
    current = DataKey.objects.filter(purpose=purpose, state=DataKeyState.ACTIVE).first()
    if current is not None:
        current.state = DataKeyState.RETIRED
        current.save(update_fields=["state"])
    last = DataKey.objects.filter(purpose=purpose).order_by("-version").first()
    row = _store_new_key(
        purpose=purpose, version=(last.version + 1) if last else 1, schema=schema
    )
    audit_event_record(
        action="portal.keyring.rotated",
        target=row,
        changes={"purpose": purpose, "version": row.version},
    )
    return row


@audits("portal.keyring.destroyed")
@transaction.atomic
def keyring_destroy(*, purpose: str | None = None) -> list[str]:
    """Crypto-shred: null the wrapped bytes of `purpose`'s keys (all if None).

    Returns the fingerprints destroyed. Backups, WAL and dead tuples keep
    wrapped copies until they age out; retiring the master key ends that.
    """
    from portal.services.audit import audit_event_record

    rows = DataKey.objects.select_for_update().exclude(state=DataKeyState.DESTROYED)
    if purpose is not None:
        rows = rows.filter(purpose=purpose)
    destroyed: list[str] = []
    now = timezone.now()
    for row in rows:
        row.wrapped = None
        row.state = DataKeyState.DESTROYED
        row.destroyed_at = now
        row.save(update_fields=["wrapped", "state", "destroyed_at"])
        destroyed.append(row.fingerprint)
    keyring_forget()
    if destroyed:
        audit_event_record(
            action="portal.keyring.destroyed",
            changes={"purpose": purpose or "all", "fingerprints": destroyed},
        )
    return destroyed


@audits("portal.keyring.rewrapped")
@transaction.atomic
def keyring_rewrap() -> int:
    """Re-wrap every live key with the newest master key (master rotation).

    Touches no data. Returns how many keys moved.
    """
    from portal.services.audit import audit_event_record

    schema = _scope()
    newest = master_keys()[0]
    moved = 0
    for row in DataKey.objects.select_for_update().exclude(
        state=DataKeyState.DESTROYED
    ):
        if row.master_key_id == newest.id:
            continue
        key = _unwrap(row, schema)
        row.wrapped = crypto.wrap_key(
            newest, key, aad=_aad(schema, row.purpose, row.version)
        )
        row.master_key_id = newest.id
        row.save(update_fields=["wrapped", "master_key_id"])
        moved += 1
    if moved:
        audit_event_record(
            action="portal.keyring.rewrapped",
            changes={"keys": moved, "master": newest.id},
        )
    return moved


@audit_exempt("read: verification")
def keyring_canary_ok(*, purpose: str, version: int) -> bool:
    """True when the key still decrypts its canary (False once destroyed)."""
    row = DataKey.objects.filter(purpose=purpose, version=version).first()
    if row is None:
        return False
    try:
        key = _unwrap(row, _scope())
        return crypto.decrypt_field(key, bytes(row.canary), aad=b"canary") == _CANARY
    except (KeyDestroyed, crypto.DecryptionError):
        return False
