"""An import that gives up: the file ends `failed` (edi.md §3, EDI-P14).

`edi_import` jobs are retried after an exception (`RETRY_ON_ERROR`, as
after a crash: the apply is one transaction, so a run that raised applied
nothing, and a rerun starts again from the raw file). When the job fails
for good, at its third attempt, `job_fail` or `job_start` calls
`edi_file_fail` through `ON_FAIL` inside the transaction that fails the
job; both registrations are in `edi.tasks`.
"""

from __future__ import annotations

from django.utils import timezone

from edi.models import EdiFile, EdiStatus
from edi.services.notify import edi_file_notify
from portal.models import Job
from portal.services.audit import audit_event_record
from portal.services.registry import audits

ERROR_CODE = "IMPORT_FAILED"


@audits("edi.file.failed")
def edi_file_fail(*, job: Job, error: str) -> EdiFile | None:
    """Mark the job's file `failed`; returns it (None if it is not here).

    Runs in the caller's transaction (the one that fails the job), in the
    current tenant's schema: the file id is resolved only there. A file that
    is already final (a crash after its commit) is left as it is. Otherwise
    the file gets the error, its status email is queued and one
    `edi.file.failed` event is recorded. Nothing of the file was applied:
    every run's apply rolled back.
    """
    edi_file = (
        EdiFile.objects.select_for_update().filter(pk=job.params.get("file_id")).first()
    )
    if edi_file is None or edi_file.is_final:
        return edi_file
    problem = {
        "code": ERROR_CODE,
        "message": (
            f"The import stopped with an error {job.attempts} time(s) and was "
            "given up; nothing in it was applied. Send the file again; if "
            "this repeats, the import job's page has the technical details."
        ),
        # The exception text stays on the job (admins only): it may quote
        # SQL, which the API's token holders have no use for.
        "details": {"attempts": job.attempts, "job_id": str(job.pk)},
    }
    edi_file.status = EdiStatus.FAILED
    edi_file.errors = [problem]
    edi_file.finished_at = timezone.now()
    edi_file.save(update_fields=["status", "errors", "finished_at"])
    edi_file_notify(edi_file=edi_file)
    audit_event_record(
        action="edi.file.failed",
        target=edi_file,
        changes={
            "status": EdiStatus.FAILED,
            "counts": edi_file.counts or {},
            "errors": [problem],
        },
    )
    return edi_file
