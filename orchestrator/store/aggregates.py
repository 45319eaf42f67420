"""The DORA keys as SQL aggregates (`orchestrator metrics`, `/metrics`, the dashboard's charts).

``metrics.compute`` defines the keys over a list of promotions; loading that list costs a row and an
object per promotion, thousands in a month. Here the database reads the window only (through the index
on transitions (to_state, finished_at)), works out each promotion's lead and restore time, and groups
them by app and UTC day: one row per app and day comes back, with its counts (which add up to the app's
and every app's) and its durations as lists of integers. Medians and percentiles are ranks, which do
not add up over days, so they are taken here from those lists.

The results equal ``metrics.compute`` exactly (tests/unit/test_metrics_sql.py compares them on both
databases): durations are integer microseconds computed in SQL from the stored timestamps, and become
seconds as ``timedelta.total_seconds()`` makes them, ranked as ``metrics`` ranks them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from orchestrator.machine import PROD, State
from orchestrator.metrics import median_and_p90
from orchestrator.store.models import Release, Run, StepRow, Transition

if TYPE_CHECKING:
    from orchestrator.store.repository import Store

LEAD = "lead"
RESTORE = "restore"
TOTAL = "*"
UNIX_EPOCH_JULIAN_DAY = (
    2440587.5  # the group of every app together (not an app name: those are DNS-like labels)
)


@dataclass(frozen=True)
class Ranked:
    """A median and a 90th percentile (nearest rank) of some durations, and how many there were."""

    samples: int = 0
    median_s: float | None = None
    p90_s: float | None = None


@dataclass(frozen=True)
class DoraCounts:
    """One group's numbers (an app, every app, or an app on one day): what ``metrics.Dora`` is made of,
    but the per-day rate, which depends on the window the caller asked for."""

    deployments: int = 0
    deploy_days: int = 0
    lead_missing: int = 0
    attempts: int = 0
    failed_in_prod: int = 0
    rolled_back: int = 0
    lead: Ranked = field(default_factory=Ranked)
    restore: Ranked = field(default_factory=Ranked)


@dataclass(frozen=True)
class DoraAggregates:
    """The window's keys per app and for every app together, and per app and UTC day when asked."""

    since: datetime
    until: datetime
    apps: dict[str, DoraCounts]
    total: DoraCounts
    days: dict[tuple[str, date], DoraCounts] | None = None


def _micros(column: Any, dialect: str) -> Any:
    """A stored timestamp as integer microseconds since the epoch, exactly.

    SQLite keeps the text SQLAlchemy wrote, ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC: the whole seconds
    go through julianday() (a float of days, but exact once rounded to whole seconds) and the fraction
    is read as its six digits. julianday() of the text with its fraction would round microseconds away
    (it keeps milliseconds) and make a median differ from the one computed in Python; strftime('%s')
    would round the fraction to milliseconds too (.9996 s becomes the next second), and parses slower.
    """
    if dialect == "sqlite":
        text = sa.type_coerce(column, sa.String)
        days = sa.func.julianday(sa.func.substr(text, 1, 19)) - UNIX_EPOCH_JULIAN_DAY
        seconds = sa.cast(sa.func.round(days * 86400), sa.BigInteger)
        return seconds * 1_000_000 + sa.cast(sa.func.substr(text, 21, 6), sa.BigInteger)
    return sa.cast(sa.func.round(sa.extract("epoch", column) * 1_000_000), sa.BigInteger)


def _utc_day(column: Any, dialect: str) -> Any:
    """The UTC calendar day of a timestamp, as ``YYYY-MM-DD`` text."""
    if dialect == "sqlite":
        return sa.func.substr(sa.type_coerce(column, sa.String), 1, 10)  # the stored text is UTC
    return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")


def _at_least_zero(value: Any, dialect: str) -> Any:
    """max(0, value): a clock that stepped back never makes a negative duration (as in ``compute``)."""
    return sa.func.max(value, 0) if dialect == "sqlite" else sa.func.greatest(value, 0)


def _list_of(value: Any, dialect: str) -> Any:
    """The group's values (integers) as one comma-separated text, in no particular order."""
    text = sa.cast(value, sa.String)
    return sa.func.group_concat(text, ",") if dialect == "sqlite" else sa.func.string_agg(text, ",")


def _rollbacks(app: str | None, since: datetime) -> sa.Subquery:
    """The prod releases `orchestrator rollback` made since ``since`` (a few, next to the promotions),
    each with the release it replaced: the app's prod release just before it. A rollback made by a
    failed promotion's own restore has a transition and is not one: that failure counts already."""
    earlier = aliased(Release)
    replaced = (
        sa.select(sa.func.max(earlier.id))
        .where(earlier.app == Release.app, earlier.environment == PROD, earlier.id < Release.id)
        .correlate(Release)
        .scalar_subquery()
    )
    q = sa.select(replaced.label("replaced"), sa.func.min(Release.created_at).label("at")).where(
        Release.environment == PROD,
        Release.kind == "rollback",
        Release.transition_id.is_(None),
        Release.created_at >= since,
    )
    if app is not None:
        q = q.where(Release.app == app)
    # A release is rolled back once as far as failures go: from the first rollback away from it.
    return q.group_by(replaced).subquery("rollback")


def _window(dialect: str, app: str | None, since: datetime, until: datetime) -> sa.Subquery:
    """The prod-edge transitions that finished in [since, until) and reached prod (succeeded, or
    failed after a prod step began), one row each: app, UTC day, whether it succeeded, its lead time,
    whether it was rolled back, and its restore time (a failure's own, or until the rollback).

    Each row costs a few probes of an index (the window's transitions, the run, the release a success
    made, the newest were there two); nothing outside the window is read but the window's rollbacks."""
    us = lambda column: _micros(column, dialect)  # noqa: E731 - a shorthand, read many times below
    succeeded = Transition.outcome == "succeeded"
    touched = (
        sa.select(sa.func.min(StepRow.started_at))
        .where(StepRow.transition_id == Transition.id, StepRow.environment == PROD)
        .correlate(Transition)
        .scalar_subquery()
    )
    made = (
        sa.select(sa.func.max(Release.id))
        .where(Release.transition_id == Transition.id, Release.environment == PROD)
        .correlate(Transition)
        .scalar_subquery()
    )
    inner = (
        sa.select(
            Run.app.label("app"),
            _utc_day(Transition.finished_at, dialect).label("day"),
            sa.case((succeeded, 1), else_=0).label("ok"),
            sa.case(
                (
                    sa.and_(succeeded, Run.committed_at.is_not(None)),
                    us(Transition.finished_at) - us(Run.committed_at),
                )
            ).label("lead_us"),
            sa.case((succeeded, sa.null()), else_=touched).label("touched_at"),
            Transition.finished_at.label("finished_at"),
            sa.case((succeeded, made)).label("release_id"),
        )
        .join(Run, Run.id == Transition.run_id)
        .where(
            Transition.to_state == State.DEPLOY.value,
            Transition.outcome.in_(("succeeded", "failed")),
            Transition.finished_at >= since,
            Transition.finished_at < until,
        )
    )
    if app is not None:
        inner = inner.where(Run.app == app)
    rows = inner.subquery("promotion")
    rollbacks = _rollbacks(app, since)
    released_at = (
        sa.select(Release.created_at).where(Release.id == rows.c.release_id).correlate(rows).scalar_subquery()
    )
    restore = sa.case(
        (rows.c.ok == 0, _at_least_zero(us(rows.c.finished_at) - us(rows.c.touched_at), dialect)),
        (rollbacks.c.at.is_not(None), _at_least_zero(us(rollbacks.c.at) - us(released_at), dialect)),
    )
    return (
        sa.select(
            rows.c.app,
            rows.c.day,
            rows.c.ok,
            rows.c.lead_us,
            sa.case((rollbacks.c.at.is_not(None), 1), else_=0).label("rolled"),
            restore.label("restore_us"),
        )
        .select_from(rows.outerjoin(rollbacks, rollbacks.c.replaced == rows.c.release_id))
        .where(sa.or_(rows.c.ok == 1, rows.c.touched_at.is_not(None)))
        .subquery("window")
    )


def dora_aggregates(
    store: Store, app: str | None, since: datetime, until: datetime, *, by_day: bool = False
) -> DoraAggregates:
    """The keys of ``app`` (or every app) over [since, until); per app and UTC day too with ``by_day``.

    One statement, grouped by app and day: the counts (which add up to the app's and every app's), and
    the day's lead and restore times as integer lists. Medians and percentiles are ranks, which do not
    add up, so the ranking is done here over those lists (a number per promotion, not a row)."""
    dialect = store.engine.dialect.name
    w = _window(dialect, app, since, until)
    q = sa.select(
        w.c.app,
        w.c.day,
        sa.func.count(),
        sa.func.sum(w.c.ok),
        sa.func.sum(w.c.rolled),
        _list_of(w.c.lead_us, dialect),
        _list_of(w.c.restore_us, dialect),
    ).group_by(w.c.app, w.c.day)
    with store._session() as s:
        conn = s.connection()
        if dialect == "postgresql":
            # The planner's estimate for a long window is high enough to compile the query to machine
            # code first, which costs more (a quarter of a second) than running it.
            conn.exec_driver_sql("SET LOCAL jit = off")
        groups = conn.execute(q).all()
    return _assemble(since, until, groups, by_day=by_day)


def _micros_list(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


def _rank(values: list[int]) -> Ranked:
    """The median and 90th percentile ``metrics.compute`` gives for these durations, each converted to
    seconds as ``timedelta.total_seconds()`` converts it (microseconds / 10**6)."""
    median, p90 = median_and_p90([v / 1_000_000 for v in values])
    return Ranked(len(values), median, p90)


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _assemble(since: datetime, until: datetime, groups: Iterable[Any], *, by_day: bool) -> DoraAggregates:
    """Per app, for every app, and (``by_day``) per app and day, from the rows per app and day."""
    apps: dict[str, _Sums] = {}
    total = _Sums()
    days: dict[tuple[str, date], DoraCounts] = {}
    for app, raw_day, attempts, ok, rolled, leads, restores in groups:
        day = _Sums(
            int(attempts), int(ok or 0), int(rolled or 0), _micros_list(leads), _micros_list(restores)
        )
        if day.deployments:
            day.days.add(_day(raw_day))
        apps.setdefault(app, _Sums()).add(day)
        total.add(day)
        if by_day:
            days[(app, _day(raw_day))] = day.counts()
    return DoraAggregates(
        since,
        until,
        {app: sums.counts() for app, sums in apps.items()},
        total.counts(),
        days if by_day else None,
    )


@dataclass
class _Sums:
    attempts: int = 0
    deployments: int = 0
    rolled_back: int = 0
    leads: list[int] = field(default_factory=list)
    restores: list[int] = field(default_factory=list)
    days: set[date] = field(default_factory=set)

    def add(self, other: _Sums) -> None:
        self.attempts += other.attempts
        self.deployments += other.deployments
        self.rolled_back += other.rolled_back
        self.leads += other.leads
        self.restores += other.restores
        self.days |= other.days

    def counts(self) -> DoraCounts:
        return DoraCounts(
            deployments=self.deployments,
            deploy_days=len(self.days),
            lead_missing=self.deployments - len(self.leads),
            attempts=self.attempts,
            failed_in_prod=self.attempts - self.deployments,
            rolled_back=self.rolled_back,
            lead=_rank(self.leads),
            restore=_rank(self.restores),
        )


def promoted_without_commit_time(
    store: Store, app: str | None, since: datetime, until: datetime, limit: int
) -> list[tuple[int, str, str]]:
    """(run id, app, sha) of up to ``limit`` runs promoted to prod in the window with no recorded
    commit time: the ones `metrics` asks git about (metrics.load)."""
    q = (
        sa.select(Run.id, Run.app, Run.sha)
        .join(Transition, Transition.run_id == Run.id)
        .where(
            Transition.to_state == State.DEPLOY.value,
            Transition.outcome == "succeeded",
            Transition.finished_at >= since,
            Transition.finished_at < until,
            Run.committed_at.is_(None),
        )
        .distinct()
        .limit(limit)
    )
    if app is not None:
        q = q.where(Run.app == app)
    with store._session() as s:
        return [(int(i), a, sha) for i, a, sha in s.execute(q)]
