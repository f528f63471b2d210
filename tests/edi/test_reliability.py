"""EDI reliability: retries and failure, crash safety, durable receipt,
tenant isolation (edi.md §3: EDI-P1, EDI-P14, EDI-P15).

- A run that raises is retried like a crash (the reaper re-sends it) and
  the file ends `failed` only at the third attempt, with nothing applied,
  one event and its email.
- A real `celery -A portal worker` SIGKILLs itself at each test crash point
  (`EDI_TEST_CRASH_AT`), or is killed from outside mid-apply, importing a
  20,000-row full file (several COPY batches) into a tenant of 20,000
  members; a fresh worker finishes with exact state.
- An upload while the broker is down is accepted, and the reaper sends it.
- Two tenants with identical keys import at the same time; a task given the
  wrong schema refuses to run.

Real-worker tests follow tests/portal/test_worker.py: `committed_tenant`,
the test broker of tests/worker.py (Redis, which keeps what a killed
worker held), and the reaper called from this process with the heartbeat
aged, instead of waiting 2 minutes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

import portal.services.jobs as job_services
from edi.models import EdiFile, EdiStatus
from edi.services import failure, pipeline
from edi.services.pipeline import edi_import_run
from edi.services.receive import JOB_KIND, edi_file_receive
from edi.services.spool import SpoolWriter
from edi.services.tokens import edi_token_issue
from edi.tasks import edi_import_task
from portal.celery import app
from portal.db import current_schema
from portal.models import AuditEvent, Job, JobStatus, Member, MemberStatus, OutboxEmail
from portal.services.jobs import STALE_AFTER, job_reap_stale, job_start
from portal.tasks import jobs_reap_task
from tenants.models import Tenant
from tests.conftest import (
    ci_requires,
    committed_tenant_provisioned,
)
from tests.worker import (
    WorkerBroker,
    _reset_producer_pool,
    running_worker,
    use_test_broker,
    wait_until,
)

JOB_TIMEOUT = 60.0
STALE = STALE_AFTER[JOB_KIND] * 2
HEADER = "employee_id,email,first_name,department,seat\n"


# ------------------------------------------------------------------ helpers


def rows(numbers: range, *, prefix: str = "E", department: Callable[[int], str]) -> str:
    return "".join(
        f"{prefix}{n},{prefix.lower()}{n}@corp.test,F{n},{department(n)},active\n"
        for n in numbers
    )


def receive(text: str, *, mode: str = "delta", name: str = "hr.csv") -> EdiFile:
    """Receive a file in the current schema (its task is sent on commit)."""
    with SpoolWriter(current_schema()) as writer:
        writer.write(text.encode())
        spooled = writer.finish()
    return edi_file_receive(spooled=spooled, source="ui", original_name=name, mode=mode)


def run_here(edi_file: EdiFile) -> EdiFile:
    """Run the file's import in this process, as the worker's task body."""
    job = job_start(job_id=str(edi_file.job_id))
    assert job is not None
    edi_import_run(job=job)
    edi_file.refresh_from_db()
    return edi_file


def send_task(edi_file: EdiFile) -> None:
    """The task body in this process (eager), as a re-sent message runs."""
    result = edi_import_task.apply(
        kwargs={"schema_name": current_schema(), "job_id": str(edi_file.job_id)}
    )
    assert result.successful(), result.traceback


def checksum(schema: str, tables: tuple[str, ...]) -> dict[str, str]:
    """md5 of each table's rows in `schema`, as this connection sees them."""
    sums = {}
    rows_md5 = "md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(
                f'SELECT {rows_md5} FROM "{schema}"."{table}" t'  # noqa: S608
            )
            sums[table] = cursor.fetchone()[0]
    return sums


MEMBER_TABLES = ("portal_member", "portal_member_groups", "portal_membergroup")


def events(action: str, edi_file: EdiFile) -> int:
    return AuditEvent.objects.filter(action=action, target_id=str(edi_file.pk)).count()


def emails(edi_file: EdiFile) -> list[str]:
    """The recipients of the file's queued emails, one row each."""
    return sorted(
        OutboxEmail.objects.filter(
            dedupe_key__startswith=f"edi:{edi_file.pk}:"
        ).values_list("recipient", flat=True)
    )


def admins() -> list[str]:
    return sorted(
        Member.objects.filter(role__in=("owner", "admin")).values_list(
            "email", flat=True
        )
    )


# ------------------------------------------- retries and failure (in-process)


@pytest.fixture
def in_tenant(tenant: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant):
        yield tenant


@pytest.fixture
def failing_stage(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every run raises while staging; returns the attempt of each run."""
    seen: list[int] = []

    def stage(self: pipeline.Run) -> None:
        seen.append(self.job.attempts)
        raise ConnectionResetError("database went away (test)")

    monkeypatch.setattr(pipeline.Run, "stage", stage)
    return seen


@pytest.fixture
def notified(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each `edi_file_notify` call of the failure hook: (file id, status
    as saved when called)."""
    calls: list[tuple[str, str]] = []

    def notify(*, edi_file: EdiFile) -> None:
        saved = EdiFile.objects.values_list("status", flat=True).get(pk=edi_file.pk)
        calls.append((str(edi_file.pk), saved))

    monkeypatch.setattr(failure, "edi_file_notify", notify)
    return calls


def test_an_error_is_retried_by_the_reaper_then_fails_the_file_at_the_third(
    in_tenant, failing_stage, notified, monkeypatch
):
    sent: list[str] = []
    monkeypatch.setattr(
        job_services, "enqueue_for_tenant", lambda task, **kw: sent.append(kw["job_id"])
    )
    before = checksum(in_tenant.schema_name, MEMBER_TABLES)
    edi_file = receive(HEADER + rows(range(1, 4), department=lambda n: "Sales"))
    job_id = str(edi_file.job_id)

    send_task(edi_file)

    job = Job.objects.get(pk=job_id)
    edi_file.refresh_from_db()
    # Attempt 1 raised: back in the queue, the file not failed.
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 1)
    assert "ConnectionResetError" in job.error
    assert edi_file.status == EdiStatus.VALIDATING
    assert not notified
    # The reaper re-sends it once its heartbeat is older than 2 minutes.
    assert job_id not in job_reap_stale(tasks_by_kind={JOB_KIND: edi_import_task})
    Job.objects.filter(pk=job_id).update(heartbeat_at=timezone.now() - STALE)
    assert job_reap_stale(tasks_by_kind={JOB_KIND: edi_import_task}) == [job_id]
    assert sent[-1] == job_id

    send_task(edi_file)  # attempt 2 raises too
    assert Job.objects.get(pk=job_id).status == JobStatus.QUEUED
    send_task(edi_file)  # attempt 3: gives up

    job.refresh_from_db()
    edi_file.refresh_from_db()
    assert failing_stage == [1, 2, 3]
    assert (job.status, job.attempts) == (JobStatus.FAILED, 3)
    assert edi_file.status == EdiStatus.FAILED
    assert edi_file.finished_at is not None
    assert [e["code"] for e in edi_file.errors] == ["IMPORT_FAILED"]
    assert edi_file.errors[0]["details"]["attempts"] == 3
    assert events("edi.file.failed", edi_file) == 1
    assert AuditEvent.objects.filter(
        action="portal.job.failed", target_id=job_id
    ).exists()
    assert notified == [(str(edi_file.pk), EdiStatus.FAILED)]
    assert checksum(in_tenant.schema_name, MEMBER_TABLES) == before
    # A redelivered message for the failed job does nothing more.
    send_task(edi_file)
    assert failing_stage == [1, 2, 3]
    assert events("edi.file.failed", edi_file) == 1


def test_a_transient_error_is_retried_and_the_file_imports(in_tenant, monkeypatch):
    calls = []
    original = pipeline.Run.stage

    def stage(self: pipeline.Run) -> None:
        calls.append(self.job.attempts)
        if len(calls) == 1:
            raise ConnectionResetError("database went away (test)")
        original(self)

    monkeypatch.setattr(pipeline.Run, "stage", stage)
    edi_file = receive(HEADER + rows(range(1, 4), department=lambda n: "Sales"))
    send_task(edi_file)
    send_task(edi_file)
    edi_file.refresh_from_db()
    assert calls == [1, 2]
    assert edi_file.status == EdiStatus.COMPLETED, edi_file.errors
    assert edi_file.counts["created"] == 3
    assert events("edi.file.applied", edi_file) == 1
    assert events("edi.file.failed", edi_file) == 0
    job = Job.objects.get(pk=str(edi_file.job_id))
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)


def test_a_job_that_keeps_killing_its_worker_fails_the_file(in_tenant):
    """Three runs that never finished (their worker died): the fourth claim
    gives up, and the file fails in the same transaction."""
    edi_file = receive(HEADER + rows(range(1, 4), department=lambda n: "Sales"))
    job_id = str(edi_file.job_id)
    for _ in range(3):
        assert job_start(job_id=job_id) is not None
        Job.objects.filter(pk=job_id).update(heartbeat_at=timezone.now() - STALE)
    assert job_start(job_id=job_id) is None

    edi_file.refresh_from_db()
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED
    assert "3 attempts" in job.error
    assert edi_file.status == EdiStatus.FAILED
    assert [e["code"] for e in edi_file.errors] == ["IMPORT_FAILED"]
    assert events("edi.file.failed", edi_file) == 1
    assert emails(edi_file) == admins()  # one status email each
    assert not Member.objects.filter(employee_id="E1").exists()


def test_the_failure_hook_leaves_a_final_file_alone(in_tenant, notified):
    edi_file = run_here(receive(HEADER + rows(range(1, 3), department=str)))
    assert edi_file.status == EdiStatus.COMPLETED
    job = Job.objects.get(pk=str(edi_file.job_id))
    assert failure.edi_file_fail(job=job, error="late") == edi_file
    edi_file.refresh_from_db()
    assert edi_file.status == EdiStatus.COMPLETED
    assert events("edi.file.failed", edi_file) == 0
    assert not notified


def test_other_job_kinds_still_fail_at_their_first_error(in_tenant):
    from portal.services.jobs import job_create, job_fail

    job = job_create(kind="audit_export", actor=None)
    assert job_start(job_id=str(job.pk)) is not None
    assert job_fail(job_id=str(job.pk), error="boom") == JobStatus.FAILED
    assert Job.objects.get(pk=job.pk).status == JobStatus.FAILED


# --------------------------------------------------- EDI-P14: crash safety

BASE = 20_000  # members before the file; the file spans 5 COPY batches
KEPT = range(1, BASE - 400 + 1)  # 19,600 rows stay, every 10th changed
GONE = range(BASE - 400 + 1, BASE + 1)  # 400 absent: deactivated (2 %)
NEW = range(1, 401)  # 400 new people


def _changed(n: int) -> str:
    return "Changed" if n % 10 == 0 else "Sales"


FULL_FILE = (
    HEADER
    + rows(KEPT, department=_changed)
    + rows(NEW, prefix="N", department=lambda n: "New")
)


@pytest.fixture
def broker() -> Iterator[WorkerBroker]:
    with use_test_broker() as chosen:
        if chosen.kind not in ("redis", "rediss"):
            # The filesystem broker loses what a killed worker held (TEN-12);
            # the redelivery below ages Redis's own unacked index.
            ci_requires(f"a Redis broker (this run uses {chosen.url})")
        yield chosen


@pytest.fixture
def directory(
    committed_tenant: Tenant, broker: WorkerBroker, monkeypatch: pytest.MonkeyPatch
) -> Tenant:
    """`committed_tenant` with 20,000 members from an applied file (its
    task is not sent: it ran here)."""
    with monkeypatch.context() as patch, tenant_context(committed_tenant):
        patch.setattr(job_services, "enqueue_for_tenant", lambda *a, **k: None)
        base = run_here(
            receive(HEADER + rows(range(1, BASE + 1), department=lambda n: "Sales"))
        )
        assert base.status == EdiStatus.COMPLETED, base.errors
    return committed_tenant


def _state(tenant: Tenant, edi_file: EdiFile) -> tuple[str, str, int]:
    with tenant_context(tenant):
        row = EdiFile.objects.values_list("status", "job__message").get(pk=edi_file.pk)
        attempts = Job.objects.values_list("attempts", flat=True).get(
            pk=str(edi_file.job_id)
        )
    return row[0], row[1], attempts


@contextlib.contextmanager
def seat_pool_held(schema: str) -> Iterator[None]:
    """Lock the tenant's seat pool from a connection of the test's own, so
    an apply stops at its seat step with its first writes done."""
    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    with psycopg.connect(**params) as holder:
        holder.execute(
            f'SELECT 1 FROM "{schema}".portal_seatpool FOR UPDATE'  # noqa: S608
        )
        yield
        holder.rollback()


def _apply_waits_on_the_seat_pool() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE '%%portal_seatpool%%'"
        )
        return bool(cursor.fetchone()[0])


def _age_unacked(broker: WorkerBroker) -> int:
    """Make Redis treat the killed worker's unacknowledged message as past
    its visibility timeout, so the next worker gets it back (a redelivery
    without waiting 6 hours). Returns how many were aged."""
    aged = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        for tag, raw in client.hscan_iter(channel.unacked_key):
            if json.loads(raw)[2] == broker.queue:
                client.zadd(channel.unacked_index_key, {tag: 0})
                aged += 1
    return aged


CRASHES = ["parsing", "before_commit", "after_commit_before_ack", "killed_mid_apply"]


@pytest.mark.worker
@pytest.mark.parametrize("crash", CRASHES)
def test_a_crashed_import_finishes_exactly_once(
    crash: str, broker: WorkerBroker, directory: Tenant, monkeypatch
):
    tenant = directory
    with tenant_context(tenant):
        before = checksum(tenant.schema_name, MEMBER_TABLES)
        edi_file = receive(FULL_FILE, mode="full", name="full-hr.csv")
        job_id = str(edi_file.job_id)

    with running_worker(broker, start=False) as worker:
        if crash == "killed_mid_apply":
            with seat_pool_held(tenant.schema_name):
                worker.start()
                wait_until(
                    lambda: (
                        _state(tenant, edi_file)[1] == "applying"
                        and _apply_waits_on_the_seat_pool()
                    ),
                    timeout=JOB_TIMEOUT,
                    what="the apply to reach its seat step",
                )
                worker.kill()  # SIGKILL from outside, mid-apply
        else:
            monkeypatch.setenv("EDI_TEST_CRASH_AT", crash)
            worker.start()
            process = worker.process
            assert process is not None
            assert process.wait(timeout=JOB_TIMEOUT) == -signal.SIGKILL, (
                worker.log_text()
            )
            worker.kill()
            monkeypatch.delenv("EDI_TEST_CRASH_AT")

        status, _, attempts = _state(tenant, edi_file)
        assert attempts == 1
        with tenant_context(tenant):
            if crash == "after_commit_before_ack":
                assert status == EdiStatus.COMPLETED
                assert _age_unacked(broker) == 1  # Redis will deliver it again
            else:
                # Nothing of the file is applied after the crash.
                assert status == EdiStatus.VALIDATING
                assert checksum(tenant.schema_name, MEMBER_TABLES) == before
                assert events("edi.file.applied", edi_file) == 0

        # A fresh worker without the crash setting; the reaper re-sends the
        # job once its heartbeat is stale (aged here, not waited for).
        worker.start()
        with tenant_context(tenant):
            Job.objects.filter(pk=job_id).update(heartbeat_at=timezone.now() - STALE)
            requeued = job_reap_stale(tasks_by_kind={JOB_KIND: edi_import_task})
        if crash == "after_commit_before_ack":
            assert requeued == []  # a finished job is never re-sent
            wait_until(
                lambda: worker.log_text().count("succeeded in") >= 1,
                timeout=JOB_TIMEOUT,
                what="the redelivered message to run",
            )
        else:
            assert requeued == [job_id]
        final = wait_until(
            lambda: (
                _state(tenant, edi_file)[0] in {EdiStatus.COMPLETED, EdiStatus.FAILED}
                and _state(tenant, edi_file)
            ),
            timeout=JOB_TIMEOUT,
            what="the import to finish",
        )
        assert final[0] == EdiStatus.COMPLETED, worker.log_text()

    with tenant_context(tenant):
        edi_file.refresh_from_db()
        job = Job.objects.get(pk=job_id)
        assert job.status == JobStatus.SUCCEEDED
        assert job.attempts == (1 if crash == "after_commit_before_ack" else 2)
        assert {k: edi_file.counts[k] for k in ("rows", "created", "updated")} == {
            "rows": len(KEPT) + len(NEW),
            "created": len(NEW),
            "updated": len(KEPT) // 10,
        }
        assert edi_file.counts["deactivated"] == len(GONE)
        assert edi_file.counts["row_errors"] == 0
        members = Member.objects.exclude(role="owner")
        # One member per key.
        assert members.count() == BASE + len(NEW)
        assert members.values("employee_id").distinct().count() == BASE + len(NEW)
        assert members.filter(status=MemberStatus.DEACTIVATED).count() == len(GONE)
        assert not members.filter(
            status=MemberStatus.DEACTIVATED, employee_id__in=[f"E{n}" for n in KEPT]
        ).exists()
        assert members.filter(has_seat=True).count() == len(KEPT) + len(NEW)
        assert members.filter(department="Changed").count() == len(KEPT) // 10
        assert events("edi.file.applied", edi_file) == 1
        assert events("edi.file.failed", edi_file) == 0
        assert emails(edi_file) == admins()


# --------------------------------------------------- EDI-P1: durable receipt


@contextlib.contextmanager
def dead_broker() -> Iterator[str]:
    """Point this process's producer at a broker that refuses connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    saved = app.conf.broker_url
    saved_env = os.environ.get("CELERY_BROKER_URL")
    # Celery reads CELERY_BROKER_URL before its own setting (CI sets it).
    os.environ["CELERY_BROKER_URL"] = url
    app.conf.broker_url = url
    _reset_producer_pool()
    try:
        yield url
    finally:
        if saved_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_env
        app.conf.broker_url = saved
        _reset_producer_pool()


@pytest.mark.worker
def test_an_upload_while_the_broker_is_down_imports_once_it_is_back(
    broker: WorkerBroker, committed_tenant: Tenant, caplog: pytest.LogCaptureFixture
):
    tenant = committed_tenant
    with tenant_context(tenant):
        _, token = edi_token_issue(actor=None, name="HR system")
        host = tenant.domains.first().domain  # type: ignore[union-attr]
    client = Client(HTTP_HOST=host)
    body = (HEADER + rows(range(1, 6), department=lambda n: "Sales")).encode()

    with dead_broker(), caplog.at_level(logging.ERROR, "portal.services.jobs"):
        response = client.post(
            "/api/v1/edi/files/?mode=delta",
            body,
            content_type="text/csv",
            headers={"Authorization": f"Bearer {token}"},
        )
    # Accepted: the row and its job are committed although the send failed.
    assert response.status_code == 202, response.content
    file_id = response.json()["id"]
    assert "the reaper will retry" in caplog.text
    with tenant_context(tenant):
        edi_file = EdiFile.objects.get(pk=file_id)
        job = Job.objects.get(pk=str(edi_file.job_id))
        assert edi_file.status == EdiStatus.RECEIVED
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)

    with running_worker(broker) as worker:
        # The broker is back; the reaper's run (the beat task, here in this
        # process) sends the job nobody started once it is stale.
        with tenant_context(tenant):
            Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - STALE)
            result = jobs_reap_task.apply(kwargs={"schema_name": tenant.schema_name})
            assert result.successful(), result.traceback
        status = wait_until(
            lambda: (
                _state(tenant, edi_file)[0] in {"completed", "failed"}
                and _state(tenant, edi_file)[0]
            ),
            timeout=JOB_TIMEOUT,
            what="the file to import",
        )
        assert status == EdiStatus.COMPLETED, worker.log_text()

    with tenant_context(tenant):
        edi_file.refresh_from_db()
        assert edi_file.counts["created"] == 5
        assert Member.objects.filter(employee_id__startswith="E").count() == 5
        assert Job.objects.get(pk=job.pk).attempts == 1


# ------------------------------------------------ EDI-P15: tenant isolation


@pytest.fixture
def second_committed_tenant(
    django_db_setup: Any, django_db_blocker: Any
) -> Iterator[Tenant]:
    """Another fresh tenant whose writes commit (see `committed_tenant`)."""
    with committed_tenant_provisioned(django_db_blocker, name="Second Ltd") as tenant:
        yield tenant


@pytest.fixture
def unconsumed_queue() -> Iterator[WorkerBroker]:
    """What imports run here send on commit goes to a test queue that no
    worker consumes, dropped afterwards."""
    with use_test_broker() as chosen:
        yield chosen


ISOLATION_TABLES = (
    *MEMBER_TABLES,
    "portal_membersession",
    "portal_auditevent",
    "edi_edifile",
    "portal_outboxemail",
)
PEOPLE = 2_000


def test_two_tenants_with_the_same_keys_import_at_the_same_time(
    committed_tenant: Tenant,
    second_committed_tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    unconsumed_queue: WorkerBroker,
):
    tenants = {"a": committed_tenant, "b": second_committed_tenant}
    for tenant in tenants.values():
        with tenant_context(tenant):
            run_here(receive(HEADER + rows(range(1, PEOPLE + 1), department=str)))

    # Both applies are held just before their commit, at the same time.
    reached = {label: threading.Event() for label in tenants}
    release = {label: threading.Event() for label in tenants}
    by_schema = {t.schema_name: label for label, t in tenants.items()}

    def crash_point(name: str) -> None:
        if name == "before_commit":
            label = by_schema[current_schema()]
            reached[label].set()
            assert release[label].wait(JOB_TIMEOUT)

    monkeypatch.setattr(pipeline, "crash_point", crash_point)
    files: dict[str, EdiFile] = {}
    errors: list[BaseException] = []

    def import_in(label: str) -> None:
        try:
            with tenant_context(tenants[label]):
                # Same keys, different values; full files drop the same 40.
                text = HEADER + rows(
                    range(1, PEOPLE - 40 + 1), department=lambda n: f"Dept-{label}"
                )
                files[label] = run_here(receive(text, mode="full"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=import_in, args=(label,)) for label in tenants]
    for thread in threads:
        thread.start()
    try:
        for label in tenants:
            assert reached[label].wait(JOB_TIMEOUT), errors
        sums = {
            label: checksum(t.schema_name, ISOLATION_TABLES)
            for label, t in tenants.items()
        }
        release["a"].set()
        wait_until(lambda: "a" in files or errors, timeout=JOB_TIMEOUT, what="a")
        assert checksum(tenants["b"].schema_name, ISOLATION_TABLES) == sums["b"]
        after_a = checksum(tenants["a"].schema_name, ISOLATION_TABLES)
        assert after_a != sums["a"]
        release["b"].set()
        wait_until(lambda: "b" in files or errors, timeout=JOB_TIMEOUT, what="b")
        assert checksum(tenants["a"].schema_name, ISOLATION_TABLES) == after_a
    finally:
        for event in release.values():
            event.set()
        for thread in threads:
            thread.join(JOB_TIMEOUT)
    assert not errors, errors

    for label, tenant in tenants.items():
        assert files[label].status == EdiStatus.COMPLETED, files[label].errors
        assert files[label].counts["updated"] == PEOPLE - 40
        assert files[label].counts["deactivated"] == 40
        with tenant_context(tenant):
            departments = set(
                Member.objects.exclude(role="owner").values_list(
                    "department", flat=True
                )
            )
            # The 40 deactivated keep their old department (their number).
            assert f"Dept-{label}" in departments
            assert not {d for d in departments if d.startswith("Dept-")} - {
                f"Dept-{label}"
            }
            assert Member.objects.filter(department=f"Dept-{label}").count() == (
                PEOPLE - 40
            )


def test_a_task_given_the_wrong_schema_refuses_to_run(tenant, other_tenant, caplog):
    with tenant_context(other_tenant):
        foreign = receive(HEADER + rows(range(1, 3), department=str))
    with tenant_context(tenant):
        # TEN-8: this connection is on `tenant`; the task names `other`.
        with caplog.at_level(logging.ERROR, "portal.tasks_base"):
            result = edi_import_task.apply(
                kwargs={
                    "schema_name": other_tenant.schema_name,
                    "job_id": str(foreign.job_id),
                }
            )
        assert result.successful()
        assert "Refused task edi.import_run" in caplog.text
        # The right schema with the other tenant's job or file id: nothing
        # there resolves (ids are looked up only in this schema).
        assert not Job.objects.filter(pk=str(foreign.job_id)).exists()
        assert not EdiFile.objects.filter(pk=foreign.pk).exists()
        result = edi_import_task.apply(
            kwargs={"schema_name": tenant.schema_name, "job_id": str(foreign.job_id)}
        )
        assert result.successful()
        from portal.services.jobs import job_create

        own = job_create(kind=JOB_KIND, actor=None, params={"file_id": str(foreign.pk)})
        job = job_start(job_id=str(own.pk))
        assert job is not None
        edi_import_run(job=job)
        own.refresh_from_db()
        assert own.status == JobStatus.SUCCEEDED
        assert own.result == {"skipped": True}
    with tenant_context(other_tenant):
        foreign.refresh_from_db()
        assert foreign.status == EdiStatus.RECEIVED
        job = Job.objects.get(pk=str(foreign.job_id))
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
        assert not Member.objects.filter(employee_id="E1").exists()
