"""The four DORA keys, computed from the recorded history (`orchestrator metrics`).

Definitions, as computed here (README, "DORA metrics"):

- **Deployment frequency**: promotions to prod that succeeded in the window, per day of the window
  (and on how many distinct days there was at least one).
- **Lead time for changes**: from the commit time of the run's sha (git's committer date, recorded at
  `run start`) to the promotion to prod that shipped it; median and 90th percentile. Runs with no
  recorded commit time are counted apart (``missing``), never guessed.
- **Change failure rate**: of the promotions that reached prod (succeeded, or failed after prod was
  touched), the share that failed in prod or was later rolled back (`orchestrator rollback` away from
  the release it made).
- **Time to restore**: for each such failure, from the moment prod got the bad change to the moment
  it ran a good one again: a failed promotion's own automatic restore (first prod step to the end of
  the transition), or a rollback (the bad release to the rollback release).

Everything below ``compute`` is a pure function of values the store hands over, so it is tested with
constructed histories, without a database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.errors import BadInput

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.store.repository import Store

# Runs recorded before commit times were get theirs from git by `metrics`, this many per call: each is
# a git process, and the result is kept, so a long legacy history is filled over a few calls.
BACKFILL_LIMIT = 200


def parse_since(raw: str, now: datetime) -> datetime:
    """The start of the window: what every history filter accepts (``30d``, ``12h``, ``2w``, an ISO
    date; see store.history.parse_when), and it must lie in the past, or the window is empty."""
    from orchestrator.store.history import parse_when

    try:
        found = parse_when(raw, now=now)
    except BadInput as exc:
        raise BadInput(f"--since: {exc.message}") from None
    if found >= now:
        raise BadInput(f"--since {raw!r} is not in the past: the window would be empty (use e.g. 30d)")
    return found


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


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True)
class Dora:
    deployments: int
    deploys_per_day: float
    deploy_days: int
    lead_time_median_s: float | None
    lead_time_p90_s: float | None
    lead_time_samples: int
    lead_time_missing: int
    attempts: int
    failures: int
    failed_in_prod: int
    rolled_back: int
    time_to_restore_median_s: float | None
    time_to_restore_samples: int

    @property
    def change_failure_rate(self) -> float | None:
        return self.failures / self.attempts if self.attempts else None

    def as_dict(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "deployment_frequency": {
                "deployments": self.deployments,
                "per_day": round(self.deploys_per_day, 4),
                "days_with_deployments": self.deploy_days,
            },
            "lead_time_for_changes": {
                "median_s": r(self.lead_time_median_s),
                "p90_s": r(self.lead_time_p90_s),
                "samples": self.lead_time_samples,
                "missing_commit_time": self.lead_time_missing,
            },
            "change_failure_rate": {
                "rate": r(self.change_failure_rate),
                "failures": self.failures,
                "failed_in_prod": self.failed_in_prod,
                "rolled_back": self.rolled_back,
                "promotions": self.attempts,
            },
            "time_to_restore": {
                "median_s": r(self.time_to_restore_median_s),
                "samples": self.time_to_restore_samples,
            },
        }


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
        lead_time_p90_s=_percentile(leads, 0.9),
        lead_time_samples=len(leads),
        lead_time_missing=len(succeeded) - len(leads),
        attempts=len(window),
        failures=len(failed) + len(rolled),
        failed_in_prod=len(failed),
        rolled_back=len(rolled),
        time_to_restore_median_s=_median(restores),
        time_to_restore_samples=len(restores),
    )


@dataclass(frozen=True)
class MetricsReport:
    since: datetime
    until: datetime
    apps: dict[str, Dora]
    total: Dora

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "window_days": round((self.until - self.since).total_seconds() / 86400, 4),
            "all": self.total.as_dict(),
            "apps": {name: m.as_dict() for name, m in sorted(self.apps.items())},
        }


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


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# -- the action -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayPoint:
    """One calendar day (UTC) of a window and the DORA keys of the promotions that finished in it."""

    day: date
    dora: Dora


def daily(
    promotions: Sequence[Promotion], rollbacks: Sequence[Rollback], since: datetime, until: datetime
) -> list[DayPoint]:
    """The keys per UTC calendar day of [since, until), first and last day clipped to the window, for
    the dashboard's charts. Each day is ``compute`` on that day's promotions, so a chart can never
    disagree with the numbers: a rollback after the day still counts against the release it undid."""
    by_day: dict[date, list[Promotion]] = {}
    for p in promotions:
        if since <= p.finished_at < until:
            by_day.setdefault(p.finished_at.astimezone(UTC).date(), []).append(p)
    points: list[DayPoint] = []
    day = since.astimezone(UTC).date()
    last = (until - timedelta(microseconds=1)).astimezone(UTC).date()
    while day <= last:
        start = max(since, datetime.combine(day, time.min, UTC))
        end = min(until, datetime.combine(day + timedelta(days=1), time.min, UTC))
        points.append(DayPoint(day, compute(by_day.get(day, []), rollbacks, start, end)))
        day += timedelta(days=1)
    return points


@dataclass(frozen=True)
class DoraHistory:
    """What the keys are computed from: the window's promotions and rollbacks, and the apps asked for."""

    promotions: list[Promotion]
    rollbacks: list[Rollback]
    since: datetime
    until: datetime
    apps: list[str]

    def report(self) -> MetricsReport:
        return report(self.promotions, self.rollbacks, self.since, self.until, self.apps)

    def daily(self, app: str) -> list[DayPoint]:
        return daily(
            [p for p in self.promotions if p.app == app],
            [r for r in self.rollbacks if r.app == app],
            self.since,
            self.until,
        )


def load(
    config: Config, store: Store, app: str | None, since_raw: str, *, now: datetime | None = None
) -> DoraHistory:
    """The history of ``app`` (or every app) since ``since_raw``. Runs recorded before commit times
    were (or whose repository was unreadable then) get theirs from git now, where the app's
    repository is here; the others stay out of the lead time, counted as ``missing``."""
    from orchestrator.gitrepo import commit_time

    until = now or datetime.now(UTC)
    since = parse_since(since_raw, until)
    names = [config.app(app).name] if app is not None else sorted(config.apps)
    promotions, rollbacks = store.prod_history(app, since)
    missing = [p for p in promotions if p.succeeded and p.committed_at is None][:BACKFILL_LIMIT]
    filled: dict[int, datetime] = {}
    for p in missing:
        run = store.get_run(p.run_id)
        source = config.apps[run.app].source if run.app in config.apps else None
        found = commit_time(source, run.sha) if source is not None and source.is_dir() else None
        if found is not None:
            store.set_commit_time(run.id, found)
            filled[run.id] = found
    promotions = [replace(p, committed_at=filled[p.run_id]) if p.run_id in filled else p for p in promotions]
    names = sorted(set(names) | {p.app for p in promotions})
    return DoraHistory(promotions, rollbacks, since, until, names)


def metrics(
    config: Config, store: Store, app: str | None, since_raw: str, *, now: datetime | None = None
) -> MetricsReport:
    """The report for ``app`` (or every app) since ``since_raw`` (see ``load``)."""
    return load(config, store, app, since_raw, now=now).report()
