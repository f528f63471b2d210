"""Downloading a file's per-row results (EDI-P10, P11): audited, decrypted."""

from __future__ import annotations

from collections.abc import Iterator

from edi.models import EdiFile
from edi.services.receive import KEY_PURPOSE, media_dir
from portal.errors import ApplicationError, Conflict
from portal.services.audit import audit_event_record
from portal.services.keyring import keyring_file_open
from portal.services.registry import audits


class EdiFilePurged(ApplicationError):
    """The file's raw bytes and results were deleted after retention."""

    code = "purged"
    status = 410

    def __init__(self) -> None:
        super().__init__("The results were deleted after the retention period.")


@audits("edi.file.results_downloaded")
def results_open(edi_file: EdiFile) -> Iterator[bytes]:
    """The results CSV's bytes (already neutralised when written).

    Raises `EdiFilePurged` (410 `purged`) for a file past its retention
    (also when the purge ran a moment ago) and `Conflict` (409
    `not_ready`) before the results are written. The file is opened and
    its first chunk decrypted before the download is recorded (who, from
    the request context) and before any byte is returned, so a caller
    never starts an answer it cannot finish.
    """
    if edi_file.purged_at is not None:
        raise EdiFilePurged()
    if not edi_file.results_name:
        raise Conflict(
            "The results are not ready yet.",
            code="not_ready",
            details={"status": edi_file.status},
        )
    chunks = keyring_file_open(
        purpose=KEY_PURPOSE,
        file_id=edi_file.results_name,
        path=media_dir() / edi_file.results_name,
    )
    try:
        first = next(chunks, b"")
    except FileNotFoundError:
        if EdiFile.objects.filter(pk=edi_file.pk, purged_at__isnull=False).exists():
            raise EdiFilePurged() from None
        raise
    audit_event_record(
        action="edi.file.results_downloaded",
        target=edi_file,
        changes={"name": edi_file.results_name},
    )
    return _chain(first, chunks)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
