"""Downloading a file's per-row results (EDI-P10, P11): audited, decrypted."""

from __future__ import annotations

from collections.abc import Iterator

from edi.models import EdiFile
from edi.services.receive import KEY_PURPOSE, media_dir
from portal.services.audit import audit_event_record
from portal.services.keyring import keyring_file_open
from portal.services.registry import audits


@audits("edi.file.results_downloaded")
def results_open(edi_file: EdiFile) -> Iterator[bytes]:
    """The results CSV's bytes (already neutralised when written).

    Records the download (who, from the request context) before the first
    byte; the caller checked that `edi_file.results_name` is set and the
    file is not purged.
    """
    audit_event_record(
        action="edi.file.results_downloaded",
        target=edi_file,
        changes={"name": edi_file.results_name},
    )
    return keyring_file_open(
        purpose=KEY_PURPOSE,
        file_id=edi_file.results_name,
        path=media_dir() / edi_file.results_name,
    )
