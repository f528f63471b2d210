"""TEN-15 and PORTAL-05: one tenant never reaches another's data.

`tenant` plays acme and `other_tenant` beta. Each case also runs its
success path on the object's own host, so a 404 cannot pass merely because
the object or the route is broken.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client
from django_tenants.utils import tenant_context

from portal.models import Job, JobStatus, Member
from portal.roles import Role
from tests.factories import TEST_PASSWORD, AuditEventFactory, MemberFactory

MARKER = "zqisolationmarker"
ID_ATTEMPTS = 50


@dataclasses.dataclass(frozen=True)
class Foreign:
    """Objects that live only in the other tenant."""

    member_id: int
    member_email: str
    job_id: str


def _finished_export(requester: Member) -> Job:
    """An audit export of the current schema, run to completion."""
    from portal.services.audit import audit_export_request, audit_export_run
    from portal.services.jobs import job_start

    job = audit_export_request(actor=requester, filters={})
    started = job_start(job_id=str(job.pk))
    assert started is not None
    audit_export_run(job=started)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    return job


def _remove_export(tenant, job_id: object) -> None:
    from portal.services.exports import export_path

    with tenant_context(tenant):
        export_path(job_id).unlink(missing_ok=True)


def _owner(tenant) -> Member:
    with tenant_context(tenant):
        return Member.objects.get(email=f"owner@{tenant.slug}.test")


@pytest.fixture
def foreign(tenant, other_tenant) -> Iterator[Foreign]:
    """A member and a finished export in other_tenant, ids free in tenant."""
    other_owner = _owner(other_tenant)
    with tenant_context(other_tenant):
        AuditEventFactory.create(target_label=f"{MARKER}-foreign-event")
        job = _finished_export(other_owner)
    # Ids repeat across schemas: take a member id that tenant does not use.
    for attempt in range(ID_ATTEMPTS):
        with tenant_context(other_tenant):
            member = MemberFactory.create(
                email=f"foreign{attempt}.{MARKER}@other-only.test", role=Role.MEMBER
            )
        with tenant_context(tenant):
            if not Member.objects.filter(pk=member.pk).exists():
                assert not Job.objects.filter(pk=job.pk).exists()
                break
    else:
        pytest.fail("no member id of other_tenant is free in tenant")
    yield Foreign(member_id=member.pk, member_email=member.email, job_id=str(job.pk))
    _remove_export(other_tenant, job.pk)


# (label, method, path, answer on the object's own host)
BY_ID = [
    ("member-detail", "GET", "/members/{member}/", 200),
    ("member-edit", "POST", "/members/{member}/", 302),
    ("member-action", "POST", "/members/{member}/grant_seat/", 302),
    ("api-member-detail", "GET", "/api/v1/members/{member}/", 200),
    ("job-detail", "GET", "/jobs/{job}/", 200),
    ("api-job-detail", "GET", "/api/v1/jobs/{job}/", 200),
    ("job-download", "GET", "/jobs/{job}/download/", 200),
]


def _member_row(tenant, member_id: int) -> dict[str, Any]:
    with tenant_context(tenant):
        return dict(Member.objects.filter(pk=member_id).values().get())


@pytest.mark.parametrize(
    ("method", "template", "home_status"),
    [pytest.param(*case[1:], id=case[0]) for case in BY_ID],
)
def test_other_tenants_object_by_id_is_404(
    method, template, home_status, tenant, other_tenant, foreign, client_for
):
    path = template.format(member=foreign.member_id, job=foreign.job_id)
    data = {"first_name": "Hijacked"} if method == "POST" else {}
    before = _member_row(other_tenant, foreign.member_id)

    # The tenant's owner may see every member and job of their own tenant.
    acme = client_for(_owner(tenant), on=tenant)
    response = _send(acme, method, path, data)
    assert response.status_code == 404
    assert _member_row(other_tenant, foreign.member_id) == before
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "not_found"

    # The same request on the object's own host succeeds.
    beta = client_for(_owner(other_tenant), on=other_tenant)
    assert _send(beta, method, path, data).status_code == home_status


def _send(client: Client, method: str, path: str, data: dict):
    return client.post(path, data) if method == "POST" else client.get(path, data)


@pytest.fixture
def own_member(tenant) -> Member:
    with tenant_context(tenant):
        AuditEventFactory.create(target_label=f"{MARKER}-own-event")
        return MemberFactory.create(email=f"own.{MARKER}@tenant-only.test")


def _body(response) -> str:
    assert response.status_code == 200
    if response.streaming:
        return b"".join(response.streaming_content).decode("utf-8")
    return response.content.decode("utf-8")


@pytest.mark.parametrize(
    "path",
    [
        f"/members/?q={MARKER}",
        f"/api/v1/members/?q={MARKER}",
        f"/members/export.csv?q={MARKER}",
        "/audit/",
    ],
)
def test_lists_and_exports_omit_other_tenants_rows(
    path, tenant, other_tenant, foreign, own_member, client_for
):
    marker = "foreign-event" if path == "/audit/" else foreign.member_email
    own = "own-event" if path == "/audit/" else own_member.email
    body = _body(client_for(_owner(tenant), on=tenant).get(path))
    assert own in body
    assert marker not in body
    # The foreign row does show on its own host.
    assert marker in _body(client_for(_owner(other_tenant), on=other_tenant).get(path))


def test_audit_export_file_omits_other_tenants_events(
    tenant, other_tenant, foreign, own_member, client_for
):
    owner = _owner(tenant)
    with tenant_context(tenant):
        job = _finished_export(owner)
    try:
        response = client_for(owner, on=tenant).get(f"/jobs/{job.pk}/download/")
        body = _body(response)
    finally:
        _remove_export(tenant, job.pk)
    assert f"{MARKER}-own-event" in body
    assert f"{MARKER}-foreign-event" not in body


def _same_id_member(tenant, user_id: int, role: str) -> Member:
    """An active member of `tenant` whose user has the id `user_id`."""
    user_model = get_user_model()
    with tenant_context(tenant):
        user = user_model.objects.filter(pk=user_id).first()
        if user is None:
            email = f"twin{user_id}@{tenant.slug}-twin.test"
            user = user_model.objects.create_user(
                username=email, email=email, password=TEST_PASSWORD
            )
            user_model.objects.filter(pk=user.pk).update(id=user_id)
            user = user_model.objects.get(pk=user_id)
        existing = Member.objects.filter(user=user).first()
        member = existing or MemberFactory.create(
            email=user.email, user=user, role=role
        )
        assert member.status == "active"
        return member


@pytest.mark.parametrize("direction", ["tenant-on-other", "other-on-tenant"])
def test_session_cookie_is_anonymous_on_another_tenants_host(
    direction, tenant, other_tenant, make_member
):
    """PORTAL-05 with same-id users in both tenants."""
    home, away = (
        (tenant, other_tenant)
        if direction == "tenant-on-other"
        else (other_tenant, tenant)
    )
    member = make_member(Role.ADMIN, in_tenant=home)
    twin = _same_id_member(away, member.user_id, Role.ADMIN)
    assert twin.user_id == member.user_id

    home_host = home.domains.first().domain
    away_host = away.domains.first().domain
    browser = Client(HTTP_HOST=home_host)
    response = browser.post(
        "/accounts/login/", {"username": member.email, "password": TEST_PASSWORD}
    )
    assert response.status_code == 302
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    # Host-only: no Domain attribute, so a browser never sends it elsewhere.
    assert cookie["domain"] == ""
    assert browser.get("/api/v1/me/").json()["email"] == member.email

    replay = Client(HTTP_HOST=away_host)
    replay.cookies[settings.SESSION_COOKIE_NAME] = cookie.value
    assert replay.get("/api/v1/me/").status_code == 401
    page = replay.get("/members/")
    assert page.status_code == 302
    assert page["Location"].startswith("/accounts/login/?next=")
    with tenant_context(away):
        assert not Session.objects.filter(session_key=cookie.value).exists()


def test_task_with_own_schema_and_foreign_job_id_finds_nothing(tenant, other_tenant):
    """TEN-15: a task for tenant given other's job id must not touch it."""
    from portal.services.audit import audit_export_request
    from portal.tasks import audit_export_run_task

    with tenant_context(other_tenant):
        foreign_job = audit_export_request(actor=_owner(other_tenant), filters={})
    foreign_id = str(foreign_job.pk)
    owner = _owner(tenant)
    with tenant_context(tenant):
        own_job = audit_export_request(actor=owner, filters={})
        assert not Job.objects.filter(pk=foreign_id).exists()
        try:
            for schema_name, job_id in (
                (tenant.schema_name, foreign_id),
                # TEN-8: naming the other schema from this connection is refused.
                (other_tenant.schema_name, foreign_id),
                (tenant.schema_name, str(own_job.pk)),
            ):
                result = audit_export_run_task.apply(
                    kwargs={"schema_name": schema_name, "job_id": job_id}
                )
                assert result.successful(), result.traceback
            own_job.refresh_from_db()
            # The same task with an id of this schema did run.
            assert own_job.status == JobStatus.SUCCEEDED
        finally:
            _remove_export(tenant, own_job.pk)
    with tenant_context(other_tenant):
        foreign_job.refresh_from_db()
        assert foreign_job.status == JobStatus.QUEUED
        assert foreign_job.attempts == 0
        assert foreign_job.started_at is None
