"""Thin Celery tasks of EDI: load by id, call a service (edi.md EDI-P14)."""

from __future__ import annotations

from portal.celery import app
from portal.tasks import _run_job
from portal.tasks_base import TenantBoundTask


@app.task(
    name="edi.import_run",
    base=TenantBoundTask,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def edi_import_task(self: TenantBoundTask, *, schema_name: str, job_id: str) -> None:
    """Import one EDI file; a rerun restarts from the raw file (EDI-P14)."""
    _run_job(job_id, "edi.services.pipeline.edi_import_run")
