"""Email about a finished, rejected, failed or held EDI file (EDI-P12)."""

from __future__ import annotations

from edi.models import EdiFile


def edi_file_notify(*, edi_file: EdiFile) -> None:
    """Queue the status email for this file in the caller's transaction."""
    # Written by the EDI-P12 work in progress this session.
    return None
