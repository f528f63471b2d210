"""Two connections racing for the last seat: exactly one wins (PORTAL-08).

Needs real commits, so it uses `committed_tenant` and no `db` fixture: the
grant of one connection must be visible to the other only once committed,
and the seat-pool row lock is what serialises them.
"""

from __future__ import annotations

import threading

import pytest
from django_tenants.utils import tenant_context

from portal.db import use_public_schema
from portal.models import AuditEvent, Member
from portal.services.members import (
    SeatLimitReached,
    member_create,
    seat_grant,
    seat_limit_set,
)


@pytest.mark.schema
def test_two_connections_race_for_the_last_seat(committed_tenant):
    tenant = committed_tenant
    with tenant_context(tenant):
        seat_limit_set(limit=1)
        Member.objects.filter(has_seat=True).update(has_seat=False)
        first = member_create(email="racer-one@example.test", actor=None)
        second = member_create(email="racer-two@example.test", actor=None)
    use_public_schema()

    barrier = threading.Barrier(2, timeout=10)
    outcomes: dict[int, str] = {}
    errors: list[BaseException] = []

    def grant(member_id: int) -> None:
        # Each thread has its own Django connection: a second PostgreSQL session.
        from django.db import connection as thread_connection

        try:
            thread_connection.set_tenant(tenant)  # type: ignore[attr-defined]
            barrier.wait()
            try:
                seat_grant(member_ids=[member_id], actor=None)
            except SeatLimitReached as exc:
                outcomes[member_id] = "refused: " + exc.message
            else:
                outcomes[member_id] = "granted"
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=grant, args=(m.pk,)) for m in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a grant hung"
    assert errors == []

    assert sorted(o.split(":")[0] for o in outcomes.values()) == ["granted", "refused"]
    refused = next(o for o in outcomes.values() if o.startswith("refused"))
    assert "1 seat needed, 0 available" in refused
    with tenant_context(tenant):
        seated = list(Member.objects.filter(has_seat=True).values_list("pk", flat=True))
        winner = next(pk for pk, o in outcomes.items() if o == "granted")
        assert seated == [winner]
        assert AuditEvent.objects.filter(action="portal.seat.granted").count() == 1
