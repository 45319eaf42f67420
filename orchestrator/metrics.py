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

What `metrics`, `/metrics` and the dashboard read is these keys aggregated by the database over the
window (``load``, store/aggregates.py). The definition itself, as a pure function of a list of
promotions, lives with the tests (tests/metrics_reference.py): the aggregates must equal it exactly on
random histories (tests/unit/test_metrics_sql.py), and nothing here needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING

from orchestrator.errors import BadInput

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.store.aggregates import DoraAggregates, DoraCounts
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
class Dora:
    """The four keys of one group of promotions (an app, or every app) over a window or a day, as the module
    docstring defines them, with the counts behind them (samples, promotions with no commit time)."""

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


@dataclass(frozen=True)
class MetricsReport:
    """What `metrics` and ``/metrics`` report: the window, the keys of each app asked for (zeros for one with
    no history) and of all of them together."""

    since: datetime
    until: datetime
    apps: dict[str, Dora]
    total: Dora


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


@dataclass(frozen=True)
class DoraHistory:
    """The keys of a window as the database aggregated them (store/aggregates.py), per app and for
    every app together, and per app and day when loaded with ``by_day``; the apps asked for."""

    aggregates: DoraAggregates
    apps: list[str]

    @property
    def since(self) -> datetime:
        return self.aggregates.since

    @property
    def until(self) -> datetime:
        return self.aggregates.until

    def report(self) -> MetricsReport:
        """Per app (every app named, with zeros when it has no history) and for all of them together."""
        from orchestrator.store.aggregates import DoraCounts

        a = self.aggregates
        empty = DoraCounts()
        per_app = {name: _dora(a.apps.get(name, empty), a.since, a.until) for name in self.apps}
        return MetricsReport(a.since, a.until, per_app, _dora(a.total, a.since, a.until))

    def daily(self, app: str) -> list[DayPoint]:
        """The app's keys per UTC calendar day of the window (the dashboard's charts), the first and last
        day clipped to it; each day's keys are those of the promotions that finished in it, so the
        charts never disagree with the window's numbers (a rollback after the day still counts against
        the release it undid)."""
        days = self.aggregates.days
        if days is None:
            raise ValueError("DoraHistory.daily needs the history loaded with by_day=True")
        from orchestrator.store.aggregates import DoraCounts

        empty = DoraCounts()
        return [
            DayPoint(day, _dora(days.get((app, day), empty), start, end))
            for day, start, end in _days(self.since, self.until)
        ]


def _days(since: datetime, until: datetime) -> list[tuple[date, datetime, datetime]]:
    """Each UTC calendar day of [since, until) with its part of the window."""
    found = []
    day = since.astimezone(UTC).date()
    last = (until - timedelta(microseconds=1)).astimezone(UTC).date()
    while day <= last:
        start = max(since, datetime.combine(day, time.min, UTC))
        end = min(until, datetime.combine(day + timedelta(days=1), time.min, UTC))
        found.append((day, start, end))
        day += timedelta(days=1)
    return found


def _dora(c: DoraCounts, since: datetime, until: datetime) -> Dora:
    """A group's aggregates as the keys of the same promotions and window."""
    days = max((until - since).total_seconds() / 86400, 1e-9)
    return Dora(
        deployments=c.deployments,
        deploys_per_day=c.deployments / days,
        deploy_days=c.deploy_days,
        lead_time_median_s=c.lead.median_s,
        lead_time_p90_s=c.lead.p90_s,
        lead_time_samples=c.lead.samples,
        lead_time_missing=c.lead_missing,
        attempts=c.attempts,
        failures=c.failed_in_prod + c.rolled_back,
        failed_in_prod=c.failed_in_prod,
        rolled_back=c.rolled_back,
        time_to_restore_median_s=c.restore.median_s,
        time_to_restore_samples=c.restore.samples,
    )


def load(
    config: Config,
    store: Store,
    app: str | None,
    since_raw: str,
    *,
    now: datetime | None = None,
    by_day: bool = False,
) -> DoraHistory:
    """The keys of ``app`` (or every app) since ``since_raw``, per day too with ``by_day`` (the
    dashboard's charts). Runs recorded before commit times were (or whose repository was unreadable
    then) get theirs from git first, where the app's repository is here; the others stay out of the
    lead time, counted as ``missing``."""
    from orchestrator.gitrepo import commit_time
    from orchestrator.store.aggregates import dora_aggregates, promoted_without_commit_time

    until = now or datetime.now(UTC)
    since = parse_since(since_raw, until)
    names = [config.app(app).name] if app is not None else sorted(config.apps)
    for run_id, run_app, sha in promoted_without_commit_time(store, app, since, until, BACKFILL_LIMIT):
        source = config.apps[run_app].source if run_app in config.apps else None
        found = commit_time(source, sha) if source is not None and source.is_dir() else None
        if found is not None:
            store.set_commit_time(run_id, found)
    aggregates = dora_aggregates(store, app, since, until, by_day=by_day)
    return DoraHistory(aggregates, sorted(set(names) | set(aggregates.apps)))


def metrics(
    config: Config, store: Store, app: str | None, since_raw: str, *, now: datetime | None = None
) -> MetricsReport:
    """The report for ``app`` (or every app) since ``since_raw`` (see ``load``)."""
    return load(config, store, app, since_raw, now=now).report()
