"""Members CSV export: streamed up to 10,000 rows, else a job (PORTAL-10)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import transaction

from portal.csvio import csv_lines
from portal.models import Job, Member
from portal.selectors.members import (
    MEMBER_EXPORT_COLUMNS,
    MemberFilters,
    member_count,
    member_export_rows,
)
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits

STREAM_LIMIT = 10_000


@audits("portal.member.exported")
def member_export_stream(
    *, actor: Member, filters: MemberFilters
) -> Iterator[str] | None:
    """CSV lines for the filter when ≤ 10,000 rows, else None (use a job)."""
    count = member_count(filters=filters)
    if count > STREAM_LIMIT:
        return None
    audit_event_record(
        action="portal.member.exported",
        actor=actor,
        changes={"filters": filters.as_query(), "rows": count},
    )
    return csv_lines(MEMBER_EXPORT_COLUMNS, member_export_rows(filters=filters))


@audits("portal.member.export_requested")
@transaction.atomic
def member_export_request(
    *, actor: Member, filters: MemberFilters, idempotency_key: str = ""
) -> Job:
    from portal.services.jobs import job_create
    from portal.tasks import member_export_run_task

    job = job_create(
        kind="member_export",
        actor=actor,
        params={"filters": filters.as_query()},
        idempotency_key=idempotency_key,
        task=member_export_run_task,
    )
    audit_event_record(
        action="portal.member.export_requested",
        target=job,
        actor=actor,
        changes={"filters": filters.as_query()},
    )
    return job


@audit_exempt("the job's success event covers it")
def member_export_run(*, job: Job) -> None:
    from portal.services.exports import export_write

    filters = MemberFilters.from_query(job.params.get("filters", {}))
    export_write(
        job=job,
        filename_stem="members",
        header=MEMBER_EXPORT_COLUMNS,
        rows=member_export_rows(filters=filters),
        total=member_count(filters=filters),
    )
