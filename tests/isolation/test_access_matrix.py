"""PORTAL-04: the access matrix of every tenant page and API endpoint.

One table, `MATRIX`, gives the answer of every (route, method) column for
every row: anonymous, the five roles, and the owner of another tenant whose
session cookie is replayed on this tenant's host (it must get what
anonymous gets, PORTAL-05). Each cell is its own test. A refused write
(login redirect, 401, 403, 404, 400) must change no row and add no audit
event. `tests/isolation/test_url_coverage.py` fails when a tenant route has
no column here and no written exemption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.test import Client
from django_tenants.utils import tenant_context

from portal.models import AuditEvent, Job, Member
from portal.roles import Role
from tests.factories import MemberFactory

ROLES = (
    "anonymous",
    "member",
    "readonly_admin",
    "user_admin",
    "admin",
    "owner",
    "foreign",
)

# A 302 to the login page carrying ?next=<the requested path>.
LOGIN = "login"
# A 302 anywhere but the login-with-next page: the action went through.
REDIRECT = "redirect"

Expected = int | str


@dataclasses.dataclass(frozen=True)
class Column:
    """One (route, method) column; `cells` follow the order of ROLES."""

    label: str
    route: str
    method: str
    path: str
    cells: tuple[Expected, ...]
    data: dict[str, str] = dataclasses.field(default_factory=dict)
    # A successful request of this column changes rows (checked, so that
    # the "refused write changes nothing" check cannot pass vacuously).
    writes: bool = False

    @property
    def expected(self) -> dict[str, Expected]:
        return dict(zip(ROLES, self.cells, strict=True))


L, R = LOGIN, REDIRECT
# {target} is a member with role member and no seat, {owner} the tenant's
# owner (holding a seat), {job} a finished audit export the owner requested.
# fmt: off
MATRIX: tuple[Column, ...] = (
    # Column(label, route name, method, path,
    #        (anonymous, member, readonly_admin, user_admin, admin, owner,
    #         foreign), form data, writes)
    Column("dashboard", "portal:dashboard", "GET", "/",
           (L, 200, 200, 200, 200, 200, L)),
    Column("login", "portal:login", "GET", "/accounts/login/",
           (200, R, R, R, R, R, 200)),
    Column("login", "portal:login", "POST", "/accounts/login/",
           (400, R, R, R, R, R, 400)),
    Column("logout", "portal:logout", "GET", "/accounts/logout/",
           (200, 200, 200, 200, 200, 200, 200)),
    Column("logout", "portal:logout", "POST", "/accounts/logout/",
           (R, R, R, R, R, R, R)),
    Column("member-list", "portal:member-list", "GET", "/members/",
           (L, 403, 200, 200, 200, 200, L)),
    Column("member-create", "portal:member-create", "GET", "/members/new/",
           (L, 403, 403, 200, 200, 200, L)),
    Column("member-create", "portal:member-create", "POST", "/members/new/",
           (L, 403, 403, R, R, R, L),
           {"email": "new.person@example.test", "role": "member"}, writes=True),
    Column("member-export", "portal:member-export", "GET", "/members/export.csv",
           (L, 403, 200, 200, 200, 200, L)),
    Column("member-export", "portal:member-export", "POST", "/members/export.csv",
           (L, 403, R, R, R, R, L), {"status": "active"}, writes=True),
    Column("member-bulk", "portal:member-bulk", "POST", "/members/bulk/",
           (L, 403, 403, R, R, R, L),
           {"action": "grant_seat", "scope": "selected", "ids": "{target}"},
           writes=True),
    Column("member-detail", "portal:member-detail", "GET", "/members/{target}/",
           (L, 403, 200, 200, 200, 200, L)),
    Column("member-detail", "portal:member-detail", "POST", "/members/{target}/",
           (L, 403, 403, R, R, R, L),
           {"first_name": "Renamed", "last_name": "Person"}, writes=True),
    # Object rule: only owners touch owners (PORTAL-01/02).
    Column("member-detail-owner", "portal:member-detail", "POST", "/members/{owner}/",
           (L, 403, 403, 403, 403, R, L),
           {"first_name": "Renamed", "last_name": "Owner"}, writes=True),
    Column("member-action", "portal:member-action", "POST",
           "/members/{target}/grant_seat/",
           (L, 403, 403, R, R, R, L), writes=True),
    Column("member-action-owner", "portal:member-action", "POST",
           "/members/{owner}/revoke_seat/",
           (L, 403, 403, 403, 403, R, L), writes=True),
    Column("audit-list", "portal:audit-list", "GET", "/audit/",
           (L, 403, 200, 403, 200, 200, L)),
    Column("audit-export", "portal:audit-export", "POST", "/audit/export/",
           (L, 403, R, 403, R, R, L), writes=True),
    # Anyone may follow their own jobs; audit viewers see every job.
    Column("job-detail", "portal:job-detail", "GET", "/jobs/{job}/",
           (L, 404, 200, 404, 200, 200, L)),
    # Only the requester downloads an export (PORTAL-13).
    Column("job-download", "portal:job-download", "GET", "/jobs/{job}/download/",
           (L, 404, 404, 404, 404, 200, L)),
    Column("api-me", "portal:api:me", "GET", "/api/v1/me/",
           (401, 200, 200, 200, 200, 200, 401)),
    Column("api-job-detail", "portal:api:job-detail-api", "GET", "/api/v1/jobs/{job}/",
           (401, 404, 200, 404, 200, 200, 401)),
    Column("api-member-list", "portal:api:member-list-api", "GET", "/api/v1/members/",
           (401, 403, 200, 200, 200, 200, 401)),
    Column("api-member-detail", "portal:api:member-detail-api", "GET",
           "/api/v1/members/{target}/",
           (401, 403, 200, 200, 200, 200, 401)),
    Column("api-audit-export", "portal:api:audit-export-api", "POST",
           "/api/v1/audit/exports/",
           (401, 403, 202, 403, 202, 202, 401), writes=True),
    # EDI over HTTPS: uploads take a token only; admins' sessions may read.
    Column("api-edi-file-list", "edi_api:file-list", "GET", "/api/v1/edi/files/",
           (401, 403, 200, 200, 200, 200, 401)),
    Column("api-edi-file-upload", "edi_api:file-list", "POST", "/api/v1/edi/files/",
           (401, 401, 401, 401, 401, 401, 401)),
    Column("api-edi-file-detail", "edi_api:file-detail", "GET",
           "/api/v1/edi/files/00000000-0000-4000-8000-000000000000/",
           (401, 403, 404, 404, 404, 404, 401)),
    Column("api-edi-file-results", "edi_api:file-results", "GET",
           "/api/v1/edi/files/00000000-0000-4000-8000-000000000000/results.csv",
           (401, 403, 404, 404, 404, 404, 401)),
    # The /edi/ pages: owners and admins only (edi.md §4). The file routes
    # use an id no tenant has; tests/edi/test_page.py covers real files.
    Column("edi-file-list", "edi:file-list", "GET", "/edi/",
           (L, 403, 403, 403, 200, 200, L)),
    Column("edi-file-upload", "edi:file-upload", "POST", "/edi/upload/",
           (L, 403, 403, 403, 400, 400, L)),
    Column("edi-file-detail", "edi:file-detail", "GET",
           "/edi/files/00000000-0000-4000-8000-000000000000/",
           (L, 403, 403, 403, 404, 404, L)),
    Column("edi-file-status", "edi:file-status", "GET",
           "/edi/files/00000000-0000-4000-8000-000000000000/status/",
           (L, 403, 403, 403, 404, 404, L)),
    Column("edi-file-apply", "edi:file-apply", "POST",
           "/edi/files/00000000-0000-4000-8000-000000000000/apply/",
           (L, 403, 403, 403, 404, 404, L)),
    Column("edi-file-cancel", "edi:file-cancel", "POST",
           "/edi/files/00000000-0000-4000-8000-000000000000/cancel/",
           (L, 403, 403, 403, 404, 404, L)),
    Column("edi-file-apply-anyway", "edi:file-apply-anyway", "POST",
           "/edi/files/00000000-0000-4000-8000-000000000000/apply-anyway/",
           (L, 403, 403, 403, 404, 404, L)),
    Column("edi-file-results", "edi:file-results", "GET",
           "/edi/files/00000000-0000-4000-8000-000000000000/results.csv",
           (L, 403, 403, 403, 404, 404, L)),
    Column("edi-file-raw", "edi:file-raw", "GET",
           "/edi/files/00000000-0000-4000-8000-000000000000/raw.csv",
           (L, 403, 403, 403, 404, 404, L)),
    Column("edi-settings", "edi:settings", "GET", "/edi/settings/",
           (L, 403, 403, 403, 200, 200, L)),
    Column("edi-settings-action", "edi:settings-action", "POST",
           "/edi/settings/rule-add/",
           (L, 403, 403, 403, R, R, L),
           {"field": "department", "value": "Matrix"}),
    # The schema and its docs sit behind the page decorator: a browser asks.
    Column("api-schema", "portal:api-schema", "GET", "/api/schema/",
           (L, 200, 200, 200, 200, 200, L)),
    Column("api-docs", "portal:api-docs", "GET", "/api/docs/",
           (L, 200, 200, 200, 200, 200, L)),
    # SSO settings: owners and admins edit, read-only admins view (sso.md §2).
    Column("sso-settings", "sso:settings", "GET", "/sso/",
           (L, 403, 200, 403, 200, 200, L)),
    Column("sso-settings-action", "sso:settings-action", "POST",
           "/sso/sp-key-prepare/",
           (L, 403, 403, 403, R, R, L)),
    Column("sso-test-start", "sso:test-start", "POST", "/sso/test/",
           (L, 403, 403, 403, R, R, L)),
    Column("sso-test-result", "sso:test-result", "GET",
           "/sso/test/00000000-0000-4000-8000-000000000000/",
           (L, 403, 403, 403, 404, 404, L)),
    Column("sso-link-reset", "sso:link-reset", "POST", "/sso/links/{target}/reset/",
           (L, 403, 403, 403, R, R, L)),
    # Public SAML endpoints: the same answer for everyone (no IdP here yet).
    Column("sso-metadata", "sso:metadata", "GET", "/sso/saml/metadata/",
           (200, 200, 200, 200, 200, 200, 200)),
    Column("sso-login", "sso:login", "GET", "/sso/saml/login/",
           (404, 404, 404, 404, 404, 404, 404)),
    Column("sso-finish", "sso:finish", "GET", "/sso/saml/finish/",
           (403, 403, 403, 403, 403, 403, 403)),
)
# fmt: on

SUCCESS = frozenset({200, 201, 202, REDIRECT})


def _cell_id(column: Column, role: str) -> str:
    return f"{column.method}-{column.label}-{role}"


CELLS = [
    pytest.param(column, role, id=_cell_id(column, role))
    for column in MATRIX
    for role in ROLES
]


def test_matrix_has_every_cell():
    """A column missing a row, or a duplicated column, fails."""
    keys = [(column.label, column.method) for column in MATRIX]
    assert len(keys) == len(set(keys))
    for column in MATRIX:
        assert len(column.cells) == len(ROLES), column.label
        assert all(
            cell in (LOGIN, REDIRECT) or isinstance(cell, int) for cell in column.cells
        ), column.label


def _snapshot() -> tuple[Any, ...]:
    """Every member row, every job row and the audit log's size."""
    return (
        list(Member.objects.order_by("pk").values()),
        list(Job.objects.order_by("pk").values()),
        AuditEvent.objects.count(),
    )


@pytest.fixture
def finished_export(tenant, tenant_owner) -> Iterator[Job]:
    """An audit export requested by the owner, run to completion."""
    from portal.services.audit import audit_export_request, audit_export_run
    from portal.services.exports import export_path
    from portal.services.jobs import job_start

    with tenant_context(tenant):
        job = audit_export_request(actor=tenant_owner, filters={})
        started = job_start(job_id=str(job.pk))
        assert started is not None
        audit_export_run(job=started)
        path = export_path(job.pk)
        assert path.exists()
    yield job
    # The test transaction rolls back; the file on disk must go too.
    path.unlink(missing_ok=True)


def _actor_client(role: str, tenant, other_tenant, make_member, client_for) -> Client:
    if role == "anonymous":
        return client_for(None)
    if role == "foreign":
        with tenant_context(other_tenant):
            other_owner = Member.objects.get(email="owner@other.test")
        foreign = client_for(other_owner, on=other_tenant)
        assert settings.SESSION_COOKIE_NAME in foreign.cookies
        client = client_for(None, on=tenant)
        for name, morsel in foreign.cookies.items():
            client.cookies[name] = morsel.value
        return client
    if role == Role.OWNER:
        with tenant_context(tenant):
            owner = Member.objects.get(email="owner@tenant.test")
        return client_for(owner)
    return client_for(make_member(role))


def _assert_answer(response: Any, expected: Expected, path: str) -> None:
    location = response.headers.get("Location", "")
    if expected == LOGIN:
        assert response.status_code == 302, response.status_code
        parts = urlsplit(location)
        assert parts.path == "/accounts/login/", location
        assert parse_qs(parts.query)["next"] == [path], location
    elif expected == REDIRECT:
        assert response.status_code == 302, response.status_code
        assert not location.startswith("/accounts/login/?next="), location
    else:
        assert response.status_code == expected, (
            response.status_code,
            getattr(response, "content", b"")[:300],
        )


@pytest.mark.parametrize(("column", "role"), CELLS)
def test_access_matrix(
    column: Column,
    role: str,
    request,
    tenant,
    other_tenant,
    make_member,
    client_for,
):
    with tenant_context(tenant):
        target = MemberFactory.create(role=Role.MEMBER, has_seat=False)
        owner = Member.objects.get(email="owner@tenant.test")
        # So that revoking the owner's seat is a real change when allowed.
        Member.objects.filter(pk=owner.pk).update(has_seat=True)
    values = {"target": target.pk, "owner": owner.pk}
    if "{job}" in column.path:
        values["job"] = request.getfixturevalue("finished_export").pk
    path = column.path.format(**values)
    data = {key: value.format(**values) for key, value in column.data.items()}
    client = _actor_client(role, tenant, other_tenant, make_member, client_for)
    expected = column.expected[role]

    with tenant_context(tenant):
        before = _snapshot()
    if column.method == "GET":
        response = client.get(path)
    else:
        response = client.post(path, data)
    _assert_answer(response, expected, path)

    if column.method == "POST":
        with tenant_context(tenant):
            after = _snapshot()
        if expected not in SUCCESS:
            assert after == before
        elif column.writes:
            assert after[0] != before[0] or after[1] != before[1]
            assert after[2] > before[2]
