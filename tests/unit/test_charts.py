"""The DORA charts' layout (orchestrator/web/charts.py): pure numbers, checked without a browser; the
browser tests in test_dashboard.py check what a person sees of them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from metrics_reference import Promotion, daily

from orchestrator.web.charts import BOTTOM, HEIGHT, TOP, bar_chart, dora_charts

D0 = date(2026, 11, 1)


def test_one_bar_per_day_with_a_value_scaled_to_the_largest() -> None:
    points = [(D0, 2.0), (D0 + timedelta(days=1), None), (D0 + timedelta(days=2), 4.0)]
    c = bar_chart("deploys", "t", "d", points, lambda _d, v: f"{v:.0f} deploys", lambda top: f"{top:.0f}")
    assert [b.day for b in c.bars] == [D0, D0 + timedelta(days=2)]
    plot = HEIGHT - BOTTOM - TOP
    assert [b.height for b in c.bars] == [plot / 2, plot]
    assert all(b.y + b.height == pytest.approx(HEIGHT - BOTTOM) for b in c.bars)
    assert c.bars[0].x < c.bars[1].x and c.bars[0].x + c.bars[0].width < c.bars[1].x
    assert c.bars[1].label == "2026-11-03: 4 deploys" and c.y_max_label == "4"
    assert c.rows == [(D0, "2 deploys"), (D0 + timedelta(days=2), "4 deploys")]


def test_a_zero_failure_rate_day_still_shows_and_a_day_without_promotions_does_not() -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    promotions = [
        Promotion("shop", 1, 1, True, t0 + timedelta(hours=1), release_id=11),
        Promotion("shop", 2, 2, True, t0 + timedelta(days=2, hours=1), release_id=12),
        Promotion("shop", 3, 3, False, t0 + timedelta(days=2, hours=2)),
    ]
    deploys, lead, failures = dora_charts("shop", "3d", daily(promotions, [], t0, t0 + timedelta(days=3)))
    assert [b.value for b in deploys.bars] == [1, 1]
    assert not lead.bars  # no commit times recorded: nothing to draw rather than a zero
    assert [(b.value, b.label) for b in failures.bars] == [
        (0.0, "2026-11-01: 0% failed (0 of 1)"),
        (0.5, "2026-11-03: 50% failed (1 of 2)"),
    ]
    assert failures.bars[0].height >= 1
