"""Deleting raw files and results after the retention period (EDI-P10).

The daily upkeep task calls `edi_retention_purge` for each tenant. A file
past `EdiSettings.retention_days` (counted from `received_at`) loses its
encrypted raw blob and its encrypted results file, and its row loses the
employee data it quotes (the preview's sample rows, the keys of a
DUPLICATE_KEY error); the row, its `sha256`, counts, error codes and lines
stay, with `purged_at` set. Downloads of a
purged file answer 410 `purged` (`edi.services.results`).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from edi.models import FINAL_STATUSES, EdiFile
from edi.services.receive import edi_settings_get, media_dir, raw_blob_path
from portal.services.audit import audit_event_record
from portal.services.registry import audits

BATCH = 500


@audits("edi.file.purged")
def edi_retention_purge() -> int:
    """Purge the current tenant's final files past retention; returns count.

    Only final files are touched (a held or running file keeps its raw
    bytes however old it is). Each file is purged in its own transaction
    under a row lock: the blobs are deleted, then `purged_at` and one
    `edi.file.purged` audit event commit together. Idempotent: a purged
    file is skipped, and a run interrupted between deleting and committing
    is finished by the next run (deleting a missing blob is not an error).
    """
    retention_days = edi_settings_get().retention_days
    cutoff = timezone.now() - timedelta(days=retention_days)
    due = EdiFile.objects.filter(
        received_at__lt=cutoff, purged_at__isnull=True, status__in=FINAL_STATUSES
    )
    purged = 0
    last_pk: uuid.UUID | None = None
    while True:
        batch = due.order_by("pk")
        if last_pk is not None:
            batch = batch.filter(pk__gt=last_pk)
        ids = list(batch.values_list("pk", flat=True)[:BATCH])
        if not ids:
            return purged
        last_pk = ids[-1]
        for pk in ids:
            if _purge_one(pk, cutoff=cutoff, retention_days=retention_days):
                purged += 1


def _purge_one(pk: uuid.UUID, *, cutoff: datetime, retention_days: int) -> bool:
    with transaction.atomic():
        edi_file = (
            EdiFile.objects.select_for_update(skip_locked=True)
            .filter(
                pk=pk,
                received_at__lt=cutoff,
                purged_at__isnull=True,
                status__in=FINAL_STATUSES,
            )
            .first()
        )
        if edi_file is None:
            return False
        deleted = []
        if edi_file.blob_name and _unlink(raw_blob_path(edi_file)):
            deleted.append("raw")
        if edi_file.results_name and _unlink(media_dir() / edi_file.results_name):
            deleted.append("results")
        edi_file.purged_at = timezone.now()
        edi_file.preview = _without_rows(edi_file.preview)
        edi_file.errors = [_error_without_rows(e) for e in edi_file.errors or []]
        edi_file.save(update_fields=["purged_at", "preview", "errors"])
        audit_event_record(
            action="edi.file.purged",
            target=edi_file,
            changes={
                "received_at": edi_file.received_at.isoformat(),
                "retention_days": retention_days,
                "deleted": deleted,
                "sha256": edi_file.sha256,
            },
        )
        return True


def _without_rows(preview: dict[str, Any] | None) -> dict[str, Any]:
    """The preview's counts and reasons; its sample rows name people."""
    return {k: v for k, v in (preview or {}).items() if k != "samples"}


def _error_without_rows(error: dict[str, Any]) -> dict[str, Any]:
    """File-level errors keep code, line and message, except the keys that
    DUPLICATE_KEY quotes (employee ids and emails)."""
    if error.get("code") != "DUPLICATE_KEY":
        return error
    return {
        "code": error["code"],
        "message": "The same key appeared on more than one row (the keys were "
        "removed after the retention period).",
    }


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
