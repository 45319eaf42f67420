"""``/metrics``: the recorded history in the Prometheus text format, read at scrape time.

Nothing is counted in process memory: the orchestrator is many short CLI processes and one server, so
only the database knows how many runs failed or which environment is locked. A custom collector asks
the store on every scrape and turns one ``Snapshot`` into metric families; the families are a pure
function of the snapshot (unit-tested without a database). The collector lives in a registry of its
own, never prometheus_client's global default one: that one would also export this process's Python
and GC internals, and a second app in the same process (the tests run several) would clash with it.

What an operator alerts on, besides the four DORA keys over the window (named in each help text):
runs waiting for a person's approval, locks held (with whether their holder still lives: a dead or
expired one blocks deploys until recovered), frozen apps, and transitions per outcome (a rising
``failed`` or ``aborted`` count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from orchestrator.machine import PROD, STAGING

if TYPE_CHECKING:
    from orchestrator.metrics import MetricsReport
    from orchestrator.store.records import FreezeRecord, LockRecord

PREFIX = "orchestrator"
ENVIRONMENTS = (STAGING, PROD)


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports, read from the store in one go."""

    window: str  # as given to `metrics --since`, e.g. "30d": named in the DORA help texts
    report: MetricsReport
    runs: dict[tuple[str, str], int]  # (app, state) -> runs
    transitions: dict[tuple[str, str, str], int]  # (app, to_state, outcome) -> transitions
    awaiting_approval: Sequence[tuple[str, str, int]]  # (app, environment, run_id)
    locks: Sequence[LockRecord]
    freezes: Sequence[FreezeRecord]
    now: datetime
    revision: str


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def families(snap: Snapshot) -> list[Metric]:
    """The metric families of one scrape. A DORA value with no sample behind it (no promotion, so no
    failure rate) is left out rather than reported as 0: a 0% failure rate would be a claim."""
    w = snap.window
    report = snap.report
    apps = sorted(report.apps)

    deployments = _gauge("dora_deployments", f"Successful promotions to prod over the last {w}", ["app"])
    frequency = _gauge(
        "dora_deployment_frequency_per_day",
        f"DORA deployment frequency: successful promotions to prod per day over the last {w}",
        ["app"],
    )
    lead = _gauge(
        "dora_lead_time_seconds",
        f"DORA lead time for changes over the last {w}: commit time to prod, median (quantile 0.5) and "
        "90th percentile (quantile 0.9)",
        ["app", "quantile"],
    )
    promotions = _gauge(
        "dora_promotions",
        f"Promotions that reached prod (succeeded or failed there) over the last {w}",
        ["app"],
    )
    failures = _gauge(
        "dora_failures",
        f"Promotions over the last {w} that failed in prod or were later rolled back",
        ["app"],
    )
    cfr = _gauge(
        "dora_change_failure_rate",
        f"DORA change failure rate over the last {w}: failures / promotions that reached prod (0..1)",
        ["app"],
    )
    restore = _gauge(
        "dora_time_to_restore_seconds",
        f"DORA time to restore over the last {w}: median seconds from a bad change in prod to a good one",
        ["app"],
    )
    for app in apps:
        m = report.apps[app]
        deployments.add_metric([app], m.deployments)
        frequency.add_metric([app], m.deploys_per_day)
        for q, value in (("0.5", m.lead_time_median_s), ("0.9", m.lead_time_p90_s)):
            if value is not None:
                lead.add_metric([app, q], value)
        promotions.add_metric([app], m.attempts)
        failures.add_metric([app], m.failures)
        if m.change_failure_rate is not None:
            cfr.add_metric([app], m.change_failure_rate)
        if m.time_to_restore_median_s is not None:
            restore.add_metric([app], m.time_to_restore_median_s)
    window = _gauge("dora_window_seconds", f"The window the dora_* metrics cover ({w}), in seconds")
    window.add_metric([], (report.until - report.since).total_seconds())

    runs = _gauge(
        "runs", "Runs per app in each state (development, deploy-staging, deploy, ...)", ["app", "state"]
    )
    for (app, state), n in sorted(snap.runs.items()):
        runs.add_metric([app, state], n)
    transitions = CounterMetricFamily(
        f"{PREFIX}_transitions",
        "Transitions (promotion attempts) per app, target state and outcome, over the whole history",
        labels=["app", "to_state", "outcome"],
    )
    for (app, to_state, outcome), n in sorted(snap.transitions.items()):
        transitions.add_metric([app, to_state, outcome], n)

    awaiting = _gauge(
        "runs_awaiting_approval",
        "Runs waiting for a person's 'orchestrator approve' before entering the environment",
        ["app", "environment"],
    )
    waiting: dict[tuple[str, str], int] = {(a, e): 0 for a in apps for e in ENVIRONMENTS}
    for app, env, _run in snap.awaiting_approval:
        waiting[(app, env)] = waiting.get((app, env), 0) + 1
    for (app, env), n in sorted(waiting.items()):
        awaiting.add_metric([app, env], n)

    locks = _gauge(
        "locks_held",
        "Environment locks held (1 each); holder_state alive, held (by hand), dead or expired: a dead or "
        "expired holder blocks deploys until 'orchestrator recover'",
        ["app", "environment", "kind", "holder_state"],
    )
    lock_age = _gauge(
        "lock_age_seconds", "Seconds since each held lock was taken", ["app", "environment", "kind"]
    )
    for lk in snap.locks:
        locks.add_metric([lk.app, lk.environment, lk.kind, lk.liveness(snap.now)], 1)
        lock_age.add_metric([lk.app, lk.environment, lk.kind], _age(snap.now, lk.acquired_at))

    frozen = _gauge("frozen", "Freezes in force (1 each); app '*' freezes every app", ["app"])
    frozen_age = _gauge("freeze_age_seconds", "Seconds since each freeze began", ["app"])
    for f in snap.freezes:
        frozen.add_metric([f.app], 1)
        frozen_age.add_metric([f.app], _age(snap.now, f.since))

    info = _gauge("build_info", "The orchestrator serving these metrics (value 1)", ["revision"])
    info.add_metric([snap.revision], 1)
    return [
        deployments,
        frequency,
        lead,
        promotions,
        failures,
        cfr,
        restore,
        window,
        runs,
        transitions,
        awaiting,
        locks,
        lock_age,
        frozen,
        frozen_age,
        info,
    ]


def _age(now: datetime, since: datetime) -> float:
    return max(0.0, (now - since).total_seconds())


class StoreCollector:
    """Reads a fresh snapshot on every scrape (prometheus_client's Collector protocol)."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return families(self._read())


def registry_for(read: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry of its own holding only the store collector (see the module docstring)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(read))
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The body and its content type: the text format, or OpenMetrics when the scraper asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
