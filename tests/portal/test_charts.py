"""PORTAL-33: server-drawn charts; the "show data" table equals the chart."""

from __future__ import annotations

from datetime import date, timedelta

from django_tenants.utils import tenant_context

from portal.charts import PAD, WIDTH, bar_chart
from portal.models import SeatSnapshot


def test_one_day_is_a_narrow_bar_at_the_right_edge():
    chart = bar_chart(title="t", points=[(date(2026, 11, 22), 5)], days=90)
    (bar,) = chart.bars
    assert bar.width < (WIDTH - 2 * PAD) / 60
    assert bar.x + bar.width <= WIDTH - PAD
    assert bar.x > WIDTH / 2


def test_bars_follow_dates_and_rows_equal_points():
    end = date(2026, 11, 22)
    points = [(end - timedelta(days=30), 3), (end - timedelta(days=1), 7), (end, 9)]
    chart = bar_chart(title="t", points=points, limit=10, days=90)
    assert chart.rows == [(day.isoformat(), value) for day, value in points]
    xs = [bar.x for bar in chart.bars]
    assert xs == sorted(xs)
    assert chart.bars[2].height > chart.bars[1].height > chart.bars[0].height
    assert chart.limit_y is not None
    assert chart.limit_y < chart.bars[2].y


def test_points_older_than_the_window_are_left_out_of_chart_and_table():
    end = date(2026, 11, 22)
    chart = bar_chart(
        title="t", points=[(end - timedelta(days=120), 1), (end, 2)], days=90
    )
    assert chart.rows == [(end.isoformat(), 2)]


def test_dashboard_table_lists_every_bar(tenant, tenant_client):
    from django.utils import timezone

    with tenant_context(tenant):
        today = timezone.localdate()
        for back, used in ((2, 4), (1, 6)):
            SeatSnapshot.objects.create(day=today - timedelta(days=back), used=used)
    html = tenant_client.get("/").content.decode()
    for back in (2, 1, 0):
        assert f"<td>{(today - timedelta(days=back)).isoformat()}</td>" in html
    assert html.count('<rect class="bar"') == 3
