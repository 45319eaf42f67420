"""``/metrics`` (issue 13, "DORA metrics"): the recorded history in the Prometheus text format.

Every assertion reads the body back with prometheus_client's own parser, as a Prometheus server would:
first the pure families of a constructed snapshot, then a scrape of the real server over a seeded
history, held equal to `orchestrator metrics --json`.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import prometheus_client
import pytest
from dashboard_support import dashboard, parse_metrics, promote_to_prod, scrape
from metrics_reference import Promotion, report

from orchestrator.store.repository import Store
from orchestrator.web.prometheus import Snapshot, exposition, registry_for

if TYPE_CHECKING:
    from conftest import Cli, Workspace

T0 = datetime(2026, 11, 1, tzinfo=UTC)
H = timedelta(hours=1)
SHA = "c" * 40


def snapshot(**changes: Any) -> Snapshot:
    promotions = [
        Promotion("shop", 1, 1, True, T0 + H, committed_at=T0, release_id=11, released_at=T0 + H),
        Promotion("shop", 2, 2, False, T0 + 3 * H, prod_touched_at=T0 + 3 * H - timedelta(minutes=2)),
    ]
    values: dict[str, Any] = {
        "window": "30d",
        "report": report(promotions, [], T0 - timedelta(days=29), T0 + timedelta(days=1), ["shop", "idle"]),
        "runs": {("shop", "deploy"): 1, ("shop", "development"): 1},
        "transitions": {("shop", "deploy", "succeeded"): 1, ("shop", "deploy", "failed"): 1},
        "awaiting_approval": [("shop", "prod", 7)],
        "locks": [],
        "freezes": [],
        "now": T0 + timedelta(days=1),
        "revision": "abc123",
    }
    values.update(changes)
    return Snapshot(**values)


def test_the_dora_keys_and_counters_of_a_snapshot() -> None:
    body, content_type = exposition(registry_for(snapshot), None)
    assert content_type.startswith("text/plain; version=")
    samples, found = parse_metrics(body.decode())
    shop = (("app", "shop"),)
    assert samples[("orchestrator_dora_deployments", shop)] == 1
    assert samples[("orchestrator_dora_deployment_frequency_per_day", shop)] == pytest.approx(1 / 30)
    assert samples[("orchestrator_dora_lead_time_seconds", (("app", "shop"), ("quantile", "0.5")))] == 3600
    assert samples[("orchestrator_dora_change_failure_rate", shop)] == 0.5
    assert samples[("orchestrator_dora_time_to_restore_seconds", shop)] == 120
    assert samples[("orchestrator_dora_window_seconds", ())] == 30 * 86400
    # The window is named where a person reading the metric will look.
    assert "30d" in found["orchestrator_dora_change_failure_rate"].documentation
    # An app without promotions has no failure rate, lead time or restore time: never a made-up 0.
    idle = (("app", "idle"),)
    assert samples[("orchestrator_dora_deployments", idle)] == 0
    assert ("orchestrator_dora_change_failure_rate", idle) not in samples
    assert not [
        k for k in samples if k[0] == "orchestrator_dora_lead_time_seconds" and ("app", "idle") in k[1]
    ]

    assert found["orchestrator_transitions"].type == "counter"
    key = (("app", "shop"), ("outcome", "failed"), ("to_state", "deploy"))
    assert samples[("orchestrator_transitions_total", key)] == 1
    assert samples[("orchestrator_runs", (("app", "shop"), ("state", "deploy")))] == 1
    # Every app and environment has an approval count, 0 included, so `> 0` alerts need no absent().
    waiting = "orchestrator_runs_awaiting_approval"
    assert samples[(waiting, (("app", "shop"), ("environment", "prod")))] == 1
    assert samples[(waiting, (("app", "idle"), ("environment", "prod")))] == 0
    assert samples[("orchestrator_build_info", (("revision", "abc123"),))] == 1


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    body, content_type = exposition(registry_for(snapshot), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


def test_nothing_lands_in_the_global_registry() -> None:
    registry_for(snapshot)
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not [n for n in names if n.startswith("orchestrator")]


# --------------------------------------------------------------------------------------------------
# a scrape of the real server


def test_a_scrape_reports_the_history_locks_freezes_and_waiting_approvals(
    cli: Cli, workspace: Workspace, store: Store, free_port: Callable[[], int]
) -> None:
    promoted = [store.create_run("demo", SHA, "ci", "deploy-staging").id for _ in range(3)]
    promote_to_prod(store, promoted[0])
    promote_to_prod(store, promoted[1], fail_in_prod=True)
    promote_to_prod(store, promoted[2])
    waiting = store.create_run("demo", SHA, "ci", "deploy-staging").id
    store.approval_requested(waiting, "demo", "prod", "ci")
    approved = store.create_run("demo", SHA, "ci", "deploy-staging").id
    store.approval_requested(approved, "demo", "prod", "ci")
    store.approve(approved, "deploy-staging", "prod", "alice", None)
    cli("lock", "demo", "--env", "staging", "--reason", "db migration", "--actor", "bob").ok()
    cli("freeze", "--reason", "holiday", "--actor", "bob").ok()

    with dashboard(free_port(), str(workspace.config_path)) as url:
        text, content_type = scrape(url)
    assert content_type.startswith("text/plain; version=") and "charset=utf-8" in content_type
    samples, _ = parse_metrics(text)
    demo = (("app", "demo"),)
    cli_view = cli("metrics", "demo", as_json=True).ok()["apps"]["demo"]
    assert (
        samples[("orchestrator_dora_deployments", demo)]
        == cli_view["deployment_frequency"]["deployments"]
        == 2
    )
    assert samples[("orchestrator_dora_deployment_frequency_per_day", demo)] == pytest.approx(
        cli_view["deployment_frequency"]["per_day"], abs=1e-4
    )
    assert samples[("orchestrator_dora_change_failure_rate", demo)] == pytest.approx(
        cli_view["change_failure_rate"]["rate"], abs=1e-3
    )
    assert samples[("orchestrator_dora_promotions", demo)] == 3
    assert samples[("orchestrator_runs", (("app", "demo"), ("state", "deploy")))] == 2
    assert samples[("orchestrator_runs", (("app", "demo"), ("state", "development")))] == 1
    outcome = (("app", "demo"), ("outcome", "failed"), ("to_state", "deploy"))
    assert samples[("orchestrator_transitions_total", outcome)] == 1
    # The approved run no longer waits; the other one does.
    assert samples[("orchestrator_runs_awaiting_approval", (("app", "demo"), ("environment", "prod")))] == 1
    lock = (("app", "demo"), ("environment", "staging"), ("holder_state", "held"), ("kind", "manual"))
    assert samples[("orchestrator_locks_held", lock)] == 1
    assert samples[("orchestrator_frozen", (("app", "*"),))] == 1
    assert samples[("orchestrator_freeze_age_seconds", (("app", "*"),))] >= 0


def test_a_scrape_without_a_database_fails_with_the_reason_in_plain_text(
    workspace: Workspace, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prometheus then marks the target down and shows why; /health still answers."""
    monkeypatch.setenv("ORCH_DATABASE_URL", "postgresql+psycopg://orch:pw@127.0.0.1:1/orch")
    with dashboard(free_port(), str(workspace.config_path)) as url:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(url + "/metrics", timeout=30)
        with urllib.request.urlopen(url + "/health", timeout=30) as health:
            assert health.status == 200
    assert failed.value.code == 503
    assert failed.value.headers["Content-Type"].startswith("text/plain")
    body = failed.value.read().decode()
    assert body.startswith("infrastructure_unavailable: database") and "unreachable" in body
    assert ":pw@" not in body
