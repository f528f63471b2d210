"""Thin Celery tasks of the portal core: load by id, call a service."""

from __future__ import annotations

import logging

from portal.celery import app
from portal.tasks_base import PlatformTask, TenantBoundTask

logger = logging.getLogger(__name__)


def _run_job(job_id: str, runner_path: str) -> None:
    """Claim the job, run its service, record failure; safe to redeliver."""
    from django.utils.module_loading import import_string

    from portal import context
    from portal.services.jobs import JobCancelled, job_fail, job_start

    job = job_start(job_id=job_id)
    if job is None:
        return
    runner = import_string(runner_path)
    try:
        # Events written by the job carry the request that started it.
        with context.actor_context(request_id=job.request_id, source="celery"):
            runner(job=job)
    except JobCancelled:
        logger.info("Job %s cancelled", job_id)
    except Exception as exc:
        logger.exception("Job %s failed", job_id)
        job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}")


@app.task(
    name="portal.audit_export_run",
    base=TenantBoundTask,
    bind=True,
    reject_on_worker_lost=True,
)
def audit_export_run_task(
    self: TenantBoundTask, *, schema_name: str, job_id: str
) -> None:
    """Write an audit CSV export; redelivery rewrites the file from scratch."""
    _run_job(job_id, "portal.services.audit.audit_export_run")


@app.task(
    name="portal.member_export_run",
    base=TenantBoundTask,
    bind=True,
    reject_on_worker_lost=True,
)
def member_export_run_task(
    self: TenantBoundTask, *, schema_name: str, job_id: str
) -> None:
    """Write a members CSV export too large to stream."""
    _run_job(job_id, "portal.services.member_export.member_export_run")


@app.task(
    name="portal.member_bulk_run",
    base=TenantBoundTask,
    bind=True,
    reject_on_worker_lost=True,
)
def member_bulk_run_task(
    self: TenantBoundTask, *, schema_name: str, job_id: str
) -> None:
    """Apply a bulk action; each row's service is idempotent."""
    _run_job(job_id, "portal.services.bulk.member_bulk_run")


@app.task(name="portal.outbox_deliver", base=TenantBoundTask, bind=True)
def outbox_deliver_task(self: TenantBoundTask, *, schema_name: str) -> None:
    """Send this tenant's due outbox emails; safe to run twice at once.

    Not `reject_on_worker_lost` (no attempts cap, TEN-9): a lost message
    costs nothing, the jobs reaper delivers what is left.
    """
    from portal.services.outbox import outbox_deliver

    outbox_deliver()


@app.task(name="portal.jobs_reap", base=TenantBoundTask, bind=True)
def jobs_reap_task(self: TenantBoundTask, *, schema_name: str) -> None:
    """Re-queue this tenant's stalled jobs (PORTAL-16); send leftover email.

    The outbox part delivers rows whose task was lost (broker down at
    commit) or whose send failed and is due again.
    """
    from edi.tasks import edi_import_task
    from portal.services.jobs import job_reap_stale
    from portal.services.outbox import outbox_deliver

    job_reap_stale(
        tasks_by_kind={
            "audit_export": audit_export_run_task,
            "member_export": member_export_run_task,
            "member_bulk": member_bulk_run_task,
            # Also the EDI-P1 sweeper: a file whose enqueue was lost (broker
            # down at upload) has a queued job nobody started.
            "edi_import": edi_import_task,
        }
    )
    outbox_deliver()


@app.task(name="portal.daily_upkeep", base=TenantBoundTask, bind=True)
def daily_upkeep_task(self: TenantBoundTask, *, schema_name: str) -> None:
    """Daily per-tenant upkeep; every step is idempotent.

    Seat snapshot, expired exports, sessions and login failures, sent
    outbox email, and EDI files past their retention (EDI-P10).
    """
    from edi.services.retention import edi_retention_purge
    from portal.services.auth import auth_housekeeping
    from portal.services.exports import export_expire
    from portal.services.members import seat_snapshot_take
    from portal.services.outbox import outbox_prune

    seat_snapshot_take()
    export_expire()
    auth_housekeeping()
    outbox_prune()
    edi_retention_purge()


@app.task(name="portal.platform_daily", base=PlatformTask, bind=True)
def platform_daily_task(self: PlatformTask) -> None:
    """Daily upkeep of public-schema tables (beat calls this once a day)."""
    from edi.services.sftp import sftp_auth_events_prune

    sftp_auth_events_prune()


@app.task(name="portal.fan_out", base=PlatformTask, bind=True)
def fan_out_task(self: PlatformTask, *, task_name: str) -> None:
    """Send a tenant task once per active tenant (beat calls this daily)."""
    from portal.tasks_base import enqueue_for_tenant
    from tenants.services import tenant_list_active

    allowed = {"portal.jobs_reap", "portal.daily_upkeep", "sso.daily"}
    if task_name not in allowed:
        logger.error("fan_out refused unknown task %s", task_name)
        return
    task = app.tasks[task_name]
    for tenant in tenant_list_active():
        enqueue_for_tenant(task, schema_name=tenant.schema_name)
