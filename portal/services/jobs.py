"""Background jobs: creation, progress, completion, reaping (PORTAL-15..17)."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import Task
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.db import current_schema
from portal.errors import ApplicationError
from portal.models import Job, JobStatus
from portal.services.registry import audit_exempt, audits
from portal.tasks_base import enqueue_for_tenant

if TYPE_CHECKING:
    from portal.models import Member

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4096
IDEMPOTENCY_WINDOW = timedelta(hours=24)
STALE_AFTER: dict[str, timedelta] = {}
DEFAULT_STALE_AFTER = timedelta(minutes=5)
# Kinds whose runner may simply run again after an exception (it changed
# nothing that a rerun would not redo). Such a job goes back to the queue,
# and the reaper re-sends it once stale, until its last attempt; other kinds
# fail at their first exception.
RETRY_ON_ERROR: set[str] = set()
# kind -> dotted path of `hook(*, job: Job, error: str) -> None`, called in
# the transaction that fails a job of that kind for good (an exception at
# its last attempt, `job_start` giving up, or any exception for a kind
# without retries), so the kind's own rows end with the job. Apps register
# here, as with STALE_AFTER; portal knows no kind.
ON_FAIL: dict[str, str] = {}


def _params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


@audit_exempt("callers record their own event in the same transaction")
def job_create(
    *,
    kind: str,
    actor: Member | None,
    params: dict[str, Any] | None = None,
    idempotency_key: str = "",
    task: Task | None = None,
    total: int | None = None,
) -> Job:
    """Create a queued job and send `task` for it after commit.

    With `idempotency_key`, the same actor, kind and key within 24 hours
    returns the existing job; different params raise `ApplicationError`
    (422). The task receives `schema_name` and `job_id`.
    """
    from portal.context import current

    params = params or {}
    if idempotency_key:
        existing = Job.objects.filter(
            requester=actor, kind=kind, idempotency_key=idempotency_key
        ).first()
        if existing is not None:
            if timezone.now() - existing.created_at > IDEMPOTENCY_WINDOW:
                # An old key may be reused: free it.
                existing.idempotency_key = ""
                existing.save(update_fields=["idempotency_key"])
            elif _params_digest(existing.params) != _params_digest(params):
                raise ApplicationError(
                    "This Idempotency-Key was already used with different parameters.",
                    code="idempotency_conflict",
                    status=422,
                )
            else:
                return existing
    job = Job(
        kind=kind,
        requester=actor,
        params=params,
        idempotency_key=idempotency_key,
        progress_total=total,
        request_id=current().request_id,
    )
    job.full_clean()
    try:
        with transaction.atomic():
            job.save()
    except IntegrityError:
        # A concurrent request with the same key won the race.
        return Job.objects.get(
            requester=actor, kind=kind, idempotency_key=idempotency_key
        )
    if task is not None:
        schema_name = current_schema()
        job_id = str(job.pk)
        transaction.on_commit(
            lambda: _enqueue_logged(task, schema_name=schema_name, job_id=job_id)
        )
    return job


@audits("portal.job.failed")
def job_start(*, job_id: str) -> Job | None:
    """Claim a job for a run. Returns None when it must not run.

    Counts the attempt; a job that already ran `Job.MAX_ATTEMPTS` times is
    failed instead (a task that kills its worker must not loop, TEN-9), with
    its kind's `ON_FAIL` hook in the same transaction.
    Finished or cancelled jobs return None, so redelivery is harmless, and
    so does a job another worker is running now (its heartbeat is fresh):
    if that worker died, the reaper re-queues the job once it goes stale.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not job.is_active:
            return None
        now = timezone.now()
        stale_after = STALE_AFTER.get(job.kind, DEFAULT_STALE_AFTER)
        if (
            job.status == JobStatus.RUNNING
            and job.heartbeat_at is not None
            and now - job.heartbeat_at < stale_after
        ):
            return None
        if job.attempts >= Job.MAX_ATTEMPTS:
            error = f"Gave up after {job.attempts} attempts."
            if job.error:
                error += f" The last error: {job.error}"
            _fail_locked(job, error)
            return None
        job.attempts += 1
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.save(update_fields=["attempts", "status", "started_at", "heartbeat_at"])
        return job


@audit_exempt("progress bookkeeping")
def job_progress(
    *,
    job: Job,
    done: int,
    total: int | None = None,
    message: str = "",
    checkpoint: dict[str, Any] | None = None,
) -> None:
    """Save progress (and a checkpoint) inside the caller's transaction.

    Raises `JobCancelled` if the job was cancelled meanwhile, so callers stop
    between batches.
    """
    status = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first()
    if status == JobStatus.CANCELLED:
        raise JobCancelled(str(job.pk))
    job.progress_done = done
    fields = ["progress_done", "heartbeat_at"]
    if total is not None:
        job.progress_total = total
        fields.append("progress_total")
    if message:
        job.message = message[:500]
        fields.append("message")
    if checkpoint is not None:
        job.checkpoint = checkpoint
        fields.append("checkpoint")
    job.heartbeat_at = timezone.now()
    job.save(update_fields=fields)


class JobCancelled(Exception):
    pass


class DetachedProgress:
    """Progress and heartbeat on a connection of their own (PORTAL-15).

    For work that runs inside one long transaction, or streams a `COPY`,
    on the default connection: updates here commit at once, so pollers see
    them while the work's own transaction is still open. Raises
    `JobCancelled` like `job_progress`. Close it when the work ends.
    """

    def __init__(self, job: Job) -> None:
        import psycopg
        from django.db import connection

        self.job_id = job.pk
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        self._conn = psycopg.connect(**params, autocommit=True)
        self._conn.execute(
            "SELECT set_config('search_path', %s, false)", [current_schema()]
        )

    def update(self, *, done: int, total: int | None, message: str) -> None:
        row = self._conn.execute(
            f"UPDATE {Job._meta.db_table} SET progress_done = %s, "  # noqa: S608 - model table
            "progress_total = coalesce(%s, progress_total), message = %s, "
            "heartbeat_at = now() WHERE id = %s RETURNING status",
            [done, total, message[:500], self.job_id],
        ).fetchone()
        if row is not None and row[0] == JobStatus.CANCELLED:
            raise JobCancelled(str(self.job_id))

    def close(self) -> None:
        self._conn.close()


@audits("portal.job.succeeded")
@transaction.atomic
def job_succeed(*, job: Job, result: dict[str, Any], message: str = "") -> None:
    from portal.services.audit import audit_event_record

    job.status = JobStatus.SUCCEEDED
    job.result = result
    job.message = (message or "Done.")[:500]
    job.finished_at = timezone.now()
    if job.progress_total is not None:
        job.progress_done = job.progress_total
    job.save(
        update_fields=["status", "result", "message", "finished_at", "progress_done"]
    )
    audit_event_record(
        action="portal.job.succeeded", target=job, changes={"kind": job.kind}
    )


@audits("portal.job.failed")
def job_fail(*, job_id: str, error: str) -> str | None:
    """Record that a run of the job raised `error`; returns the new status.

    A kind in `RETRY_ON_ERROR` before its last attempt goes back to the
    queue with the error noted (`queued`): the reaper re-sends it once its
    heartbeat is older than the kind's STALE_AFTER, which spaces the
    retries. Otherwise the job fails for good (`failed`), with one
    `portal.job.failed` event and its kind's `ON_FAIL` hook in the same
    transaction; an exception in the hook rolls all of it back, leaving the
    job to the reaper. A job that is no longer active is left alone (None).
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if not job.is_active:
            return None
        if job.kind in RETRY_ON_ERROR and job.attempts < Job.MAX_ATTEMPTS:
            job.status = JobStatus.QUEUED
            job.error = error[:MAX_ERROR_CHARS]
            job.message = (
                f"Attempt {job.attempts} of {Job.MAX_ATTEMPTS} failed; "
                "it will be retried."
            )
            job.heartbeat_at = timezone.now()
            job.save(update_fields=["status", "error", "message", "heartbeat_at"])
            return JobStatus.QUEUED
        _fail_locked(job, error)
        return JobStatus.FAILED


def _fail_locked(job: Job, error: str) -> None:
    """Fail a job whose row the caller has locked; audit; run the hook."""
    from django.utils.module_loading import import_string

    from portal.services.audit import audit_event_record

    job.status = JobStatus.FAILED
    job.error = error[:MAX_ERROR_CHARS]
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "finished_at"])
    audit_event_record(
        action="portal.job.failed", target=job, changes={"kind": job.kind}
    )
    if hook := ON_FAIL.get(job.kind):
        import_string(hook)(job=job, error=job.error)


@audits("portal.job.cancelled")
@transaction.atomic
def job_cancel(*, job: Job, actor: Member) -> Job:
    from portal.services.audit import audit_event_record

    job = Job.objects.select_for_update().get(pk=job.pk)
    if not job.is_active:
        raise ApplicationError("This job has already finished.", code="job_finished")
    job.status = JobStatus.CANCELLED
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "finished_at"])
    audit_event_record(action="portal.job.cancelled", target=job, actor=actor)
    return job


@audit_exempt("re-queues work; the job's own service audits")
def job_reap_stale(*, tasks_by_kind: dict[str, Task]) -> list[str]:
    """Re-send jobs whose worker died or whose message was lost (PORTAL-16).

    A running job whose heartbeat is older than its kind allows is put back
    in the queue; a queued job that nobody started within the same time is
    sent again (its message may have been lost, or its enqueue failed after
    commit). Each row is claimed with a conditional update, so two reapers
    never both re-send it, and `job_start` refuses a job that is running.
    `job_start` fails a job at its fourth attempt, so a job that kills its
    worker is not re-queued forever. Returns the re-sent job ids.
    """
    now = timezone.now()
    requeued: list[str] = []
    schema_name = current_schema()
    for job in Job.objects.filter(status__in=Job.ACTIVE):
        stale_after = STALE_AFTER.get(job.kind, DEFAULT_STALE_AFTER)
        last_sign_of_life = job.heartbeat_at or job.created_at
        if now - last_sign_of_life < stale_after:
            continue
        task = tasks_by_kind.get(job.kind)
        if task is None:
            continue
        claimed = Job.objects.filter(
            pk=job.pk, status=job.status, heartbeat_at=job.heartbeat_at
        ).update(status=JobStatus.QUEUED, heartbeat_at=now)
        if not claimed:
            continue
        _enqueue_logged(task, schema_name=schema_name, job_id=str(job.pk))
        requeued.append(str(job.pk))
    return requeued


def _enqueue_logged(task: Task, *, schema_name: str, job_id: str) -> None:
    # Runs after commit: a broker outage must not turn a saved job into a
    # 500. The reaper re-sends a queued job nobody started.
    try:
        enqueue_for_tenant(task, schema_name=schema_name, job_id=job_id)
    except Exception:
        logger.exception("Could not send job %s; the reaper will retry", job_id)
