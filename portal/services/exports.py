"""Encrypted CSV exports produced by jobs (PORTAL-10, PORTAL-13).

An export file is encrypted with the tenant's `exports` key, readable only
by the member who asked for it, for 24 hours, then deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.core.files.storage import default_storage
from django.utils import timezone

from portal.csvio import csv_lines
from portal.errors import NotFound
from portal.models import Job, JobStatus
from portal.roles import can
from portal.services.audit import audit_event_record
from portal.services.jobs import job_progress, job_succeed
from portal.services.keyring import (
    chunks_reader,
    keyring_file_open,
    keyring_file_store,
)
from portal.services.registry import audit_exempt, audits

if TYPE_CHECKING:
    from portal.models import Member

EXPORT_TTL = timedelta(hours=24)
# The requester must still hold the capability the file was made under: a
# demoted admin's unread export is out of reach at once.
EXPORT_CAPABILITY = {
    "audit_export": "audit.view",
    "member_export": "members.view",
    "member_bulk": "members.edit",
}
PROGRESS_EVERY = 2000


@audit_exempt("read: computes a path")
def export_path(job_id: object) -> Path:
    """Where the export of `job_id` lives in the current tenant's media."""
    return Path(default_storage.path(f"exports/{job_id}.csv.enc"))


@audit_exempt("the job's success event covers the file")
def export_write(
    *,
    job: Job,
    filename_stem: str,
    header: list[str],
    rows: Iterable[Iterable[Any]],
    total: int,
) -> None:
    """Stream `rows` as CSV into the job's encrypted file and finish the job."""
    job_progress(job=job, done=0, total=total, message="Writing the file…")

    def encoded() -> Iterator[bytes]:
        for line_number, line in enumerate(csv_lines(header, rows)):
            if line_number and line_number % PROGRESS_EVERY == 0:
                job_progress(job=job, done=line_number)
            yield line.encode("utf-8")

    path = export_path(job.pk)
    size = keyring_file_store(
        purpose="exports",
        file_id=str(job.pk),
        src=chunks_reader(encoded()),
        path=path,
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    job_succeed(
        job=job,
        result={
            "filename": f"{filename_stem}-{stamp}.csv",
            "rows": total,
            "bytes": size,
            "expires_at": (timezone.now() + EXPORT_TTL).isoformat(),
        },
        message=f"{total} rows exported.",
    )


@audits("portal.export.downloaded")
def export_open(*, job_id: str, actor: Member) -> tuple[str, Iterator[bytes]]:
    """Return (filename, plaintext chunks) of an export for its requester.

    Anyone else, an unfinished job, or an expired file gets `NotFound`.
    """
    job = Job.objects.filter(pk=job_id, requester=actor).first()
    if (
        job is None
        or job.status != JobStatus.SUCCEEDED
        or "filename" not in job.result
        or not can(actor, EXPORT_CAPABILITY.get(job.kind, "audit.view"))
    ):
        raise NotFound("Export not found.")
    if job.finished_at is None or timezone.now() - job.finished_at > EXPORT_TTL:
        raise NotFound("This export has expired; start a new one.")
    path = export_path(job.pk)
    if not path.exists():
        raise NotFound("This export has expired; start a new one.")
    audit_event_record(action="portal.export.downloaded", target=job, actor=actor)
    return str(job.result.get("filename", "export.csv")), keyring_file_open(
        purpose="exports", file_id=str(job.pk), path=path
    )


@audit_exempt("removes expired files only")
def export_expire() -> int:
    """Delete export files older than 24 hours; return how many went."""
    cutoff = timezone.now() - EXPORT_TTL
    removed = 0
    for job_id in Job.objects.filter(
        finished_at__lt=cutoff, result__has_key="filename"
    ).values_list("pk", flat=True):
        path = export_path(job_id)
        if path.exists():
            path.unlink()
            removed += 1
    return removed
