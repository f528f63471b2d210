"""Background jobs (PORTAL-15..17): idempotency, attempts, cancellation,
reaping of stalled jobs and the progress API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context

from portal.errors import ApplicationError
from portal.models import AuditEvent, Job, JobStatus
from portal.roles import Role
from portal.services import jobs as job_services
from portal.services.jobs import (
    JobCancelled,
    job_cancel,
    job_create,
    job_progress,
    job_reap_stale,
    job_start,
    job_succeed,
)
from portal.tasks import audit_export_run_task

PARAMS = {"filters": {"action": "portal.member."}}


def test_same_key_and_params_return_the_same_job(tenant, tenant_owner):
    with tenant_context(tenant):
        first = job_create(
            kind="audit_export",
            actor=tenant_owner,
            params=PARAMS,
            idempotency_key="k-1",
        )
        again = job_create(
            kind="audit_export",
            actor=tenant_owner,
            params={"filters": {"action": "portal.member."}},
            idempotency_key="k-1",
        )
        assert again.pk == first.pk
        assert Job.objects.filter(idempotency_key="k-1").count() == 1
        assert first.status == JobStatus.QUEUED
        assert first.attempts == 0


def test_same_key_with_other_params_is_422(tenant, tenant_owner):
    with tenant_context(tenant):
        job_create(
            kind="audit_export",
            actor=tenant_owner,
            params=PARAMS,
            idempotency_key="k-2",
        )
        with pytest.raises(ApplicationError) as caught:
            job_create(
                kind="audit_export",
                actor=tenant_owner,
                params={"filters": {"action": "sso."}},
                idempotency_key="k-2",
            )
        assert caught.value.status == 422
        assert Job.objects.filter(idempotency_key="k-2").count() == 1


def test_key_is_per_requester_and_expires_after_a_day(
    tenant, tenant_owner, tenant_admin
):
    with tenant_context(tenant):
        mine = job_create(
            kind="audit_export",
            actor=tenant_owner,
            params=PARAMS,
            idempotency_key="k-3",
        )
        theirs = job_create(
            kind="audit_export",
            actor=tenant_admin,
            params=PARAMS,
            idempotency_key="k-3",
        )
        assert theirs.pk != mine.pk
        Job.objects.filter(pk=mine.pk).update(
            created_at=timezone.now() - timedelta(hours=24, minutes=1)
        )
        fresh = job_create(
            kind="audit_export",
            actor=tenant_owner,
            params=PARAMS,
            idempotency_key="k-3",
        )
        assert fresh.pk != mine.pk


def test_api_export_with_the_same_idempotency_key_twice_makes_one_job(
    tenant, tenant_owner, client_for
):
    client = client_for(tenant_owner)
    body = {"action": "portal.member."}
    first = client.post(
        "/api/v1/audit/exports/",
        body,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="api-key-1",
    )
    second = client.post(
        "/api/v1/audit/exports/",
        body,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="api-key-1",
    )
    assert first.status_code == 202, first.content
    assert second.status_code == 202, second.content
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["status"] == "queued"
    conflict = client.post(
        "/api/v1/audit/exports/",
        {"action": "sso."},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="api-key-1",
    )
    assert conflict.status_code == 422
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    with tenant_context(tenant):
        assert (
            Job.objects.filter(kind="audit_export", idempotency_key="api-key-1").count()
            == 1
        )


def _job(actor) -> Job:
    return job_create(kind="audit_export", actor=actor, params=PARAMS)


def test_job_start_counts_attempts_and_gives_up_at_the_fourth(tenant, tenant_owner):
    with tenant_context(tenant):
        job = _job(tenant_owner)
        for attempt in (1, 2, 3):
            started = job_start(job_id=str(job.pk))
            assert started is not None
            assert started.attempts == attempt
            assert started.status == JobStatus.RUNNING
            assert started.heartbeat_at is not None
            # While its worker is alive (fresh heartbeat) nobody else starts it.
            assert job_start(job_id=str(job.pk)) is None
            # The worker dies: its heartbeat goes stale.
            Job.objects.filter(pk=job.pk).update(
                heartbeat_at=timezone.now() - timedelta(minutes=10)
            )
        assert job_start(job_id=str(job.pk)) is None
        job.refresh_from_db()
        assert job.status == JobStatus.FAILED
        assert job.attempts == 3
        assert "3 attempts" in job.error
        assert job.finished_at is not None
        # A redelivered message for a finished job does nothing.
        assert job_start(job_id=str(job.pk)) is None


def test_progress_raises_after_cancel(tenant, tenant_owner):
    with tenant_context(tenant):
        job = job_start(job_id=str(_job(tenant_owner).pk))
        assert job is not None
        job_progress(job=job, done=1, total=10, checkpoint={"after": 1})
        job_cancel(job=job, actor=tenant_owner)
        with pytest.raises(JobCancelled):
            job_progress(job=job, done=2)
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED
        assert job.progress_done == 1
        assert job.checkpoint == {"after": 1}
        assert AuditEvent.objects.filter(
            action="portal.job.cancelled", target_id=str(job.pk)
        ).exists()
        with pytest.raises(ApplicationError):
            job_cancel(job=job, actor=tenant_owner)
        assert job_start(job_id=str(job.pk)) is None


@pytest.fixture
def sent(monkeypatch) -> list[dict[str, Any]]:
    """Record what would be sent to the broker (a stand-in for the broker)."""
    calls: list[dict[str, Any]] = []

    def record(task: Any, *, schema_name: str, **kwargs: Any) -> None:
        calls.append({"task": task, "schema_name": schema_name, **kwargs})

    monkeypatch.setattr(job_services, "enqueue_for_tenant", record)
    return calls


def _running(actor, *, heartbeat_age: timedelta, kind: str = "audit_export") -> Job:
    job = job_create(kind=kind, actor=actor, params={"n": str(heartbeat_age)})
    job_start(job_id=str(job.pk))
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - heartbeat_age)
    return job


def test_reaper_requeues_only_stale_running_jobs(tenant, tenant_owner, sent):
    tasks = {"audit_export": audit_export_run_task}
    with tenant_context(tenant):
        stale = _running(tenant_owner, heartbeat_age=timedelta(minutes=6))
        fresh = _running(tenant_owner, heartbeat_age=timedelta(minutes=1))
        unknown = _running(
            tenant_owner, heartbeat_age=timedelta(hours=1), kind="mystery"
        )
        requeued = job_reap_stale(tasks_by_kind=tasks)
        assert str(stale.pk) in requeued
        assert str(fresh.pk) not in requeued
        assert str(unknown.pk) not in requeued
        ours = [call for call in sent if call["job_id"] == str(stale.pk)]
        assert ours == [
            {
                "task": audit_export_run_task,
                "schema_name": tenant.schema_name,
                "job_id": str(stale.pk),
            }
        ]
        statuses = dict(
            Job.objects.filter(pk__in=[stale.pk, fresh.pk, unknown.pk]).values_list(
                "pk", "status"
            )
        )
        assert statuses == {
            stale.pk: JobStatus.QUEUED,
            fresh.pk: JobStatus.RUNNING,
            unknown.pk: JobStatus.RUNNING,
        }


def test_a_job_that_keeps_stalling_stops_after_three_attempts(
    tenant, tenant_owner, sent
):
    tasks = {"audit_export": audit_export_run_task}
    with tenant_context(tenant):
        job = _job(tenant_owner)
        for _ in range(3):
            assert job_start(job_id=str(job.pk)) is not None
            # The worker dies: no heartbeat for longer than the kind allows.
            Job.objects.filter(pk=job.pk).update(
                heartbeat_at=timezone.now() - timedelta(minutes=10)
            )
            assert str(job.pk) in job_reap_stale(tasks_by_kind=tasks)
        assert job_start(job_id=str(job.pk)) is None
        job.refresh_from_db()
        assert job.status == JobStatus.FAILED
        assert str(job.pk) not in job_reap_stale(tasks_by_kind=tasks)
    assert len([call for call in sent if call["job_id"] == str(job.pk)]) == 3


def test_job_api_reports_progress_and_download_url(tenant, tenant_owner, client_for):
    with tenant_context(tenant):
        job = job_start(job_id=str(_job(tenant_owner).pk))
        assert job is not None
        job_progress(job=job, done=5, total=10, message="Halfway")
    client = client_for(tenant_owner)
    running = client.get(f"/api/v1/jobs/{job.pk}/")
    assert running.status_code == 200
    data = running.json()
    assert data["id"] == str(job.pk)
    assert data["kind"] == "audit_export"
    assert data["status"] == "running"
    assert (data["progress_done"], data["progress_total"], data["percent"]) == (
        5,
        10,
        50,
    )
    assert data["message"] == "Halfway"
    assert data["download_url"] is None

    with tenant_context(tenant):
        job_succeed(job=job, result={"filename": "audit-log.csv", "rows": 10})
    done = client.get(f"/api/v1/jobs/{job.pk}/").json()
    assert done["status"] == "succeeded"
    assert done["percent"] == 100
    assert done["finished_at"] is not None
    assert done["download_url"] == f"/jobs/{job.pk}/download/"


def test_job_api_hides_other_peoples_jobs_from_members(
    tenant, tenant_owner, make_member, client_for
):
    with tenant_context(tenant):
        job = _job(tenant_owner)
    member = make_member(Role.MEMBER)
    assert client_for(member).get(f"/api/v1/jobs/{job.pk}/").status_code == 404
    assert client_for(None).get(f"/api/v1/jobs/{job.pk}/").status_code in (401, 403)


def test_reaper_resends_a_queued_job_nobody_started(tenant, tenant_owner, sent):
    tasks = {"audit_export": audit_export_run_task}
    with tenant_context(tenant):
        lost = _job(tenant_owner)
        recent = _job(tenant_owner)
        Job.objects.filter(pk=lost.pk).update(
            created_at=timezone.now() - timedelta(minutes=6)
        )
        requeued = job_reap_stale(tasks_by_kind=tasks)
        assert str(lost.pk) in requeued
        assert str(recent.pk) not in requeued
        # Sent once: the next sweep sees the fresh mark and leaves it alone.
        assert str(lost.pk) not in job_reap_stale(tasks_by_kind=tasks)
        assert [c["job_id"] for c in sent].count(str(lost.pk)) == 1
