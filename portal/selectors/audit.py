"""Audit log reads: filters and keyset pagination over (occurred_at, id)."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date

from portal.models import AuditEvent
from portal.selectors.pagination import Page, decode_cursor, encode_cursor

AUDIT_FILTER_KEYS = (
    "since",
    "until",
    "actor",
    "action",
    "target",
    "source",
    "request_id",
)
PAGE_SIZE = 50


def audit_filters_from_query(query: Any) -> dict[str, str]:
    """Keep only known, non-empty filters (values trimmed to 200 chars)."""
    return {
        key: str(query.get(key, "")).strip()[:200]
        for key in AUDIT_FILTER_KEYS
        if str(query.get(key, "") or "").strip()
    }


def _day_start(value: str, *, end: bool = False) -> datetime | None:
    day = None
    try:
        day = parse_date(value)
    except ValueError:
        return None
    if day is None:
        return None
    moment = datetime.combine(day, time.max if end else time.min)
    return timezone.make_aware(moment, timezone.get_default_timezone())


def audit_event_list(*, filters: dict[str, str]) -> QuerySet[AuditEvent]:
    """Events matching `filters`, newest first."""
    events = AuditEvent.objects.all()
    if since := _day_start(filters.get("since", "")):
        events = events.filter(occurred_at__gte=since)
    if until := _day_start(filters.get("until", ""), end=True):
        events = events.filter(occurred_at__lte=until)
    if actor := filters.get("actor"):
        events = events.filter(Q(actor_label__iexact=actor) | Q(actor_id=actor))
    if action := filters.get("action"):
        events = events.filter(action__startswith=action)
    if target := filters.get("target"):
        events = events.filter(Q(target_id=target) | Q(target_label__iexact=target))
    if source := filters.get("source"):
        events = events.filter(source=source)
    if request_id := filters.get("request_id"):
        events = events.filter(request_id=request_id)
    return events.order_by("-occurred_at", "-id")


def _parse_moment(value: object) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def audit_event_page(
    *, filters: dict[str, str], cursor: str | None = None
) -> Page[AuditEvent]:
    events = audit_event_list(filters=filters)
    after = decode_cursor(cursor)
    if after and len(after) == 2:
        moment = _parse_moment(after[0])
        if moment is not None and isinstance(after[1], int):
            events = events.filter(
                Q(occurred_at__lt=moment) | Q(occurred_at=moment, id__lt=after[1])
            )
    rows = list(events[: PAGE_SIZE + 1])
    next_cursor = None
    if len(rows) > PAGE_SIZE:
        last = rows[PAGE_SIZE - 1]
        next_cursor = encode_cursor([last.occurred_at.isoformat(), last.pk])
    return Page(items=rows[:PAGE_SIZE], next_cursor=next_cursor)


def audit_recent(*, limit: int = 10) -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("-occurred_at", "-id")[:limit])
