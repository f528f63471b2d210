"""The upload spool: where a file's plaintext lives until it is received.

Every channel writes through `SpoolWriter`: a `.part-<random>` file created
with `O_EXCL | O_NOFOLLOW`, mode 0600, in the tenant's spool directory, an
incremental SHA-256, and the size limit `EDI_MAX_FILE_BYTES` enforced by
the highest offset written (a sparse write past the limit is refused like
a long one). `finish()` fsyncs and renames to a generated name; the
receive service then encrypts it into the tenant's media and deletes it.
Parts left by a crash or a dropped connection are removed by
`spool_sweep()` and never imported.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from portal.errors import ApplicationError
from portal.services.registry import audit_exempt

PART_PREFIX = ".part-"
PART_MAX_AGE_SECONDS = 6 * 3600


class FileTooLarge(ApplicationError):
    code = "file_too_large"
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The file is larger than the limit of {limit:,} bytes.",
            details={"limit_bytes": limit},
        )


@dataclass(frozen=True)
class Spooled:
    """A complete, fsynced upload in the spool."""

    path: Path
    sha256: str
    size: int


@audit_exempt("a path or a setting, no change")
def spool_dir(schema_name: str) -> Path:
    """The tenant's spool directory (0700), created on demand."""
    if not schema_name or schema_name == "public" or "/" in schema_name:
        raise ValueError(f"No spool for schema {schema_name!r}")
    root = Path(settings.PORTAL_DATA_DIR) / "edi-spool"
    path = root / schema_name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@audit_exempt("a path or a setting, no change")
def max_file_bytes() -> int:
    return int(settings.EDI_MAX_FILE_BYTES)


class SpoolWriter:
    """Write one upload; `finish()` makes it durable, `abort()` removes it."""

    def __init__(self, schema_name: str, *, limit: int | None = None) -> None:
        self.directory = spool_dir(schema_name)
        self.limit = max_file_bytes() if limit is None else limit
        self.path = self.directory / f"{PART_PREFIX}{secrets.token_hex(16)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        self._fd: int | None = os.open(self.path, flags, 0o600)
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes hashed so far, in order
        self._in_order = True
        self.size = 0  # the highest offset written

    def write(self, data: bytes) -> None:
        """Append `data` (the HTTPS and browser channels)."""
        self.write_at(self.size, data)

    def write_at(self, offset: int, data: bytes) -> None:
        """Write at `offset` (SFTP); raises `FileTooLarge` past the limit."""
        if self._fd is None:
            raise ValueError("The spool file is closed.")
        end = offset + len(data)
        if offset < 0 or end > self.limit:
            raise FileTooLarge(self.limit)
        os.pwrite(self._fd, data, offset)
        if self._in_order and offset == self._hashed:
            self._hash.update(data)
            self._hashed = end
        elif data:
            self._in_order = False
        self.size = max(self.size, end)

    def finish(self) -> Spooled:
        """fsync, rename to a final generated name, fsync the directory."""
        if self._fd is None:
            raise ValueError("The spool file is closed.")
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        digest = self._hash.hexdigest()
        if not self._in_order or self._hashed != self.size:
            digest = _sha256_of(self.path)
        final = self.directory / f"{secrets.token_hex(16)}.csv"
        os.replace(self.path, final)
        _fsync_dir(self.directory)
        return Spooled(path=final, sha256=digest, size=self.size)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        if exc_type is not None or self._fd is not None:
            self.abort()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@audit_exempt("removes abandoned upload parts, never imported files")
def spool_sweep(*, older_than: float = PART_MAX_AGE_SECONDS) -> int:
    """Delete abandoned parts and received leftovers in every tenant's spool."""
    root = Path(settings.PORTAL_DATA_DIR) / "edi-spool"
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for tenant_dir in root.iterdir():
        if not tenant_dir.is_dir() or tenant_dir.is_symlink():
            continue
        for entry in tenant_dir.iterdir():
            try:
                if entry.is_file() and entry.lstat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
