"""The SFTP server's persistent host key and its fingerprints (EDI-C3)."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings

from edi.services.sftp.keys import sftp_key_fingerprint
from portal.errors import ApplicationError
from portal.services.registry import audit_exempt

if TYPE_CHECKING:
    import paramiko


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
