"""The DORA keys by their definition, written plainly: the reference the SQL aggregates that production
reads (store/aggregates.py, ``metrics.load``) are checked against (tests/unit/test_metrics_sql.py).

``compute`` (with ``report`` and ``daily``) is the definition of the README's "DORA metrics" as a pure
function of a list of promotions, tested with constructed histories (tests/unit/test_metrics.py).
``prod_history`` loads that list from a store through the ORM with as little SQL as it can (every
filter, join and choice is Python here), so that a mistake in the aggregates' SQL has no twin here.

Nothing in orchestrator/ imports this: it is a test oracle, not a second way to compute the keys.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.metrics import DayPoint, Dora, MetricsReport
from orchestrator.store.models import Release, Run, StepRow, Transition
from orchestrator.store.records import _aware
from orchestrator.store.repository import Store


@dataclass(frozen=True)
class Promotion:
    """One prod-edge transition that reached prod: it succeeded, or failed after touching prod."""

    app: str
    run_id: int
    transition_id: int
    succeeded: bool
    finished_at: datetime
    committed_at: datetime | None = None
    # When prod first got the change (the transition's first prod step): for a failure's restore time.
    prod_touched_at: datetime | None = None
    # The prod release a successful promotion recorded, which a later rollback may roll back from.
    release_id: int | None = None
    released_at: datetime | None = None


@dataclass(frozen=True)
class Rollback:
    """A rollback release in prod, and the release that ran before it (the one rolled back from)."""

    app: str
    release_id: int
    at: datetime
    replaced_release_id: int | None


def _p90(values: Sequence[float]) -> float | None:
    """Nearest-rank 90th percentile; None without samples."""
    return sorted(values)[max(1, math.ceil(0.9 * len(values))) - 1] if values else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def compute(
    promotions: Iterable[Promotion], rollbacks: Iterable[Rollback], since: datetime, until: datetime
) -> Dora:
    """DORA keys of the promotions that finished in [since, until). Rollbacks may be later than
    ``until`` (a change released in the window and rolled back after it still failed)."""
    window = [p for p in promotions if since <= p.finished_at < until]
    succeeded = [p for p in window if p.succeeded]
    failed = [p for p in window if not p.succeeded]
    by_release = {p.release_id: p for p in succeeded if p.release_id is not None}
    # A release is rolled back from once at most as far as failure counting goes (the first rollback).
    rolled: dict[int, Rollback] = {}
    for rb in sorted(rollbacks, key=lambda r: r.at):
        if rb.replaced_release_id in by_release and rb.replaced_release_id not in rolled:
            rolled[rb.replaced_release_id] = rb
    days = max((until - since).total_seconds() / 86400, 1e-9)

    leads = [
        (p.finished_at - p.committed_at).total_seconds() for p in succeeded if p.committed_at is not None
    ]
    restores: list[float] = []
    for p in failed:
        start = p.prod_touched_at or p.finished_at
        restores.append(max(0.0, (p.finished_at - start).total_seconds()))
    for release_id, rb in rolled.items():
        bad = by_release[release_id]
        start = bad.released_at or bad.finished_at
        restores.append(max(0.0, (rb.at - start).total_seconds()))

    return Dora(
        deployments=len(succeeded),
        deploys_per_day=len(succeeded) / days,
        deploy_days=len({p.finished_at.astimezone(UTC).date() for p in succeeded}),
        lead_time_median_s=_median(leads),
        lead_time_p90_s=_p90(leads),
        lead_time_samples=len(leads),
        lead_time_missing=len(succeeded) - len(leads),
        attempts=len(window),
        failures=len(failed) + len(rolled),
        failed_in_prod=len(failed),
        rolled_back=len(rolled),
        time_to_restore_median_s=_median(restores),
        time_to_restore_samples=len(restores),
    )


def report(
    promotions: Sequence[Promotion],
    rollbacks: Sequence[Rollback],
    since: datetime,
    until: datetime,
    apps: Iterable[str],
) -> MetricsReport:
    """Per app (every app named, with zeros when it has no history) and for all of them together."""
    names = sorted(set(apps) | {p.app for p in promotions})
    per_app = {
        name: compute(
            [p for p in promotions if p.app == name], [r for r in rollbacks if r.app == name], since, until
        )
        for name in names
    }
    return MetricsReport(since, until, per_app, compute(promotions, rollbacks, since, until))


def daily(
    promotions: Sequence[Promotion], rollbacks: Sequence[Rollback], since: datetime, until: datetime
) -> list[DayPoint]:
    """The keys per UTC calendar day of [since, until), first and last day clipped to the window. Each
    day is ``compute`` on that day's promotions, so a chart can never disagree with the numbers: a
    rollback after the day still counts against the release it undid."""
    points = []
    day = since.astimezone(UTC).date()
    while datetime.combine(day, time.min, UTC) < until:
        start = max(since, datetime.combine(day, time.min, UTC))
        end = min(until, datetime.combine(day + timedelta(days=1), time.min, UTC))
        mine = [p for p in promotions if _utc_day(p.finished_at) == day]
        points.append(DayPoint(day, compute(mine, rollbacks, start, end)))
        day += timedelta(days=1)
    return points


def _utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def prod_history(store: Store, app: str | None, since: datetime) -> tuple[list[Promotion], list[Rollback]]:
    """What ``compute`` computes from: the prod-edge transitions that finished since ``since`` and
    reached prod (succeeded, or failed after a prod step began), and prod's rollback releases since then
    with the release each replaced (``orchestrator rollback`` only: a failed promotion's own restore,
    recorded with its transition, undoes the failure already counted, not the release before it).

    Every table is read whole through the ORM and chosen from in Python: slow on a real history, plain
    enough to be the reference on a test's."""
    with Session(store.engine) as s:
        transitions = s.scalars(sa.select(Transition)).all()
        runs = {r.id: r for r in s.scalars(sa.select(Run))}
        steps = s.scalars(sa.select(StepRow)).all()
        prod_releases = sorted(
            (r for r in s.scalars(sa.select(Release)) if r.environment == "prod"), key=lambda r: r.id
        )

        promotions = []
        for t in transitions:
            run = runs[t.run_id]
            finished = _aware(t.finished_at)
            if t.to_state != "deploy" or finished is None or finished < since:
                continue
            if (app is not None and run.app != app) or t.outcome not in ("succeeded", "failed"):
                continue
            succeeded = t.outcome == "succeeded"
            prod_steps = [
                _aware(st.started_at) for st in steps if st.transition_id == t.id and st.environment == "prod"
            ]
            if not succeeded and not prod_steps:
                continue  # failed before prod was touched: not a change that reached prod
            # A transition that recorded two prod releases (a retried record step) counts once, with its
            # newest.
            mine = [r for r in prod_releases if r.transition_id == t.id] if succeeded else []
            release = mine[-1] if mine else None
            promotions.append(
                Promotion(
                    app=run.app,
                    run_id=t.run_id,
                    transition_id=t.id,
                    succeeded=succeeded,
                    finished_at=finished,
                    committed_at=_aware(run.committed_at),
                    prod_touched_at=min(prod_steps) if prod_steps else None,  # type: ignore[type-var]
                    release_id=release.id if release else None,
                    released_at=_aware(release.created_at) if release else None,
                )
            )

        rollbacks = []
        for r in prod_releases:
            at = _aware(r.created_at)
            if r.kind != "rollback" or r.transition_id is not None or at is None or at < since:
                continue
            if app is not None and r.app != app:
                continue
            before = [e.id for e in prod_releases if e.app == r.app and e.id < r.id]
            rollbacks.append(Rollback(r.app, r.id, at, before[-1] if before else None))
    return promotions, rollbacks
