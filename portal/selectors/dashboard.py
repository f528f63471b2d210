"""The dashboard's cards (PORTAL-32). A failing source blanks only its card.

Each card is computed by its own function; `dashboard_cards` catches a
card's error and shows it as unavailable instead of failing the page. Parts
not built yet report "not set up", never invented figures.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.utils import timezone

from portal.charts import bar_chart
from portal.models import Member, SeatSnapshot
from portal.roles import can
from portal.selectors.audit import audit_recent
from portal.selectors.jobs import job_running
from portal.selectors.members import seat_summary

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Card:
    key: str
    title: str
    state: str = "ok"  # ok | not_set_up | unavailable
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def _seats_card() -> Card:
    summary = seat_summary()
    since = timezone.localdate() - timedelta(days=90)
    today = timezone.localdate()
    history = [
        (day, used)
        for day, used in SeatSnapshot.objects.filter(day__gte=since, day__lt=today)
        .order_by("day")
        .values_list("day", "used")
    ]
    # Today's bar is the live figure; snapshots keep the past days.
    history.append((today, summary.used))
    return Card(
        "seats",
        "Seats",
        data={
            "used": summary.used,
            "limit": summary.limit,
            "available": summary.available,
            "chart": bar_chart(
                title="Seats used per day, last 90 days",
                days=90,
                points=history,
                limit=summary.limit,
            ),
            "members": Member.objects.count(),
        },
    )


def _not_set_up(key: str, title: str, hint: str) -> Callable[[], Card]:
    def card() -> Card:
        return Card(key, title, state="not_set_up", data={"hint": hint})

    return card


# Other apps replace their entry when they are built.
CARD_PROVIDERS: dict[str, Callable[[], Card]] = {
    "seats": _seats_card,
    "edi": _not_set_up("edi", "Employee data", "No employee data file received yet."),
    "crm": _not_set_up("crm", "CRM", "No CRM connected."),
    "pointdrive": _not_set_up("pointdrive", "PointDrive", "PointDrive is not set up."),
}
LIMITED_CARDS = ("seats", "edi")


def dashboard_cards(*, viewer: Member) -> list[Card]:
    keys = list(CARD_PROVIDERS)
    if not can(viewer, "dashboard.all_cards"):
        keys = [key for key in keys if key in LIMITED_CARDS]
    cards: list[Card] = []
    for key in keys:
        try:
            cards.append(CARD_PROVIDERS[key]())
        except Exception:
            logger.exception("Dashboard card %s failed", key)
            cards.append(Card(key, key.title(), state="unavailable"))
    return cards


def dashboard_context(*, viewer: Member) -> dict[str, Any]:
    context: dict[str, Any] = {"cards": dashboard_cards(viewer=viewer)}
    try:
        context["jobs"] = job_running(viewer=viewer)
    except Exception:
        logger.exception("Dashboard jobs card failed")
        context["jobs"] = None
    if can(viewer, "audit.view"):
        try:
            context["recent_events"] = audit_recent()
        except Exception:
            logger.exception("Dashboard audit card failed")
            context["recent_events"] = None
    return context
