"""The drop box's virtual root and uploads (EDI-C3)."""

from __future__ import annotations

import os
import posixpath
import re
from typing import TYPE_CHECKING

from edi.models import EdiFile, EdiMode, EdiSource, SftpKey
from edi.services.receive import EmptyFile, edi_file_receive
from edi.services.spool import SpoolWriter
from portal.errors import ApplicationError
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits

if TYPE_CHECKING:
    pass


class PathOutsideRoot(ApplicationError):
    code = "sftp_path_outside_root"
    status = 403


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
