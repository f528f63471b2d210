"""Receiving a file: the one entry point of every channel (edi.md §4, EDI-P1).

`edi_file_receive` takes a complete, fsynced upload from the spool,
encrypts it into the tenant's media with the keyring (purpose `edi`),
commits the `EdiFile` with its import `Job`, and removes the plaintext.
The import task is sent on commit, so a channel that got the file back has
a durable receipt: the bytes are on disk (encrypted, fsynced) and the row
is committed. A broker that is down loses nothing: the job stays queued
and the reaper sends it again.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from edi.models import (
    IN_FLIGHT_STATUSES,
    EdiFile,
    EdiMode,
    EdiSettings,
    EdiSource,
    EdiStatus,
    EdiToken,
    SftpKey,
)
from edi.services.spool import Spooled
from portal.db import current_schema
from portal.errors import ApplicationError
from portal.models import Job, Member
from portal.services.audit import audit_event_record
from portal.services.jobs import STALE_AFTER, job_create
from portal.services.keyring import keyring_file_store
from portal.services.registry import audit_exempt, audits

KEY_PURPOSE = "edi"
JOB_KIND = "edi_import"
IDEMPOTENCY_WINDOW = timedelta(hours=24)
# EDI-P14: this job kind's heartbeat limit before the reaper re-queues it.
STALE_AFTER[JOB_KIND] = timedelta(minutes=2)


class EmptyFile(ApplicationError):
    code = "empty_file"
    status = 400

    def __init__(self) -> None:
        super().__init__("The file is empty.")


@audit_exempt("read: creates the settings row with its defaults")
def edi_settings_get() -> EdiSettings:
    settings_row, _ = EdiSettings.objects.get_or_create(id=1)
    return settings_row


@audit_exempt("a path, no change")
def media_dir() -> Path:
    """`MEDIA_ROOT/<schema>/edi/` (TEN-13), created on demand."""
    schema = current_schema()
    if schema == "public":
        raise ValueError("EDI files belong to a tenant schema.")
    path = Path(settings.MEDIA_ROOT) / schema / "edi"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@audit_exempt("a path, no change")
def raw_blob_path(edi_file: EdiFile) -> Path:
    return media_dir() / edi_file.blob_name


@audits("edi.file.received", "edi.file.duplicate")
def edi_file_receive(
    *,
    spooled: Spooled,
    source: str,
    original_name: str = "",
    mode: str | None = None,
    dry_run: bool = False,
    uploaded_by: Member | None = None,
    token: EdiToken | None = None,
    sftp_key: SftpKey | None = None,
    idempotency_key: str = "",
) -> EdiFile:
    """Receive a spooled upload; returns its `EdiFile` (new or replayed).

    Raises `EmptyFile` (400) for zero bytes and `ApplicationError`
    `idempotency_conflict` (422) when `idempotency_key` was used by this
    token within 24 hours for different bytes; the same key with the same
    bytes returns the original file. A file whose SHA-256 matches the last
    applied file or one in flight ends `duplicate` at once (EDI-P9). The
    spool file is deleted in every case.
    """
    try:
        if source not in EdiSource.values:
            raise ValueError(f"Unknown EDI source {source!r}")
        if mode is not None and mode not in EdiMode.values:
            raise ApplicationError(
                "mode must be full or delta.", code="invalid_mode", status=400
            )
        if spooled.size == 0:
            raise EmptyFile()
        if idempotency_key:
            replay = _idempotent_replay(token, idempotency_key, spooled.sha256)
            if replay is not None:
                return replay
        try:
            return _receive(
                spooled=spooled,
                source=source,
                original_name=original_name[:255],
                mode=mode or edi_settings_get().default_mode,
                dry_run=dry_run,
                uploaded_by=uploaded_by,
                token=token,
                sftp_key=sftp_key,
                idempotency_key=idempotency_key[:200],
            )
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won the race.
            replay = _idempotent_replay(token, idempotency_key, spooled.sha256)
            if replay is None:
                raise
            return replay
    finally:
        spooled.path.unlink(missing_ok=True)


def _idempotent_replay(token: EdiToken | None, key: str, sha256: str) -> EdiFile | None:
    existing = EdiFile.objects.filter(token=token, idempotency_key=key).first()
    if existing is None:
        return None
    if timezone.now() - existing.received_at > IDEMPOTENCY_WINDOW:
        # An expired key may be used again: free it.
        EdiFile.objects.filter(pk=existing.pk).update(idempotency_key="")
        return None
    if existing.sha256 != sha256:
        raise ApplicationError(
            "This Idempotency-Key was already used with a different file.",
            code="idempotency_conflict",
            status=422,
        )
    return existing


def _receive(
    *,
    spooled: Spooled,
    source: str,
    original_name: str,
    mode: str,
    dry_run: bool,
    uploaded_by: Member | None,
    token: EdiToken | None,
    sftp_key: SftpKey | None,
    idempotency_key: str,
) -> EdiFile:
    edi_file = EdiFile(
        source=source,
        original_name=original_name,
        mode=mode,
        dry_run=dry_run,
        sha256=spooled.sha256,
        size=spooled.size,
        uploaded_by=uploaded_by,
        token=token,
        sftp_key=sftp_key,
        idempotency_key=idempotency_key,
    )
    edi_file.blob_name = f"{edi_file.pk}.raw"
    # Encrypt before the transaction: the row never names a missing blob.
    with open(spooled.path, "rb") as src:
        keyring_file_store(
            purpose=KEY_PURPOSE,
            file_id=str(edi_file.pk),
            src=src,
            path=raw_blob_path(edi_file),
        )
    try:
        with transaction.atomic():
            # One receipt at a time per tenant, so two identical uploads
            # cannot both miss each other in the duplicate check.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    [f"edi-receive:{current_schema()}"],
                )
            original = _duplicate_of(spooled.sha256)
            if original is not None and not dry_run:
                edi_file.status = EdiStatus.DUPLICATE
                edi_file.duplicate_of = original
                edi_file.finished_at = timezone.now()
                edi_file.save()
                audit_event_record(
                    action="edi.file.duplicate",
                    target=edi_file,
                    actor=uploaded_by,
                    changes=_receipt_changes(edi_file)
                    | {"duplicate_of": str(original.pk)},
                )
                return edi_file
            edi_file.save()
            edi_file.job = edi_import_job_create(edi_file=edi_file, actor=uploaded_by)
            edi_file.save(update_fields=["job"])
            audit_event_record(
                action="edi.file.received",
                target=edi_file,
                actor=uploaded_by,
                changes=_receipt_changes(edi_file),
            )
            return edi_file
    except BaseException:
        raw_blob_path(edi_file).unlink(missing_ok=True)
        raise


def _duplicate_of(sha256: str) -> EdiFile | None:
    """The last applied file, or a file in flight, with these bytes."""
    in_flight = (
        EdiFile.objects.filter(sha256=sha256, status__in=IN_FLIGHT_STATUSES)
        .exclude(dry_run=True)
        .order_by("-received_at")
        .first()
    )
    if in_flight is not None:
        return in_flight
    last_applied = (
        EdiFile.objects.filter(status=EdiStatus.COMPLETED, dry_run=False)
        .order_by("-finished_at")
        .first()
    )
    if last_applied is not None and last_applied.sha256 == sha256:
        return last_applied
    return None


@audit_exempt("callers record their own event in the same transaction")
def edi_import_job_create(
    *, edi_file: EdiFile, actor: Member | None, approved: bool = False
) -> Job:
    """Create the import `Job` of `edi_file`; its task is sent on commit.

    `approved` is an admin's approval of a held or validated file (EDI-P8):
    the pipeline then applies it instead of stopping at the hold.
    """
    from edi.tasks import edi_import_task

    params: dict[str, object] = {"file_id": str(edi_file.pk)}
    if approved:
        params["approved"] = True
    return job_create(kind=JOB_KIND, actor=actor, params=params, task=edi_import_task)


def _receipt_changes(edi_file: EdiFile) -> dict[str, object]:
    return {
        "source": edi_file.source,
        "name": edi_file.original_name,
        "mode": edi_file.mode,
        "dry_run": edi_file.dry_run,
        "sha256": edi_file.sha256,
        "size": edi_file.size,
        "token": edi_file.token.name if edi_file.token else None,
        "sftp_key": edi_file.sftp_key.fingerprint if edi_file.sftp_key else None,
    }
