"""Tasks on a real Celery worker (TEN-8, TEN-9, PORTAL-16).

The worker is a `celery -A portal worker` subprocess on the test database;
the broker is Redis when CI=true (or when it answers locally), otherwise
the filesystem broker: see tests/worker.py. Data must really commit for
the worker to see it, so these tests use `committed_tenant`, never `db`.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from portal.models import AuditEvent, Job, JobStatus, Member, MemberStatus
from portal.services.audit import audit_export_request
from portal.services.exports import export_open
from portal.services.members import member_create
from portal.tasks import audit_export_run_task
from portal.tasks_base import enqueue_for_tenant
from tenants.models import Tenant
from tests.conftest import ci_requires, drop_tenant_now
from tests.worker import WorkerBroker, running_worker, use_test_broker, wait_until

pytestmark = pytest.mark.worker

JOB_TIMEOUT = 60.0


@pytest.fixture
def broker() -> Iterator[WorkerBroker]:
    with use_test_broker() as chosen:
        yield chosen


def _owner(tenant: Tenant) -> Member:
    with tenant_context(tenant):
        return Member.objects.get(email=f"owner@{tenant.slug}.test")


def _job_status(tenant: Tenant, job_id: uuid.UUID | str) -> str:
    with tenant_context(tenant):
        return Job.objects.values_list("status", flat=True).get(pk=job_id)


def _public_footprint() -> tuple[int, int]:
    """(portal_* tables in public, rows of public auth_user)."""
    with schema_context("public"), connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_name LIKE 'portal\\_%%'"
        )
        tables = cursor.fetchone()[0]
        cursor.execute('SELECT count(*) FROM public."auth_user"')
        users = cursor.fetchone()[0]
    return tables, users


def test_audit_export_runs_on_real_worker(committed_tenant, broker):
    owner = _owner(committed_tenant)
    with tenant_context(committed_tenant):
        for number in range(3):
            member_create(email=f"worker{number}@example.test", actor=None)
        with transaction.atomic():
            # The task is sent on commit, to the test broker's queue.
            job = audit_export_request(actor=owner, filters={})

    with running_worker(broker) as worker:
        status = wait_until(
            lambda: (
                _job_status(committed_tenant, job.pk)
                in {JobStatus.SUCCEEDED, JobStatus.FAILED}
                and _job_status(committed_tenant, job.pk)
            ),
            timeout=JOB_TIMEOUT,
            what="the export job to finish",
        )
        assert status == JobStatus.SUCCEEDED, worker.log_text()

    with tenant_context(committed_tenant):
        job.refresh_from_db()
        # Everything recorded up to the run, i.e. all but the job's own
        # success event (and the download event export_open adds below).
        expected = [
            (event.occurred_at.isoformat(), event.action, event.target_id)
            for event in AuditEvent.objects.exclude(
                action="portal.job.succeeded", target_id=str(job.pk)
            ).order_by("-occurred_at", "-id")
        ]
        filename, chunks = export_open(job_id=str(job.pk), actor=owner)
        text = b"".join(chunks).decode("utf-8-sig")

    assert filename.startswith("audit-log-")
    assert filename.endswith(".csv")
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert header[:7] == [
        "occurred_at",
        "actor_type",
        "actor_id",
        "actor_label",
        "action",
        "target_type",
        "target_id",
    ]
    assert [(row[0], row[4], row[6]) for row in rows] == expected
    assert job.result["rows"] == len(rows)
    created = [row for row in rows if row[4] == "portal.member.created"]
    assert len(created) == 3
    assert "portal.audit.export_requested" in {row[4] for row in rows}


def test_task_for_deleted_tenant_is_refused(committed_tenant, broker):
    schema = committed_tenant.schema_name
    # Queued while the tenant exists; the tenant goes before any worker runs.
    enqueue_for_tenant(
        audit_export_run_task, schema_name=schema, job_id=str(uuid.uuid4())
    )
    drop_tenant_now(committed_tenant.pk)
    before = _public_footprint()

    with running_worker(broker) as worker:
        log = worker.wait_for_log("Refused task portal.audit_export_run: ")
        assert schema in log.split("Refused task", 1)[1]

    # Nothing ran in public: no query for a tenant table failed there.
    assert 'relation "portal_' not in log
    assert "Traceback" not in log.split("Refused task", 1)[1]
    assert _public_footprint() == (0, before[1])
    assert before[0] == 0


def test_task_for_pending_deletion_tenant_is_refused(committed_tenant, broker):
    from tenants.services import tenant_retire_request

    owner = _owner(committed_tenant)
    tenant_retire_request(
        tenant_id=committed_tenant.pk,
        reason="worker test",
        confirm_slug=committed_tenant.slug,
    )
    with tenant_context(committed_tenant), transaction.atomic():
        job = audit_export_request(actor=owner, filters={})

    with running_worker(broker) as worker:
        log = worker.wait_for_log("Refused task portal.audit_export_run: ")
        refusal = log.split("Refused task", 1)[1].splitlines()[0]
        assert committed_tenant.schema_name in refusal
        assert "pending_deletion" in refusal

    assert _job_status(committed_tenant, job.pk) == JobStatus.QUEUED
    with tenant_context(committed_tenant):
        assert Job.objects.get(pk=job.pk).attempts == 0


@pytest.fixture
def durable_broker(broker: WorkerBroker) -> WorkerBroker:
    """A broker that keeps what a killed worker held (not the filesystem one)."""
    if broker.kind not in ("redis", "rediss", "amqp", "pyamqp"):
        # The filesystem broker loses unacknowledged messages (TEN-12).
        ci_requires(f"a Redis or RabbitMQ broker (this run uses {broker.url})")
    return broker


def test_job_survives_sigkilled_worker(durable_broker, committed_tenant):
    """PORTAL-16 / TEN-9: SIGKILL mid-job; a new worker finishes it once."""
    from portal.services.bulk import member_bulk_request
    from portal.services.jobs import DEFAULT_STALE_AFTER, job_reap_stale
    from portal.tasks import member_bulk_run_task
    from tests.factories import MemberFactory

    broker = durable_broker
    owner = _owner(committed_tenant)
    rows = 300
    with tenant_context(committed_tenant):
        ids = [member.pk for member in MemberFactory.create_batch(rows)]
        outcome = member_bulk_request(
            actor=owner,
            action="deactivate",
            member_ids=ids,
            params={},
            confirm_slug=committed_tenant.slug,
            recent_sign_in=True,
        )
    job = outcome.job
    assert job is not None

    def progress() -> tuple[str, int]:
        with tenant_context(committed_tenant):
            return Job.objects.values_list("status", "progress_done").get(pk=job.pk)

    with running_worker(broker) as worker:
        wait_until(
            lambda: progress()[1] > 0,
            timeout=JOB_TIMEOUT,
            what="the bulk job's first progress",
            every=0.02,
        )
        worker.kill()
        status, done = progress()
        assert status == JobStatus.RUNNING, "the job finished before the kill"
        assert 0 < done < rows

        worker.start()
        # A restarted worker does not get the message back before the
        # broker's 6 h visibility timeout: the reaper (PORTAL-16) re-queues
        # the job once its heartbeat is stale. Age the heartbeat instead of
        # waiting 5 minutes. The reaper runs here rather than as a task on
        # the worker, whose own sends would go to the default queue.
        with tenant_context(committed_tenant):
            Job.objects.filter(pk=job.pk).update(
                heartbeat_at=timezone.now() - DEFAULT_STALE_AFTER * 2
            )
            requeued = job_reap_stale(
                tasks_by_kind={"member_bulk": member_bulk_run_task}
            )
        assert requeued == [str(job.pk)]
        final = wait_until(
            lambda: (
                progress()[0] in {JobStatus.SUCCEEDED, JobStatus.FAILED}
                and progress()[0]
            ),
            timeout=JOB_TIMEOUT,
            what="the re-queued bulk job to finish",
        )
        assert final == JobStatus.SUCCEEDED, worker.log_text()

    with tenant_context(committed_tenant):
        job.refresh_from_db()
        assert job.attempts == 2
        assert job.result["rows"] == rows
        assert (
            not Member.objects.filter(pk__in=ids)
            .exclude(status=MemberStatus.DEACTIVATED)
            .exists()
        )
        # Exactly once: one deactivation event per member despite two runs.
        events = list(
            AuditEvent.objects.filter(action="portal.member.deactivated").values_list(
                "target_id", flat=True
            )
        )
        assert sorted(events) == sorted(str(pk) for pk in ids)
        _, chunks = export_open(job_id=str(job.pk), actor=owner)
        text = b"".join(chunks).decode("utf-8-sig")
    header, *results = list(csv.reader(io.StringIO(text)))
    assert header == ["member_id", "email", "result", "reason"]
    assert sorted(int(row[0]) for row in results) == sorted(ids)
    assert {row[2] for row in results} == {"ok"}
