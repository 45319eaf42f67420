"""The DORA keys as SQL aggregates (`orchestrator metrics`, `/metrics`, the dashboard's charts).

The keys are defined over a list of promotions (metrics.py; the definition as code is the tests'
reference, tests/metrics_reference.py); loading that list costs a row and an object per promotion,
thousands in a month. Here the database reads the window only (through the index
on transitions (to_state, outcome, finished_at, ...), migration 0008), works out each promotion's lead and
restore time, and groups them by app and UTC day: one row per app and day comes back, with its counts
(which add up to the app's and every app's) and its durations as lists of integers. Medians and
percentiles are ranks, which do not add up over days, so they are taken here from those lists.

The results equal that reference exactly (tests/unit/test_metrics_sql.py compares them on both
databases): durations are integer microseconds computed in SQL from the stored timestamps, and become
seconds as ``timedelta.total_seconds()`` makes them, ranked as the definition ranks them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from orchestrator.machine import PROD, State
from orchestrator.store.models import Release, Run, StepRow, Transition

if TYPE_CHECKING:
    from orchestrator.store.repository import Store


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


def _duration_us(later: Any, earlier: Any, dialect: str) -> Any:
    """``later - earlier`` (two stored timestamps) in integer microseconds, exactly.

    SQLite keeps the text SQLAlchemy wrote, ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC: whole seconds come
    from julianday() of the text without its fraction (a float of days, exact once the difference is
    rounded to whole seconds), and the fractions from their six digits. julianday() or strftime('%s')
    of the text with its fraction would round it to milliseconds (.9996 s to the next second) and
    make a median differ from the one computed in Python."""
    if dialect == "sqlite":
        a, b = sa.type_coerce(later, sa.String), sa.type_coerce(earlier, sa.String)
        days = sa.func.julianday(sa.func.substr(a, 1, 19)) - sa.func.julianday(sa.func.substr(b, 1, 19))
        seconds = sa.cast(sa.func.round(days * 86400), sa.BigInteger)
        fractions = sa.cast(sa.func.substr(a, 21, 6), sa.BigInteger) - sa.cast(
            sa.func.substr(b, 21, 6), sa.BigInteger
        )
        return seconds * 1_000_000 + fractions
    # The epoch (seconds) of an interval is numeric in PostgreSQL (>= 14): exact to the microsecond.
    return sa.cast(sa.func.round(sa.extract("epoch", later - earlier) * 1_000_000), sa.BigInteger)


def _utc_day(column: Any, dialect: str) -> Any:
    """The UTC calendar day of a timestamp (``YYYY-MM-DD`` text on SQLite, a date on PostgreSQL)."""
    if dialect == "sqlite":
        return sa.func.substr(sa.type_coerce(column, sa.String), 1, 10)  # the stored text is UTC
    return sa.cast(sa.func.timezone("UTC", column), sa.Date)


def _at_least_zero(value: Any, dialect: str) -> Any:
    """max(0, value): a clock that stepped back never makes a negative duration (as in ``compute``)."""
    return sa.func.max(value, 0) if dialect == "sqlite" else sa.func.greatest(value, 0)


def _list_of(value: Any, dialect: str) -> Any:
    """The group's values (integers) as one comma-separated text, in no particular order."""
    if dialect == "sqlite":
        return sa.func.group_concat(value, ",")
    return sa.func.string_agg(sa.cast(value, sa.String), ",")


def _rolled_back(app: str | None, since: datetime) -> sa.Subquery:
    """The transitions whose prod release `orchestrator rollback` rolled prod back from, since
    ``since`` (a few hundred in half a year, next to tens of thousands of promotions): the
    transition, when its release was made, and the first rollback away from it.

    A rollback replaces the app's prod release just before it. That release counts as the promotion's
    only if it is the newest prod release its transition made (a retried record step makes two). A
    rollback made by a failed promotion's own restore has a transition and is not one: that failure
    counts already."""
    earlier = aliased(Release)
    replaced = (
        sa.select(sa.func.max(earlier.id))
        .where(earlier.app == Release.app, earlier.environment == PROD, earlier.id < Release.id)
        .correlate(Release)
        .scalar_subquery()
    )
    rollbacks = sa.select(replaced.label("replaced"), sa.func.min(Release.created_at).label("at")).where(
        Release.environment == PROD,
        Release.kind == "rollback",
        Release.transition_id.is_(None),
        Release.created_at >= since,
    )
    if app is not None:
        rollbacks = rollbacks.where(Release.app == app)
    first = rollbacks.group_by(replaced).subquery("rollback")
    undone = aliased(Release)
    sibling = aliased(Release)
    newest_of_its_transition = (
        sa.select(sa.func.max(sibling.id))
        .where(sibling.transition_id == undone.transition_id, sibling.environment == PROD)
        .correlate(undone)
        .scalar_subquery()
    )
    return (
        sa.select(
            undone.transition_id.label("transition_id"),
            undone.created_at.label("released_at"),
            first.c.at.label("at"),
        )
        .join(undone, undone.id == first.c.replaced)
        .where(undone.transition_id.is_not(None), undone.id == newest_of_its_transition)
        .subquery("rolled_back")
    )


def _in_window(app: str | None, since: datetime, until: datetime) -> list[sa.ColumnElement[bool]]:
    """Prod-edge transitions that ended (succeeded or failed) in [since, until), of ``app`` if named."""
    found = [
        Transition.to_state == State.DEPLOY.value,
        Transition.outcome.in_(("succeeded", "failed")),
        Transition.finished_at >= since,
        Transition.finished_at < until,
    ]
    if app is not None:
        found.append(Run.app == app)
    return found


def _promotions(dialect: str, app: str | None, since: datetime, until: datetime) -> sa.Select[Any]:
    """The window's promotions, one row each: app, UTC day, 1 (an attempt), whether it succeeded, 0
    (not counted as rolled back here), its lead time, and a failure's restore time (from its first
    prod step to its end). A failed transition that never began a prod step did not reach prod and is
    left out. Each row costs two probes of an index (the transition in the window's index, its run),
    a failure one more (its steps)."""
    succeeded = Transition.outcome == "succeeded"
    # A correlated aggregate, also where only whether there is one matters: PostgreSQL may answer an
    # EXISTS with a hash of every prod step ever recorded (the whole history), not a probe per failure.
    touched = (
        sa.select(sa.func.min(StepRow.started_at))
        .where(StepRow.transition_id == Transition.id, StepRow.environment == PROD)
        .correlate(Transition)
        .scalar_subquery()
    )
    return (
        sa.select(
            Run.app.label("app"),
            _utc_day(Transition.finished_at, dialect).label("day"),
            sa.literal(1).label("attempts"),
            sa.case((succeeded, 1), else_=0).label("ok"),
            sa.literal(0).label("rolled"),
            sa.case(
                (
                    sa.and_(succeeded, Run.committed_at.is_not(None)),
                    _duration_us(Transition.finished_at, Run.committed_at, dialect),
                )
            ).label("lead_us"),
            sa.case(
                (succeeded, sa.null()),
                else_=_at_least_zero(_duration_us(Transition.finished_at, touched, dialect), dialect),
            ).label("restore_us"),
        )
        .join(Run, Run.id == Transition.run_id)
        .where(*_in_window(app, since, until), sa.or_(succeeded, touched.is_not(None)))
    )


def _rollbacks_of_window(dialect: str, app: str | None, since: datetime, until: datetime) -> sa.Select[Any]:
    """The window's successful promotions that were rolled back, one row each, as an addition to their
    day: app, day, no attempt (``_promotions`` counts it), rolled back, and the restore time from the
    release to the first rollback away from it."""
    rolled = _rolled_back(app, since)
    return (
        sa.select(
            Run.app,
            _utc_day(Transition.finished_at, dialect),
            sa.literal(0),
            sa.literal(0),
            sa.literal(1),
            sa.null(),
            _at_least_zero(_duration_us(rolled.c.at, rolled.c.released_at, dialect), dialect),
        )
        .select_from(rolled)
        .join(Transition, Transition.id == rolled.c.transition_id)
        .join(Run, Run.id == Transition.run_id)
        .where(Transition.outcome == "succeeded", *_in_window(app, since, until))
    )


def dora_aggregates(
    store: Store, app: str | None, since: datetime, until: datetime, *, by_day: bool = False
) -> DoraAggregates:
    """The keys of ``app`` (or every app) over [since, until); per app and UTC day too with ``by_day``.

    One statement, grouped by app and day: the counts (which add up to the app's and every app's), and
    the day's lead and restore times as integer lists. Medians and percentiles are ranks, which do not
    add up, so the ranking is done here over those lists (a number per promotion, not a row)."""
    dialect = store.engine.dialect.name
    rows = sa.union_all(
        _promotions(dialect, app, since, until), _rollbacks_of_window(dialect, app, since, until)
    ).subquery("row")
    q = sa.select(
        rows.c.app,
        rows.c.day,
        sa.func.sum(rows.c.attempts),
        sa.func.sum(rows.c.ok),
        sa.func.sum(rows.c.rolled),
        _list_of(rows.c.lead_us, dialect),
        _list_of(rows.c.restore_us, dialect),
    ).group_by(rows.c.app, rows.c.day)
    with store._session() as s:
        conn = s.connection()
        _plan_for_this_window(conn)
        groups = conn.execute(q).all()
    return _assemble(since, until, groups, by_day=by_day)


def _plan_for_this_window(conn: sa.Connection) -> None:
    """On PostgreSQL, for the transaction: a plan for this window's length every time, and no
    compiling of the query to machine code first.

    psycopg prepares a statement on its fifth execution, and PostgreSQL may then keep one generic plan
    for every window, made without knowing the times: the one a month's window got took 5 s over half
    a year's (a probe per promotion where a hash was due). The estimate for a long window is high
    enough to start the JIT compiler, which costs more (a quarter of a second) than the query."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        conn.exec_driver_sql("SET LOCAL jit = off")


def _seconds(text: str | None) -> list[float]:
    """A group's durations, sent as comma-separated integer microseconds, in seconds as
    ``timedelta.total_seconds()`` makes them: microseconds / 10**6 correctly rounded (an integer this
    size is exact as a float, so dividing by the float 1e6 is that same division)."""
    return [int(v) / 1e6 for v in text.split(",")] if text else []


def _rank(values: list[float]) -> Ranked:
    """The median (the mean of the middle two of an even count) and the nearest-rank 90th percentile
    of these durations, as the definition takes them."""
    if not values:
        return Ranked()
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return Ranked(len(ordered), median, ordered[max(1, math.ceil(0.9 * len(ordered))) - 1])


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _assemble(since: datetime, until: datetime, groups: Iterable[Any], *, by_day: bool) -> DoraAggregates:
    """Per app, for every app, and (``by_day``) per app and day, from the rows per app and day."""
    apps: dict[str, _Sums] = {}
    days: dict[tuple[str, date], DoraCounts] = {}
    for app, raw_day, attempts, ok, rolled, leads, restores in groups:
        day = _Sums(int(attempts), int(ok or 0), int(rolled or 0), _seconds(leads), _seconds(restores))
        if day.deployments:
            day.days.add(_day(raw_day))
        apps.setdefault(app, _Sums()).add(day)
        if by_day:
            days[(app, _day(raw_day))] = day.counts()
    per_app = {app: sums.counts() for app, sums in apps.items()}
    total = _Sums()
    for sums in apps.values():  # sorted by counts(): the total's sort merges those runs
        total.add(sums)
    return DoraAggregates(since, until, per_app, total.counts(), days if by_day else None)


@dataclass
class _Sums:
    """Running totals of one group (an app and day, an app, every app): counts add up, and durations are
    kept as lists, since medians and percentiles are ranked over all of them (``counts``)."""

    attempts: int = 0
    deployments: int = 0
    rolled_back: int = 0
    leads: list[float] = field(default_factory=list)
    restores: list[float] = field(default_factory=list)
    days: set[date] = field(default_factory=set)

    def add(self, other: _Sums) -> None:
        self.attempts += other.attempts
        self.deployments += other.deployments
        self.rolled_back += other.rolled_back
        self.leads += other.leads
        self.restores += other.restores
        self.days |= other.days

    def counts(self) -> DoraCounts:
        self.leads.sort()
        self.restores.sort()
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
        conn = s.connection()
        _plan_for_this_window(conn)
        return [(int(i), a, sha) for i, a, sha in conn.execute(q)]
