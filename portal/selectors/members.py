"""Member reads: the filtered list behind /members/, its export, lookups."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from portal.errors import NotFound
from portal.models import Member, MemberGroup, MemberSource, MemberStatus, SeatPool
from portal.roles import Role
from portal.selectors.pagination import Page, decode_cursor, encode_cursor

PAGE_SIZE = 50
SIGN_IN_FILTERS = {"7d": 7, "30d": 30, "90d": 90}


@dataclasses.dataclass(frozen=True)
class MemberFilters:
    """The URL's filters, validated: unknown values are dropped, not errors."""

    q: str = ""
    status: str = ""
    seat: str = ""
    role: str = ""
    department: str = ""
    location: str = ""
    group: str = ""
    source: str = ""
    signed_in: str = ""

    @classmethod
    def from_query(cls, query: Any) -> MemberFilters:
        def pick(name: str, allowed: Any = None) -> str:
            value = str(query.get(name, "") or "").strip()[:200]
            if allowed is not None and value not in allowed:
                return ""
            return value

        return cls(
            q=pick("q"),
            status=pick("status", MemberStatus.values),
            seat=pick("seat", {"yes", "no"}),
            role=pick("role", Role.values),
            department=pick("department"),
            location=pick("location"),
            group=pick("group"),
            source=pick("source", MemberSource.values),
            signed_in=pick("signed_in", {*SIGN_IN_FILTERS, "never"}),
        )

    def as_query(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


def member_queryset(*, filters: MemberFilters) -> QuerySet[Member]:
    """Members matching `filters`, unordered and unpaginated."""
    members = Member.objects.all()
    if filters.q:
        members = members.filter(search_text__contains=filters.q.lower())
    if filters.status:
        members = members.filter(status=filters.status)
    if filters.seat:
        members = members.filter(has_seat=filters.seat == "yes")
    if filters.role:
        members = members.filter(role=filters.role)
    if filters.department:
        members = members.filter(department=filters.department)
    if filters.location:
        members = members.filter(location=filters.location)
    if filters.source:
        members = members.filter(source=filters.source)
    if filters.group:
        members = members.filter(groups__name__iexact=filters.group)
    if filters.signed_in == "never":
        members = members.filter(last_sign_in_at__isnull=True)
    elif filters.signed_in:
        since = timezone.now() - timedelta(days=SIGN_IN_FILTERS[filters.signed_in])
        members = members.filter(last_sign_in_at__gte=since)
    return members


def member_list(
    *, filters: MemberFilters, cursor: str | None = None, page_size: int = PAGE_SIZE
) -> Page[Member]:
    """One page of members, newest first, keyset-paginated on id.

    The query count per page is constant: members, then their groups and
    managers in one prefetch each.
    """
    members = member_queryset(filters=filters)
    after = decode_cursor(cursor)
    if after and isinstance(after[0], int):
        members = members.filter(pk__lt=after[0])
    rows = list(
        members.select_related("manager")
        .prefetch_related("groups")
        .order_by("-pk")[: page_size + 1]
    )
    next_cursor = (
        encode_cursor([rows[page_size - 1].pk]) if len(rows) > page_size else None
    )
    return Page(items=rows[:page_size], next_cursor=next_cursor)


def member_ids_matching(*, filters: MemberFilters, limit: int = 1_000_000) -> list[int]:
    """Freeze "all N matching" to ids at submit time (PORTAL-07)."""
    return list(
        member_queryset(filters=filters)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )


def member_count(*, filters: MemberFilters) -> int:
    return member_queryset(filters=filters).count()


def member_get(*, member_id: int) -> Member:
    """The member with `member_id` in this tenant, or `NotFound`."""
    member = Member.objects.filter(pk=member_id).select_related("manager").first()
    if member is None:
        raise NotFound("Member not found.")
    return member


def member_for_user(*, user: Any) -> Member | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return Member.objects.filter(user=user).first()


# A "skip scan": one index probe per distinct value instead of reading every
# row, so the filter menus cost about a millisecond at 100,000 members (a
# plain DISTINCT took ~16 ms per column). Column names come from the fixed
# tuple below, never from input.
_DISTINCT_SQL = """
WITH RECURSIVE vals AS (
    (SELECT {col} AS v FROM portal_member WHERE {col} > '' ORDER BY {col} LIMIT 1)
    UNION ALL
    SELECT (
        SELECT {col} FROM portal_member WHERE {col} > vals.v ORDER BY {col} LIMIT 1
    )
    FROM vals WHERE vals.v IS NOT NULL
)
SELECT v FROM vals WHERE v IS NOT NULL LIMIT %s
"""
_DISTINCT_COLUMNS = ("department", "location")


def _distinct_values(column: str, limit: int = 500) -> list[str]:
    if column not in _DISTINCT_COLUMNS:
        raise ValueError(f"No distinct menu for {column!r}")
    with connection.cursor() as cursor:
        cursor.execute(_DISTINCT_SQL.format(col=column), [limit])  # noqa: S608
        return [row[0] for row in cursor.fetchall()]


def member_filter_choices() -> dict[str, list[str]]:
    """Distinct departments, locations and groups for the filter menus."""
    return {
        "departments": _distinct_values("department"),
        "locations": _distinct_values("location"),
        "groups": list(MemberGroup.objects.values_list("name", flat=True)[:500]),
    }


@dataclasses.dataclass(frozen=True)
class SeatSummary:
    used: int
    limit: int | None

    @property
    def available(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


def seat_summary() -> SeatSummary:
    pool = SeatPool.objects.filter(id=1).first()
    return SeatSummary(
        used=Member.objects.filter(has_seat=True).count(),
        limit=pool.limit if pool else None,
    )


MEMBER_EXPORT_COLUMNS = [
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
    "groups",
    "status",
    "role",
    "source",
    "last_sign_in_at",
]
_ADMIN_PERMISSION = {Role.ADMIN: "admin", Role.READONLY_ADMIN: "reporting"}


def member_export_rows(*, filters: MemberFilters) -> Any:
    """Rows of the members CSV export, in EDI column names, oldest first."""
    members = (
        member_queryset(filters=filters)
        .select_related("manager")
        .prefetch_related("groups")
        .order_by("pk")
    )
    for member in members.iterator(chunk_size=2000):
        yield [
            member.email,
            member.employee_id,
            member.first_name,
            member.last_name,
            member.job_title,
            member.department,
            member.location,
            member.manager.employee_id if member.manager else "",
            "active" if member.has_seat else "inactive",
            _ADMIN_PERMISSION.get(member.role, ""),  # type: ignore[call-overload]
            ";".join(group.name for group in member.groups.all()),
            member.status,
            member.role,
            member.source,
            member.last_sign_in_at.isoformat() if member.last_sign_in_at else "",
        ]
