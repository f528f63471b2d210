"""The tenant audit log (PORTAL-11..13).

Every public service function says which audit actions it writes (or why it
writes none); writes record who, what, when and from where in the same
transaction; the table is append-only; `/audit/` filters and pages without
loss; exports are encrypted, private to their requester and expire.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import io
import json
import pkgutil
import uuid
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from django_tenants.utils import tenant_context

import portal.services
from portal.models import AuditEvent, Job, JobStatus, Member
from portal.roles import Role
from portal.services.audit import _scrub_changes, audit_export_run
from portal.services.exports import export_path
from portal.services.jobs import job_start
from portal.services.members import member_create, member_password_set
from tests.factories import AuditEventFactory

# The decorators themselves are the marking machinery, not services.
NOT_SERVICE_MODULES = {"portal.services.registry"}


def _service_modules() -> list[ModuleType]:
    names = [
        f"portal.services.{info.name}"
        for info in pkgutil.iter_modules(portal.services.__path__)
    ]
    import tenants.services

    names += [
        f"tenants.services.{info.name}"
        for info in pkgutil.iter_modules(tenants.services.__path__)
    ]
    import sso.services

    names += ["sso.services"] + [
        f"sso.services.{info.name}"
        for info in pkgutil.iter_modules(sso.services.__path__)
    ]
    import edi.services

    # Recursive: a services module that grew into a package (STYLE.md) is
    # checked module by module.
    names += [
        info.name
        for info in pkgutil.walk_packages(edi.services.__path__, "edi.services.")
    ]
    return [
        importlib.import_module(name)
        for name in names
        if name not in NOT_SERVICE_MODULES
    ]


def _public_functions(module: ModuleType) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(obj):
            continue
        # Defined here, not imported from elsewhere (decorators keep __module__).
        if obj.__module__ != module.__name__:
            continue
        found.append((name, obj))
    return found


def test_every_public_service_function_declares_its_audit_actions():
    modules = _service_modules()
    assert "portal.services.members" in {m.__name__ for m in modules}
    assert "edi.services.sftp.keys" in {m.__name__ for m in modules}
    checked = 0
    unmarked = []
    for module in modules:
        for name, func in _public_functions(module):
            checked += 1
            actions = getattr(func, "__audit_actions__", None)
            reason = getattr(func, "__audit_exempt__", None)
            if actions:
                # Dotted names (`portal.member.created`, `tenant.provisioned`).
                assert all(isinstance(a, str) and "." in a for a in actions), (
                    f"{module.__name__}.{name}: actions must be dotted names"
                )
            elif not (isinstance(reason, str) and reason.strip()):
                unmarked.append(f"{module.__name__}.{name}")
    assert checked > 20
    assert not unmarked, "Neither @audits nor @audit_exempt: " + ", ".join(unmarked)


def test_registered_actions_match_member_create():
    assert member_create.__audit_actions__ == ("portal.member.created",)  # type: ignore[attr-defined]


class _Rollback(Exception):
    pass


def _create_then_roll_back(email: str, actor: Member) -> None:
    with transaction.atomic():
        member = member_create(email=email, actor=actor)
        # The event exists inside the transaction: same transaction as the write.
        seen = AuditEvent.objects.filter(
            action="portal.member.created", target_id=str(member.pk)
        ).exists()
        raise _Rollback(seen)


def test_rolled_back_service_write_leaves_no_event(tenant, tenant_owner):
    email = f"rollback-{uuid.uuid4().hex[:8]}@example.test"
    with tenant_context(tenant):
        with pytest.raises(_Rollback) as rolled_back:
            _create_then_roll_back(email, tenant_owner)
        assert rolled_back.value.args == (True,)
        assert not Member.objects.filter(email=email).exists()
        assert not AuditEvent.objects.filter(
            action="portal.member.created", target_label=email
        ).exists()


def test_web_write_records_actor_target_changes_and_request(
    client_for, tenant, tenant_owner
):
    email = f"new-{uuid.uuid4().hex[:8]}@example.test"
    started = timezone.now()
    response = client_for(tenant_owner).post(
        "/members/new/",
        {"email": email, "first_name": "Ada", "role": Role.MEMBER},
        HTTP_X_REQUEST_ID="abcdef12-3456",
        HTTP_USER_AGENT="audit-test-agent/1.0",
    )
    assert response.status_code == 302, response.content[:500]
    assert response["X-Request-ID"] == "abcdef12-3456"
    with tenant_context(tenant):
        created = Member.objects.get(email=email)
        event = AuditEvent.objects.get(
            action="portal.member.created", request_id="abcdef12-3456"
        )
    assert started <= event.occurred_at <= timezone.now()
    assert (event.actor_type, event.actor_id, event.actor_label) == (
        "member",
        str(tenant_owner.pk),
        tenant_owner.email,
    )
    assert (event.target_type, event.target_id, event.target_label) == (
        "portal.member",
        str(created.pk),
        str(created),
    )
    assert event.changes["email"] == email
    assert event.changes["role"] == Role.MEMBER
    assert event.source == "web"
    assert event.ip == "127.0.0.1"
    assert event.user_agent == "audit-test-agent/1.0"


def test_malformed_request_id_is_replaced_by_a_fresh_uuid(tenant_client):
    response = tenant_client.get("/audit/", HTTP_X_REQUEST_ID="not valid; <script>")
    assert response.status_code == 200
    assert str(uuid.UUID(response["X-Request-ID"])) == response["X-Request-ID"]


def test_secrets_in_changes_are_stored_as_changed():
    scrubbed = _scrub_changes(
        {
            "password": "hunter2-plain",
            "client_secret": "s3cr3t",
            "api_token": "tok",
            "private_key": "-----BEGIN",
            "first_name": "Ada",
        }
    )
    assert scrubbed == {
        "password": "changed",
        "client_secret": "changed",
        "api_token": "changed",
        "private_key": "changed",
        "first_name": "Ada",
    }


def test_oversized_changes_are_truncated_to_field_names():
    scrubbed = _scrub_changes({"big": "x" * 9000, "small": 1})
    assert scrubbed == {"truncated": True, "fields": ["big", "small"]}
    assert len(json.dumps(scrubbed)) <= 8 * 1024


def test_password_set_event_never_holds_the_password(tenant, tenant_owner, make_member):
    target = make_member(Role.MEMBER)
    password = "plaintext-Password-marker-77"  # noqa: S105
    with tenant_context(tenant):
        member_password_set(member=target, password=password, actor=tenant_owner)
        event = AuditEvent.objects.get(
            action="portal.member.password_set", target_id=str(target.pk)
        )
    assert event.changes == {"password": "changed"}
    assert password not in json.dumps(event.changes)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE portal_auditevent SET action = 'tampered' WHERE id = %s",
        "DELETE FROM portal_auditevent WHERE id = %s",
        "TRUNCATE portal_auditevent",
    ],
    ids=["update", "delete", "truncate"],
)
def test_raw_sql_cannot_change_the_audit_log(tenant, statement):
    with tenant_context(tenant):
        event = AuditEventFactory.create(action="test.append_only.checked")
        params = [event.pk] if "%s" in statement else []
        with connection.cursor() as cursor:
            # A savepoint, so the refused statement does not poison the test.
            with (
                pytest.raises(DatabaseError, match="append-only"),
                transaction.atomic(),
            ):
                cursor.execute(statement, params)
        event.refresh_from_db()
        assert event.action == "test.append_only.checked"


def _page(client, query: dict[str, str]):
    response = client.get("/audit/", query)
    assert response.status_code == 200
    return response.context["page"]


def _ids(page) -> list[int]:
    return [event.pk for event in page.items]


def test_audit_filters(tenant, tenant_client):
    day = datetime(2001, 2, 3, 10, 0, tzinfo=UTC)
    with tenant_context(tenant):
        alpha = AuditEventFactory.create(
            action="test.alpha.created",
            occurred_at=day,
            actor_type="member",
            actor_id="9001",
            actor_label="alice@example.test",
            request_id="req-alpha-0001",
            source="web",
        )
        beta = AuditEventFactory.create(
            action="test.beta.created",
            occurred_at=day + timedelta(days=1),
            actor_label="bob@example.test",
            request_id="req-beta-0001",
            source="api",
        )
        alpha_later = AuditEventFactory.create(
            action="test.alpha.deleted",
            occurred_at=day + timedelta(days=2),
            actor_label="alice@example.test",
            target_id="t-42",
            source="cli",
        )
    assert _ids(_page(tenant_client, {"action": "test.alpha."})) == [
        alpha_later.pk,
        alpha.pk,
    ]
    assert _ids(
        _page(tenant_client, {"action": "test.", "actor": "ALICE@example.test"})
    ) == [
        alpha_later.pk,
        alpha.pk,
    ]
    assert _ids(_page(tenant_client, {"actor": "9001"})) == [alpha.pk]
    assert _ids(
        _page(tenant_client, {"since": "2001-02-04", "until": "2001-02-04"})
    ) == [beta.pk]
    assert _ids(_page(tenant_client, {"action": "test.", "until": "2001-02-04"})) == [
        beta.pk,
        alpha.pk,
    ]
    assert _ids(_page(tenant_client, {"request_id": "req-beta-0001"})) == [beta.pk]
    assert _ids(_page(tenant_client, {"action": "test.", "source": "cli"})) == [
        alpha_later.pk
    ]
    assert _ids(_page(tenant_client, {"action": "test.", "target": "t-42"})) == [
        alpha_later.pk
    ]


def test_keyset_pagination_splits_identical_timestamps_without_loss(
    tenant, tenant_client
):
    moment = datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
    with tenant_context(tenant):
        created = AuditEventFactory.create_batch(
            120, occurred_at=moment, action="test.tie.x"
        )
    expected = sorted((event.pk for event in created), reverse=True)
    seen: list[int] = []
    query = {"action": "test.tie."}
    pages = 0
    while True:
        page = _page(tenant_client, query)
        pages += 1
        seen.extend(_ids(page))
        if not page.next_cursor:
            break
        query = {"action": "test.tie.", "after": page.next_cursor}
        assert pages < 10, "pagination does not terminate"
    assert pages == 3
    assert seen == expected  # newest id first, each exactly once


def _download(client, job_id) -> bytes:
    response = client.get(f"/jobs/{job_id}/download/")
    assert response.status_code == 200, response.status_code
    return b"".join(response.streaming_content)


@pytest.fixture
def export_files(tenant):
    """Remove export files written by a test (the DB rolls back, disk does not)."""
    job_ids: list[object] = []
    yield job_ids
    with tenant_context(tenant):
        for job_id in job_ids:
            path = export_path(job_id)
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".part").unlink(missing_ok=True)


def test_audit_export_is_private_neutralised_encrypted_and_expires(
    tenant, tenant_owner, tenant_admin, client_for, export_files
):
    marker = f"plaintext-marker-{uuid.uuid4().hex}"
    with tenant_context(tenant):
        AuditEventFactory.create(
            action="test.export.formula",
            occurred_at=datetime(2002, 1, 1, tzinfo=UTC),
            actor_label='=HYPERLINK("http://x")',
            target_label=marker,
            target_id="+1",
            user_agent="@SUM(A1)",
        )
    owner = client_for(tenant_owner)
    response = owner.post(
        "/audit/export/", {"action": "test.export.", "idempotency_key": "k-export-1"}
    )
    assert response.status_code == 302
    with tenant_context(tenant):
        job = Job.objects.get(kind="audit_export", requester=tenant_owner)
        export_files.append(job.pk)
        assert response["Location"] == f"/jobs/{job.pk}/"
        assert job.status == JobStatus.QUEUED
        assert job.params == {"filters": {"action": "test.export."}}
        assert AuditEvent.objects.filter(
            action="portal.audit.export_requested", target_id=str(job.pk)
        ).exists()
        # No worker runs here: run the job's service in-process.
        running = job_start(job_id=str(job.pk))
        assert running is not None
        audit_export_run(job=running)
        job.refresh_from_db()
        assert job.status == JobStatus.SUCCEEDED
        on_disk = export_path(job.pk).read_bytes()
    assert marker.encode() not in on_disk
    assert b"HYPERLINK" not in on_disk

    body = _download(owner, job.pk)
    assert body.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[0][:5] == [
        "occurred_at",
        "actor_type",
        "actor_id",
        "actor_label",
        "action",
    ]
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["actor_label"] == '\'=HYPERLINK("http://x")'
    assert row["target_id"] == "'+1"
    assert row["user_agent"] == "'@SUM(A1)"
    assert row["target_label"] == marker
    with tenant_context(tenant):
        assert AuditEvent.objects.filter(
            action="portal.export.downloaded", target_id=str(job.pk)
        ).exists()

    # Only the requester may fetch the file, even an admin who may view the log.
    assert client_for(tenant_admin).get(f"/jobs/{job.pk}/download/").status_code == 404

    with tenant_context(tenant):
        Job.objects.filter(pk=job.pk).update(
            finished_at=timezone.now() - timedelta(hours=24, minutes=1)
        )
    assert owner.get(f"/jobs/{job.pk}/download/").status_code == 404


def test_a_demoted_requester_can_no_longer_download_the_export(
    tenant, make_member, client_for
):
    from portal.services.audit import audit_export_request, audit_export_run
    from portal.services.members import member_role_set

    admin = make_member("admin")
    with tenant_context(tenant):
        job = audit_export_request(actor=admin, filters={})
        started = job_start(job_id=str(job.pk))
        assert started is not None
        audit_export_run(job=started)
    client = client_for(admin)
    assert client.get(f"/jobs/{job.pk}/download/").status_code == 200
    with tenant_context(tenant):
        owner = Member.objects.get(role="owner")
        member_role_set(member=admin, role="member", actor=owner)
    assert client.get(f"/jobs/{job.pk}/download/").status_code == 404
