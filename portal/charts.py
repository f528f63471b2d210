"""Server-drawn SVG chart geometry (PORTAL-33): data in, shapes out.

Templates draw the shapes and a "show data" table from the same points, so
the table always equals the chart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date

WIDTH = 600
HEIGHT = 160
PAD = 24


@dataclasses.dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int


@dataclasses.dataclass(frozen=True)
class BarChart:
    title: str
    bars: list[Bar]
    limit_y: float | None
    limit: int | None
    maximum: int
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def rows(self) -> list[tuple[str, int]]:
        return [(bar.label, bar.value) for bar in self.bars]


def bar_chart(
    *,
    title: str,
    points: Sequence[tuple[date, int]],
    limit: int | None = None,
    days: int | None = None,
) -> BarChart:
    """Lay out one bar per point, scaled to the larger of data and limit.

    With `days`, the x axis is that many days ending on the last point, so a
    new tenant's single day is one narrow bar at the right, not a slab.
    """
    maximum = max([value for _, value in points] + [limit or 0, 1])
    inner_w = WIDTH - 2 * PAD
    inner_h = HEIGHT - 2 * PAD
    slots = days if days else max(len(points), 1)
    slot = inner_w / slots
    end = points[-1][0] if points else None
    bars = []
    for position, (day, value) in enumerate(points):
        index = slots - 1 - (end - day).days if days and end else position
        if index < 0:
            continue
        height = inner_h * value / maximum
        bars.append(
            Bar(
                x=round(PAD + index * slot + slot * 0.1, 2),
                y=round(PAD + inner_h - height, 2),
                width=round(max(slot * 0.8, 1), 2),
                height=round(height, 2),
                label=day.isoformat(),
                value=value,
            )
        )
    limit_y = round(PAD + inner_h - inner_h * limit / maximum, 2) if limit else None
    return BarChart(
        title=title, bars=bars, limit_y=limit_y, limit=limit, maximum=maximum
    )
