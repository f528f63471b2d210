"""Members, seats, deactivation, bulk actions, the list page and CSV export.

PORTAL-06 (list filters, keyset pages, constant query count), PORTAL-07
(bulk), PORTAL-08 (seat limit), PORTAL-09 (deactivation), PORTAL-10 (CSV).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.utils import timezone
from django_tenants.utils import tenant_context

from portal.csvio import (
    BOM,
    csv_lines,
    csv_sql_cell,
    csv_sql_line,
    csv_sql_own_cell,
    csv_text,
    neutralise,
)
from portal.errors import ApplicationError
from portal.models import (
    AuditEvent,
    Job,
    Member,
    MemberGroup,
    MemberSession,
    MemberSource,
    MemberStatus,
)
from portal.roles import Role
from portal.selectors.members import MEMBER_EXPORT_COLUMNS
from portal.selectors.pagination import encode_cursor
from portal.services.bulk import member_bulk_request
from portal.services.members import (
    SeatLimitReached,
    member_deactivate,
    seat_grant,
    seat_limit_set,
    seat_revoke,
)

ROOT = Path(__file__).resolve().parents[2]
MEMBER_LINK = re.compile(r'href="/members/(\d+)/"')


def _plain_members(count: int, *, prefix: str, **fields) -> list[Member]:
    """Insert `count` members in one query (bulk tests need many rows)."""
    fields.setdefault("status", MemberStatus.ACTIVE)
    return Member.objects.bulk_create(
        [Member(email=f"{prefix}{i}@example.test", **fields) for i in range(count)]
    )


def _clear_seats(limit: int | None) -> None:
    Member.objects.filter(has_seat=True).update(has_seat=False, seat_granted_at=None)
    seat_limit_set(limit=limit)


def _ids_on_page(response) -> list[int]:
    assert response.status_code == 200
    return [int(pk) for pk in MEMBER_LINK.findall(response.content.decode())]


# --- seats (PORTAL-08) ---------------------------------------------------------


def test_seat_limit_refusal_is_whole_or_nothing(tenant, make_member):
    seated, first, second = (make_member() for _ in range(3))
    with tenant_context(tenant):
        _clear_seats(limit=2)
        seat_grant(member_ids=[seated.pk], actor=None)
        granted_before = AuditEvent.objects.filter(action="portal.seat.granted").count()
        with pytest.raises(SeatLimitReached) as caught:
            seat_grant(member_ids=[first.pk, second.pk], actor=None)
        assert "2 seats needed, 1 available" in caught.value.message
        assert caught.value.details == {"needed": 2, "available": 1, "limit": 2}
        assert not Member.objects.filter(
            pk__in=[first.pk, second.pk], has_seat=True
        ).exists()
        assert (
            AuditEvent.objects.filter(action="portal.seat.granted").count()
            == granted_before
        )
        # One seat does fit.
        seat_grant(member_ids=[first.pk], actor=None)
        assert Member.objects.filter(has_seat=True).count() == 2


def test_regrant_to_seated_member_needs_no_seat(tenant, make_member):
    seated = make_member()
    with tenant_context(tenant):
        _clear_seats(limit=1)
        seat_grant(member_ids=[seated.pk], actor=None)
        seat_grant(member_ids=[seated.pk], actor=None)
        assert Member.objects.filter(has_seat=True).count() == 1


def test_lowering_the_limit_removes_no_seat(tenant, make_member):
    members = [make_member() for _ in range(3)]
    newcomer = make_member()
    with tenant_context(tenant):
        _clear_seats(limit=None)
        seat_grant(member_ids=[m.pk for m in members], actor=None)
        seat_limit_set(limit=1)
        assert Member.objects.filter(has_seat=True).count() == 3
        with pytest.raises(SeatLimitReached, match="1 seat needed, 0 available"):
            seat_grant(member_ids=[newcomer.pk], actor=None)
        # Revoking is never refused, even above the limit.
        seat_revoke(member_ids=[members[0].pk], actor=None)
        assert Member.objects.filter(has_seat=True).count() == 2


def test_seat_refusal_on_the_page(tenant, tenant_client, make_member):
    seated, hopeful = make_member(), make_member()
    with tenant_context(tenant):
        _clear_seats(limit=1)
        seat_grant(member_ids=[seated.pk], actor=None)
    response = tenant_client.post(f"/members/{hopeful.pk}/grant_seat/", follow=True)
    assert response.status_code == 200
    assert "1 seat needed, 0 available" in response.content.decode()
    with tenant_context(tenant):
        hopeful.refresh_from_db()
        assert not hopeful.has_seat


def test_deactivated_member_cannot_get_a_seat(tenant, make_member):
    gone = make_member(status=MemberStatus.DEACTIVATED)
    with tenant_context(tenant):
        _clear_seats(limit=None)
        with pytest.raises(ApplicationError) as caught:
            seat_grant(member_ids=[gone.pk], actor=None)
        assert caught.value.code == "member_deactivated"
        gone.refresh_from_db()
        assert not gone.has_seat


# --- deactivation (PORTAL-09) --------------------------------------------------


def test_deactivation_frees_seat_ends_sessions_and_audits(
    tenant, tenant_owner, make_member, client_for
):
    person = make_member()
    with tenant_context(tenant):
        _clear_seats(limit=None)
        seat_grant(member_ids=[person.pk], actor=None)
    browser = client_for(person)
    assert browser.get("/").status_code == 200
    with tenant_context(tenant):
        session_keys = list(
            MemberSession.objects.filter(member=person).values_list(
                "session_key", flat=True
            )
        )
        assert session_keys
        member_deactivate(member=person, actor=tenant_owner, reason="left")
        person.refresh_from_db()
        assert person.status == MemberStatus.DEACTIVATED
        assert not person.has_seat
        assert person.deactivated_at is not None
        assert not Session.objects.filter(session_key__in=session_keys).exists()
        assert not MemberSession.objects.filter(member=person).exists()
        event = AuditEvent.objects.get(
            action="portal.member.deactivated", target_id=str(person.pk)
        )
        assert event.actor_id == str(tenant_owner.pk)
        assert event.changes["seat_freed"] is True
        assert event.changes["sessions_ended"] == len(session_keys)
    response = browser.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    # The row is kept.
    with tenant_context(tenant):
        assert Member.objects.filter(pk=person.pk).exists()


def test_deactivated_member_with_stale_session_is_signed_out(
    tenant, make_member, client_for
):
    # A session the index missed still ends on its next request.
    person = make_member()
    browser = client_for(person)
    with tenant_context(tenant):
        MemberSession.objects.filter(member=person).delete()
        Member.objects.filter(pk=person.pk).update(status=MemberStatus.DEACTIVATED)
    response = browser.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_deactivation_through_the_page(tenant, tenant_client, make_member):
    person = make_member()
    with tenant_context(tenant):
        _clear_seats(limit=None)
        seat_grant(member_ids=[person.pk], actor=None)
    response = tenant_client.post(f"/members/{person.pk}/deactivate/")
    assert response.status_code == 302
    with tenant_context(tenant):
        person.refresh_from_db()
        assert person.status == MemberStatus.DEACTIVATED
        assert not person.has_seat
        assert AuditEvent.objects.filter(
            action="portal.member.deactivated", target_id=str(person.pk)
        ).exists()


# --- bulk (PORTAL-07) ----------------------------------------------------------


def test_bulk_small_applies_now_and_skips_out_of_reach(tenant, make_member):
    user_admin = make_member(Role.USER_ADMIN)
    members = [make_member() for _ in range(3)]
    admin = make_member(Role.ADMIN)
    ids = [m.pk for m in members] + [admin.pk, user_admin.pk, 999_999_999]
    with tenant_context(tenant):
        _clear_seats(limit=None)
        outcome = member_bulk_request(
            actor=user_admin, action="grant_seat", member_ids=ids, params={}
        )
        assert outcome.job is None
        assert outcome.applied == 3
        assert dict(outcome.skipped) == {
            admin.pk: "Your role cannot change this member.",
            user_admin.pk: "Your role cannot change this member.",
            999_999_999: "Not found.",
        }
        assert set(
            Member.objects.filter(has_seat=True).values_list("pk", flat=True)
        ) == {m.pk for m in members}
        assert not Job.objects.filter(kind="member_bulk").exists()


def test_bulk_seat_grant_is_whole_or_nothing(tenant, tenant_owner, make_member):
    members = [make_member() for _ in range(3)]
    with tenant_context(tenant):
        _clear_seats(limit=2)
        outcome = member_bulk_request(
            actor=tenant_owner,
            action="grant_seat",
            member_ids=[m.pk for m in members],
            params={},
        )
        assert outcome.applied == 0
        assert len(outcome.skipped) == 3
        assert all("3 seats needed, 2 available" in r for _, r in outcome.skipped)
        assert not Member.objects.filter(has_seat=True).exists()


def test_bulk_change_role_and_groups(tenant, tenant_admin, make_member):
    members = [make_member() for _ in range(2)]
    owner_like = make_member(Role.OWNER)
    ids = [m.pk for m in members] + [owner_like.pk]
    with tenant_context(tenant):
        roles = member_bulk_request(
            actor=tenant_admin,
            action="change_role",
            member_ids=ids,
            params={"role": Role.USER_ADMIN},
        )
        assert roles.applied == 2
        assert roles.skipped == [
            (owner_like.pk, "Your role cannot change this member.")
        ]
        groups = member_bulk_request(
            actor=tenant_admin,
            action="add_group",
            member_ids=[m.pk for m in members],
            params={"group": "Night shift"},
        )
        assert groups.applied == 2
        group = MemberGroup.objects.get(name="Night shift")
        assert set(group.members.values_list("pk", flat=True)) == {
            m.pk for m in members
        }
        owner_like.refresh_from_db()
        assert owner_like.role == Role.OWNER


def test_bulk_over_200_rows_becomes_a_job(tenant, tenant_owner):
    with tenant_context(tenant):
        _clear_seats(limit=None)
        members = _plain_members(201, prefix="bulkjob")
        ids = [m.pk for m in members]
        outcome = member_bulk_request(
            actor=tenant_owner,
            action="grant_seat",
            member_ids=ids,
            params={},
            idempotency_key="bulk-201",
        )
        assert outcome.job is not None
        assert outcome.applied == 0
        job = Job.objects.get(pk=outcome.job.pk)
        assert job.kind == "member_bulk"
        assert job.status == "queued"
        assert job.progress_total == 201
        assert job.requester_id == tenant_owner.pk
        assert job.params["member_ids"] == ids
        # Nothing is applied until a worker runs the job.
        assert not Member.objects.filter(has_seat=True).exists()
        assert AuditEvent.objects.filter(
            action="portal.member.bulk_requested", target_id=str(job.pk)
        ).exists()
        # The same form submitted twice makes one job.
        again = member_bulk_request(
            actor=tenant_owner,
            action="grant_seat",
            member_ids=ids,
            params={},
            idempotency_key="bulk-201",
        )
        assert again.job is not None
        assert again.job.pk == job.pk


def test_bulk_of_200_rows_applies_now(tenant, tenant_owner, make_member):
    # Missing ids are skipped cheaply, so 200 rows stay fast yet hit the boundary.
    real = [make_member(), make_member()]
    ids = [m.pk for m in real] + list(range(900_000_000, 900_000_198))
    with tenant_context(tenant):
        _clear_seats(limit=None)
        outcome = member_bulk_request(
            actor=tenant_owner, action="grant_seat", member_ids=ids, params={}
        )
        assert outcome.job is None
        assert outcome.applied == 2
        assert len(outcome.skipped) == 198
        assert {reason for _, reason in outcome.skipped} == {"Not found."}
        assert Member.objects.filter(has_seat=True).count() == 2
        assert not Job.objects.filter(kind="member_bulk").exists()


def test_deactivating_over_50_needs_the_slug(tenant, tenant_owner):
    with tenant_context(tenant):
        # Enough active members that 51 stays under 10%: only the count rule applies.
        _plain_members(560, prefix="crowd")
        targets = [m.pk for m in _plain_members(51, prefix="leaver")]
        events_before = AuditEvent.objects.count()
        for confirm in ("", "Tenant", "other", " tenant"):
            with pytest.raises(ApplicationError) as caught:
                member_bulk_request(
                    actor=tenant_owner,
                    action="deactivate",
                    member_ids=targets,
                    params={},
                    confirm_slug=confirm,
                )
            assert caught.value.code == "confirmation_required"
        assert not Member.objects.filter(status=MemberStatus.DEACTIVATED).exists()
        assert AuditEvent.objects.count() == events_before


def test_deactivating_over_50_with_the_slug_proceeds(tenant, tenant_owner):
    # Past 200 rows the request queues a job, so the gate is passed cheaply.
    with tenant_context(tenant):
        targets = [m.pk for m in _plain_members(201, prefix="leaver")]
        outcome = member_bulk_request(
            actor=tenant_owner,
            action="deactivate",
            member_ids=targets,
            params={},
            confirm_slug="tenant",
            recent_sign_in=True,
        )
        assert outcome.job is not None
        assert outcome.job.kind == "member_bulk"
        assert outcome.job.params["action"] == "deactivate"
        with pytest.raises(ApplicationError) as caught:
            member_bulk_request(
                actor=tenant_owner, action="deactivate", member_ids=targets, params={}
            )
        assert caught.value.code == "confirmation_required"
        assert Job.objects.filter(kind="member_bulk").count() == 1


def test_large_deactivation_needs_a_recent_sign_in(tenant, tenant_owner):
    with tenant_context(tenant):
        _plain_members(20, prefix="small")
        targets = [m.pk for m in _plain_members(5, prefix="few")]
        with pytest.raises(ApplicationError) as caught:
            member_bulk_request(
                actor=tenant_owner,
                action="deactivate",
                member_ids=targets,
                params={},
                confirm_slug=tenant.slug,
                recent_sign_in=False,
            )
        assert caught.value.code == "reauthentication_required"
        assert not Member.objects.filter(status=MemberStatus.DEACTIVATED).exists()


def test_deactivating_over_ten_percent_needs_the_slug(tenant, tenant_owner):
    with tenant_context(tenant):
        _plain_members(20, prefix="small")
        targets = [m.pk for m in _plain_members(5, prefix="few")]
        with pytest.raises(ApplicationError) as caught:
            member_bulk_request(
                actor=tenant_owner, action="deactivate", member_ids=targets, params={}
            )
        assert caught.value.code == "confirmation_required"
        assert not Member.objects.filter(status=MemberStatus.DEACTIVATED).exists()


def test_deactivating_over_ten_percent_with_the_slug(tenant, tenant_owner):
    with tenant_context(tenant):
        _plain_members(20, prefix="small")
        targets = [m.pk for m in _plain_members(5, prefix="few")]
        outcome = member_bulk_request(
            actor=tenant_owner,
            action="deactivate",
            member_ids=targets,
            params={},
            confirm_slug=tenant.slug,
            recent_sign_in=True,
        )
        assert outcome.applied == 5
        assert Member.objects.filter(status=MemberStatus.DEACTIVATED).count() == 5


def test_small_deactivation_needs_no_confirmation(tenant, tenant_owner):
    with tenant_context(tenant):
        _plain_members(40, prefix="many")
        targets = [m.pk for m in _plain_members(2, prefix="two")]
        outcome = member_bulk_request(
            actor=tenant_owner, action="deactivate", member_ids=targets, params={}
        )
        assert outcome.applied == 2


def test_bulk_page_reports_skips(tenant, make_member, client_for):
    user_admin = make_member(Role.USER_ADMIN)
    member = make_member()
    admin = make_member(Role.ADMIN)
    with tenant_context(tenant):
        _clear_seats(limit=None)
    response = client_for(user_admin).post(
        "/members/bulk/",
        {"action": "grant_seat", "scope": "selected", "ids": f"{member.pk},{admin.pk}"},
        follow=True,
    )
    body = response.content.decode()
    assert "1 member updated. 1 skipped: Your role cannot change this member." in body
    with tenant_context(tenant):
        assert set(
            Member.objects.filter(has_seat=True).values_list("pk", flat=True)
        ) == {member.pk}


# --- members page (PORTAL-06) --------------------------------------------------


@pytest.fixture
def filter_members(tenant, make_member):
    """One member matching each filter, plus a decoy matching none of them."""
    with tenant_context(tenant):
        group = MemberGroup.objects.create(name="Falconers")
    made = {
        "q": make_member(first_name="Zebulon", last_name="Quist"),
        "status": make_member(status=MemberStatus.INVITED),
        "seat": make_member(),
        "role": make_member(Role.READONLY_ADMIN),
        "department": make_member(department="Quokka Research"),
        "location": make_member(location="Atlantis"),
        "group": make_member(),
        "source": make_member(source=MemberSource.EDI),
        "employee": make_member(employee_id="EMP-77831"),
        "decoy": make_member(department="Sales", location="Leeds"),
    }
    with tenant_context(tenant):
        _clear_seats(limit=None)
        seat_grant(member_ids=[made["seat"].pk], actor=None)
        made["group"].groups.add(group)
    return made


@pytest.mark.parametrize(
    ("key", "query"),
    [
        ("q", {"q": "zebulon"}),
        ("q", {"q": "QUIST"}),
        ("employee", {"q": "emp-778"}),
        ("status", {"status": "invited"}),
        ("seat", {"seat": "yes"}),
        ("role", {"role": "readonly_admin"}),
        ("department", {"department": "Quokka Research"}),
        ("location", {"location": "Atlantis"}),
        ("group", {"group": "falconers"}),
        ("source", {"source": "edi"}),
    ],
)
def test_member_filters_narrow_the_list(tenant_client, filter_members, key, query):
    ids = _ids_on_page(tenant_client.get("/members/", query))
    assert ids == [filter_members[key].pk]


def test_member_filters_combine_and_unknown_values_are_dropped(
    tenant_client, filter_members
):
    everyone = set(_ids_on_page(tenant_client.get("/members/")))
    assert {m.pk for m in filter_members.values()} <= everyone
    assert (
        _ids_on_page(
            tenant_client.get("/members/", {"source": "edi", "status": "invited"})
        )
        == []
    )
    # An unknown filter value is ignored rather than an error.
    assert (
        set(_ids_on_page(tenant_client.get("/members/", {"status": "bogus"})))
        == everyone
    )


def test_last_sign_in_filter(tenant_client, make_member):
    now = timezone.now()
    recent = make_member(last_sign_in_at=now - timedelta(days=1))
    older = make_member(last_sign_in_at=now - timedelta(days=60))
    never = make_member()
    expected = {
        "7d": {recent.pk},
        "30d": {recent.pk},
        "90d": {recent.pk, older.pk},
        "never": {never.pk},
    }
    mine = {recent.pk, older.pk, never.pk}
    for value, wanted in expected.items():
        ids = set(_ids_on_page(tenant_client.get("/members/", {"signed_in": value})))
        assert ids & mine == wanted, value


def test_member_list_is_refused_to_plain_members(make_member, client_for):
    response = client_for(make_member()).get("/members/")
    assert response.status_code == 403


@pytest.fixture
def sixty_members(tenant):
    """60 members, each with a manager and two groups (query-count fixture)."""
    with tenant_context(tenant):
        members = _plain_members(60, prefix="paged", department="Paging")
        groups = MemberGroup.objects.bulk_create(
            [MemberGroup(name="Pagers A"), MemberGroup(name="Pagers B")]
        )
        through = Member.groups.through
        through.objects.bulk_create(
            [
                through(member_id=m.pk, membergroup_id=g.pk)
                for m in members
                for g in groups
            ]
        )
        for index, member in enumerate(members[1:], start=1):
            member.manager = members[index - 1]
        Member.objects.bulk_update(members[1:], ["manager"])
    return members


def test_keyset_pages_do_not_overlap(tenant_client, sixty_members):
    first = tenant_client.get("/members/", {"department": "Paging"})
    first_ids = _ids_on_page(first)
    assert len(first_ids) == 50
    assert first_ids == sorted(first_ids, reverse=True)
    cursor = re.search(r'rel="next" href="[^"]*after=([\w-]+)"', first.content.decode())
    assert cursor is not None
    second_ids = _ids_on_page(
        tenant_client.get(
            "/members/", {"department": "Paging", "after": cursor.group(1)}
        )
    )
    assert len(second_ids) == 10
    assert not set(first_ids) & set(second_ids)
    assert set(first_ids) | set(second_ids) == {m.pk for m in sixty_members}
    assert (
        'rel="next"'
        not in tenant_client.get(
            "/members/", {"department": "Paging", "after": cursor.group(1)}
        ).content.decode()
    )


@pytest.mark.parametrize("page", [1, 2])
def test_member_page_query_count_is_constant(
    tenant_client, sixty_members, django_assert_max_num_queries, page
):
    query = {}
    if page == 2:
        query["after"] = encode_cursor([sixty_members[10].pk])
    tenant_client.get("/members/")  # warm caches (content types, tenant lookup)
    with django_assert_max_num_queries(15):
        response = tenant_client.get("/members/", query)
    assert response.status_code == 200
    assert "Pagers A, Pagers B" in response.content.decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!not-base64",
        "eyJ",  # truncated JSON
        encode_cursor(["text"]),
        encode_cursor([]),
        "e30",  # {} is not a list
        "bnVsbA",  # null
    ],
)
def test_malformed_cursor_gives_first_page(tenant_client, sixty_members, cursor):
    first_ids = _ids_on_page(tenant_client.get("/members/"))
    response = tenant_client.get("/members/", {"after": cursor})
    assert response.status_code == 200
    assert _ids_on_page(response) == first_ids


def test_huge_cursor_value_does_not_crash(tenant_client, sixty_members):
    response = tenant_client.get("/members/", {"after": encode_cursor([10**30])})
    assert response.status_code == 200


# --- CSV export (PORTAL-10) ----------------------------------------------------

HOSTILE = {
    "first_name": '=HYPERLINK("http://x")',
    "last_name": "-2",
    "job_title": "+1",
    "department": "@SUM(A1)",
    "location": "\tcmd",
}


def _export(client, **query) -> str:
    response = client.get("/members/export.csv", query)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response.streaming
    return b"".join(response.streaming_content).decode("utf-8")


def test_export_is_quoted_utf8_with_bom_and_edi_columns(
    tenant, tenant_client, make_member
):
    make_member(first_name="Zoë", last_name="Ng", department="Export Dept")
    text = _export(tenant_client, department="Export Dept")
    assert text.startswith(BOM)
    header_line, _, rest = text[len(BOM) :].partition("\r\n")
    assert header_line == ",".join(f'"{name}"' for name in MEMBER_EXPORT_COLUMNS)
    assert MEMBER_EXPORT_COLUMNS[:10] == [
        "email",
        "employee_id",
        "first_name",
        "last_name",
        "job_title",
        "department",
        "location",
        "manager_employee_id",
        "seat",
        "admin_permission",
    ]
    row_line = rest.rstrip("\r\n")
    assert "\r\n" not in row_line
    # Every field is quoted, empty ones included.
    assert row_line.startswith('"')
    assert row_line.endswith('"')
    assert len(row_line.split('","')) == len(MEMBER_EXPORT_COLUMNS)
    assert '"Zoë"' in row_line
    with tenant_context(tenant):
        assert AuditEvent.objects.filter(action="portal.member.exported").exists()


def test_export_neutralises_formulas(tenant_client, make_member):
    make_member(
        department="Hostile", **{k: v for k, v in HOSTILE.items() if k != "department"}
    )
    make_member(
        department="Hostile", first_name="\rcr", job_title="＝1", last_name="＠x"
    )
    text = _export(tenant_client, department="Hostile")
    assert '"\'=HYPERLINK(""http://x"")"' in text
    rows = list(csv.reader(io.StringIO(text[len(BOM) :], newline="")))
    header, body = rows[0], rows[1:]
    assert len(body) == 2
    cells = [dict(zip(header, row, strict=True)) for row in body]
    by_first = {cell["first_name"]: cell for cell in cells}
    hostile = by_first["'" + HOSTILE["first_name"]]
    assert hostile["job_title"] == "'+1"
    assert hostile["last_name"] == "'-2"
    assert hostile["location"] == "'\tcmd"
    assert hostile["department"] == "Hostile"
    cr = by_first["'\rcr"]
    assert cr["job_title"] == "'＝1"
    assert cr["last_name"] == "'＠x"


def test_export_of_at_sign_department_filter(tenant_client, make_member):
    make_member(department="@SUM(A1)")
    text = _export(tenant_client, department="@SUM(A1)")
    assert '"\'@SUM(A1)"' in text


def test_export_is_refused_to_plain_members(make_member, client_for):
    assert client_for(make_member()).get("/members/export.csv").status_code == 403


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("＝1", "'＝1"),
        ("＋1", "'＋1"),
        ("－1", "'－1"),
        ("＠x", "'＠x"),
        (-2, "'-2"),
        (3, "3"),
        (None, ""),
        ("", ""),
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("'=1", "'=1"),
    ],
)
def test_neutralise(value, expected):
    assert neutralise(value) == expected


def test_csv_text_quotes_all_and_neutralises_header():
    text = csv_text(["=h", "b"], [["+x", None], ["ok", 'say "hi"']])
    assert text == (BOM + '"\'=h","b"\r\n' + '"\'+x",""\r\n' + '"ok","say ""hi"""\r\n')


CSV_WRITER = re.compile(
    r"\bcsv\s*\.\s*(writer|DictWriter)\s*\(|from\s+csv\s+import[^\n]*\bwriter\b"
)


HOSTILE_CELLS = [
    '=HYPERLINK("http://x")',
    "+1",
    "-2",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "\uff1d1",
    "\uff0b1",
    "\uff0d1",
    "\uff20x",
    'say "hi"',
    '"',
    "a,b",
    "two\nlines",
    "crlf\r\nin",
    "caf\u00e9 \U0001f600",
    "'=1",
    "a=b",
    "",
    None,
    "plain",
]


def test_csv_sql_cells_write_the_same_csv_as_python(db):
    """The SQL form of the writer (for rows PostgreSQL formats) is
    byte-for-byte the Python one, hostile cells included."""
    rows = [[n, value, "unchanged"] for n, value in enumerate(HOSTILE_CELLS, 1)]
    line = csv_sql_line(
        [csv_sql_own_cell("n"), csv_sql_cell("v"), csv_sql_own_cell("'unchanged'")]
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {line} FROM unnest(%s::text[]) WITH ORDINALITY u(v, n) "  # noqa: S608
            "ORDER BY n",
            [HOSTILE_CELLS],
        )
        lines = [row[0] for row in cursor.fetchall()]
    header = next(csv_lines(["n", "v", "outcome"], ()))
    assert header + "".join(lines) == csv_text(["n", "v", "outcome"], rows)
    parsed = list(csv.reader(io.StringIO("".join(lines), newline="")))
    assert [r[1] for r in parsed] == [neutralise(v) for v in HOSTILE_CELLS]


def test_only_csvio_makes_csv_writers():
    offenders: list[str] = []
    for package in ("portal", "tenants", "sso", "edi", "crm", "pointdrive"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "portal" / "csvio.py":
                continue
            text = path.read_text(encoding="utf-8")
            offenders.extend(
                f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
                for match in CSV_WRITER.finditer(text)
            )
    assert offenders == [], "use portal.csvio, not csv.writer: " + ", ".join(offenders)
    # The lint must see the one real writer, or it checks nothing.
    assert CSV_WRITER.search((ROOT / "portal" / "csvio.py").read_text(encoding="utf-8"))


def test_a_large_export_asks_before_it_starts_a_job(tenant, tenant_client, monkeypatch):
    from portal.services import member_export

    monkeypatch.setattr(member_export, "STREAM_LIMIT", 0)
    page = tenant_client.get("/members/export.csv?status=active")
    assert page.status_code == 200
    assert b"Start the export" in page.content
    with tenant_context(tenant):
        assert not Job.objects.filter(kind="member_export").exists()
    started = tenant_client.post(
        "/members/export.csv", {"status": "active", "idempotency_key": "k1"}
    )
    assert started.status_code == 302
    again = tenant_client.post(
        "/members/export.csv", {"status": "active", "idempotency_key": "k1"}
    )
    assert again["Location"] == started["Location"]
    with tenant_context(tenant):
        job = Job.objects.get(kind="member_export")
        assert job.params == {"filters": {"status": "active"}}
