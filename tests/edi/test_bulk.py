"""A first load's bulk path (`Run._bulk_begin` / `_bulk_end`).

A file that creates at least `BULK_MIN_CREATES` members, and at least as
many as the tenant has, drops the member tables' secondary indexes and
foreign keys inside the apply transaction and rebuilds them after the
writes. These tests check that everything dropped comes back exactly,
that a failure rolls the drops back, that a busy table sends the file
down the regular path, and that both paths leave the same members.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.sql
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from edi.models import EdiStatus
from edi.services import pipeline
from portal.db import current_schema
from portal.models import Member, MemberGroup
from tests.edi.test_pipeline import people, run_import

ROWS = pipeline.BULK_MIN_CREATES + 200


@pytest.fixture(autouse=True)
def _in_tenant(tenant: Any) -> Iterator[None]:
    with tenant_context(tenant):
        yield


def schema_shape() -> list[tuple[str, ...]]:
    """Every index and constraint of the member tables, by name and text."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid),
                      indisvalid::text
               FROM pg_index WHERE indrelid = ANY(%s::regclass[])
               UNION ALL
               SELECT 'constraint', conname, pg_get_constraintdef(oid),
                      convalidated::text
               FROM pg_constraint WHERE conrelid = ANY(%s::regclass[])
               ORDER BY 1, 2""",
            [list(pipeline.BULK_TABLES), list(pipeline.BULK_TABLES)],
        )
        return [tuple(row) for row in cursor.fetchall()]


def with_managers(n: int) -> str:
    header = "employee_id,email,first_name,last_name,manager_employee_id,groups\n"
    return header + "".join(
        f"E{i},person{i}@corp.test,First{i},Last{i},"
        f"{f'E{i // 10}' if i >= 10 else ''},G{i % 7};G{i % 11}\n"
        for i in range(1, n + 1)
    )


def members_state() -> list[tuple[Any, ...]]:
    return sorted(
        (
            m.employee_id,
            m.email,
            m.first_name,
            m.manager.employee_id if m.manager else "",
            tuple(sorted(g.name for g in m.groups.all())),
        )
        for m in Member.objects.exclude(employee_id="").prefetch_related(
            "groups", "manager"
        )
    )


def took_bulk_path(captured: CaptureQueriesContext) -> bool:
    return any(q["sql"].startswith("DROP INDEX") for q in captured.captured_queries)


def test_a_first_load_rebuilds_every_index_and_key_it_dropped() -> None:
    before = schema_shape()
    assert any(
        kind == "constraint" and "FOREIGN KEY" in text for kind, _, text, _ in before
    )
    with CaptureQueriesContext(connection) as captured:
        f = run_import(with_managers(ROWS))
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert f.counts["created"] == ROWS
    assert took_bulk_path(captured)
    assert schema_shape() == before  # same names, definitions, all valid
    # The memberships' primary key, which no key points at, was rebuilt too;
    # the members' (pointed at from other tables) was kept.
    dropped = [q["sql"] for q in captured.captured_queries if "DROP" in q["sql"]]
    assert any("portal_member_groups_pkey" in sql for sql in dropped)
    assert not any("portal_member_pkey" in sql for sql in dropped)
    e25 = Member.objects.get(employee_id="E25")
    assert e25.manager is not None
    assert e25.manager.employee_id == "E2"
    assert sorted(e25.groups.values_list("name", flat=True)) == ["G3", "G4"]
    # The rebuilt foreign keys are enforced again (deferred: at the check).
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT fk")
        cursor.execute(
            "UPDATE portal_member SET manager_id = -5 WHERE employee_id = 'E25'"
        )
        with pytest.raises(Exception, match="foreign key"):
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ROLLBACK TO SAVEPOINT fk")


def test_the_bulk_paths_memberships_take_ids_the_sequence_then_skips() -> None:
    """The bulk path numbers the pairs itself, under its lock: consecutive
    ids from the sequence's next one, and the sequence moved past them, so
    the next membership anyone adds gets a fresh id."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('portal_member_groups', 'id'))"
        )
        [(before,)] = cursor.fetchall()
    with CaptureQueriesContext(connection) as captured:
        f = run_import(with_managers(ROWS))
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert took_bulk_path(captured)
    through = Member.groups.through
    ids = sorted(through.objects.values_list("id", flat=True))
    # Two groups each, one where both name the same group.
    assert len(ids) == sum(len({i % 7, i % 11}) for i in range(1, ROWS + 1))
    assert ids == list(range(before + 1, before + 1 + len(ids)))
    member = Member.objects.get(employee_id="E1")
    member.groups.add(MemberGroup.objects.create(name="Later"))
    later = through.objects.get(member=member, membergroup__name="Later")
    assert later.id == ids[-1] + 1


def test_both_paths_leave_the_same_members(monkeypatch: pytest.MonkeyPatch) -> None:
    with CaptureQueriesContext(connection) as captured:
        assert run_import(with_managers(ROWS)).status == EdiStatus.COMPLETED
    assert took_bulk_path(captured)
    bulk = members_state()
    Member.objects.exclude(employee_id="").delete()
    MemberGroup.objects.all().delete()
    monkeypatch.setattr(pipeline, "BULK_MIN_CREATES", 10**9)
    again = with_managers(ROWS).replace("employee_id", "Employee_ID", 1)  # new sha
    with CaptureQueriesContext(connection) as captured:
        assert run_import(again).status == EdiStatus.COMPLETED
    assert not took_bulk_path(captured)
    assert members_state() == bulk


def test_a_nightly_file_takes_the_regular_path() -> None:
    run_import(people(ROWS))
    with CaptureQueriesContext(connection) as captured:
        f = run_import(people(ROWS + pipeline.BULK_MIN_CREATES))
    assert f.counts["created"] == pipeline.BULK_MIN_CREATES
    assert not took_bulk_path(captured)  # fewer new members than it has


def test_a_failure_after_the_drops_rolls_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = schema_shape()

    def broken(self: pipeline.Run, now: Any) -> None:
        assert self.bulk
        assert schema_shape() != before  # the drops happened
        raise RuntimeError("the groups step failed")

    monkeypatch.setattr(pipeline.Run, "_groups", broken)
    with pytest.raises(RuntimeError):
        run_import(with_managers(ROWS))
    assert schema_shape() == before
    assert not Member.objects.filter(employee_id="E1").exists()


def test_a_table_in_use_sends_the_file_down_the_regular_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another session reading members: the lock is not granted within
    the timeout, the savepoint undoes it, and the import completes."""
    monkeypatch.setattr(pipeline, "BULK_LOCK_TIMEOUT", "200ms")
    before = schema_shape()
    db = settings.DATABASES["default"]
    reader = psycopg.connect(
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
    )
    try:
        reader.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}.portal_member").format(
                psycopg.sql.Identifier(current_schema())
            )
        )
        # (the reader's transaction stays open, holding its ACCESS SHARE lock)
        with CaptureQueriesContext(connection) as captured:
            f = run_import(with_managers(ROWS))
        assert f.status == EdiStatus.COMPLETED, f.errors
        assert f.counts["created"] == ROWS
        assert any(q["sql"].startswith("LOCK TABLE") for q in captured.captured_queries)
        assert not took_bulk_path(captured)
        assert schema_shape() == before
    finally:
        reader.rollback()
        reader.close()


def test_someone_who_arrived_since_resolving_sends_it_down_the_regular_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member created between the resolve and the lock (an SSO sign-in)
    would collide with a planned insert: no bulk path, and that row
    becomes an update of the newcomer."""
    bulk_begin = pipeline.Run._bulk_begin

    def arrive_first(self: pipeline.Run, creates: int) -> list[str]:
        Member.objects.create(email="Person7@corp.test", source="sso")
        return bulk_begin(self, creates)

    monkeypatch.setattr(pipeline.Run, "_bulk_begin", arrive_first)
    with CaptureQueriesContext(connection) as captured:
        f = run_import(with_managers(ROWS))
    assert f.status == EdiStatus.COMPLETED, f.errors
    assert not took_bulk_path(captured)
    assert f.counts["created"] == ROWS - 1
    assert f.counts["updated"] == 1
    person = Member.objects.get(email__iexact="person7@corp.test")
    assert person.employee_id == "E7"
    # Their reports point at them, not at the id planned for a new row.
    assert Member.objects.get(employee_id="E75").manager_id == person.pk
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # every key holds
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
