"""The dashboard's DORA charts: per-day series laid out as bar charts, drawn as SVG by a Jinja template.

Server-rendered, so nothing is downloaded into the browser (no chart library, no script) and what the
page shows is exactly what the server computed (``DoraHistory.daily``). The geometry is computed here,
in plain numbers that tests can check; templates/charts.html only writes it out. Each bar carries a
``<title>`` (hover text, read by screen readers) and each chart a title and a description, and every
chart has its numbers in a table beside it for those who cannot see the drawing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from orchestrator.metrics import DayPoint, Dora, human_duration

WIDTH = 640
HEIGHT = 140
LEFT = 48  # room for the y-axis labels
BOTTOM = 20  # room for the first and last date
TOP = 8


@dataclass(frozen=True)
class Bar:
    """One day's bar, its geometry already worked out (templates/charts.html only writes it out), with the
    words its ``<title>`` says."""

    day: date
    value: float
    label: str  # what the bar says in words ("2026-11-20: 2 deploys")
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Chart:
    """One key of one app per day, laid out for templates/charts.html: its bars, the title and description
    it is drawn with, and the same numbers as a table (``rows``) for those who cannot see it."""

    key: str  # deploys | lead-time | failure-rate
    title: str
    description: str
    bars: list[Bar]
    days: list[date]
    y_max_label: str
    rows: list[tuple[date, str]]  # the table beside the chart: each day with a value, in words
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = BOTTOM
    top: int = TOP

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom


def bar_chart(
    key: str,
    title: str,
    description: str,
    points: Sequence[tuple[date, float | None]],
    describe: Callable[[date, float], str],
    y_max_label: Callable[[float], str],
) -> Chart:
    """One bar per day that has a value (a day without one has no bar, not a zero-height one: a day
    without promotions has no failure rate). Heights scale to the largest value."""
    days = [d for d, _ in points]
    slot = (WIDTH - LEFT) / max(len(points), 1)
    plot_h = HEIGHT - BOTTOM - TOP
    values = [v for _, v in points if v is not None]
    top = max(values, default=0.0) or 1.0
    bars: list[Bar] = []
    for i, (day, value) in enumerate(points):
        if value is None:
            continue
        h = max(plot_h * value / top, 1.0)  # a 0% day still shows a sliver: there was a promotion
        bars.append(
            Bar(
                day,
                value,
                f"{day.isoformat()}: {describe(day, value)}",
                round(LEFT + i * slot + slot * 0.1, 2),
                round(HEIGHT - BOTTOM - h, 2),
                round(slot * 0.8, 2),
                round(h, 2),
            )
        )
    return Chart(
        key,
        title,
        description,
        bars,
        days,
        y_max_label(top) if values else "",
        [(b.day, describe(b.day, b.value)) for b in bars],
    )


def _plural(n: float, word: str) -> str:
    count = int(n)
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def dora_charts(app: str, window: str, points: Sequence[DayPoint]) -> list[Chart]:
    """Deploys per day, median lead time per day and change failure rate per day, for one app."""
    of_day: dict[date, Dora] = {p.day: p.dora for p in points}

    def failure_words(day: date, value: float) -> str:
        m = of_day[day]
        return f"{value:.0%} failed ({m.failures} of {m.attempts})"

    return [
        bar_chart(
            "deploys",
            f"{app}: deploys to prod per day",
            f"Successful promotions of {app} to prod on each day of the last {window}.",
            [(p.day, float(p.dora.deployments) if p.dora.deployments else None) for p in points],
            lambda _day, v: _plural(v, "deploy"),
            lambda top: f"{top:.0f}",
        ),
        bar_chart(
            "lead-time",
            f"{app}: lead time for changes",
            f"Median time from commit to prod of the changes {app} shipped each day of the last {window}.",
            [(p.day, p.dora.lead_time_median_s) for p in points],
            lambda _day, v: f"median lead time {human_duration(v)}",
            human_duration,
        ),
        bar_chart(
            "failure-rate",
            f"{app}: change failure rate",
            f"Share of {app}'s promotions that reached prod each day of the last {window} and failed "
            "there or were rolled back later.",
            [(p.day, p.dora.change_failure_rate) for p in points],
            failure_words,
            lambda top: f"{top:.0%}",
        ),
    ]
