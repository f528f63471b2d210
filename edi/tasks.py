"""Thin Celery tasks of EDI: load by id, call a service (edi.md EDI-P14)."""

from __future__ import annotations

from edi.services.receive import JOB_KIND
from portal.celery import app
from portal.services.jobs import ON_FAIL, RETRY_ON_ERROR
from portal.tasks import _run_job
from portal.tasks_base import TenantBoundTask

# A run that raised applied nothing (the apply is one transaction) and a
# rerun starts again from the raw file, so an error is retried like a
# crash; the file ends `failed` only when the job gives up, at its third
# attempt (edi.md §3). The worker imports this module before any task runs.
RETRY_ON_ERROR.add(JOB_KIND)
ON_FAIL[JOB_KIND] = "edi.services.failure.edi_file_fail"


@app.task(
    name="edi.import_run",
    base=TenantBoundTask,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def edi_import_task(self: TenantBoundTask, *, schema_name: str, job_id: str) -> None:
    """Import one EDI file; a rerun restarts from the raw file (EDI-P14).

    An error leaves the job queued for the reaper until its last attempt;
    then the file ends `failed` (`edi.services.failure`).
    """
    _run_job(job_id, "edi.services.pipeline.edi_import_run")
