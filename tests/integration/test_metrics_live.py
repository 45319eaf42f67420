"""DORA metrics from real deploys on the engine (issue 13): a busybox app promoted to prod twice, then
a commit that passes staging but breaks in prod (its health never turns green there), which the
orchestrator restores automatically. `orchestrator metrics --json`, `/metrics` and the dashboard's
charts must all say what happened: two deployments, three promotions that reached prod, one failure
(the failed one, not the release it restored), a lead time from the commits' own times.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from dashboard_support import dashboard, parse_metrics, scrape

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker


def test_metrics_and_charts_from_two_deploys_and_a_prod_failure(
    busybox_app: BusyboxApp, page: Any, free_port: Callable[[], int]
) -> None:
    app = busybox_app
    app.configure(health_timeout_s=3)
    app.deploy(app.commit("one"))
    app.deploy(app.commit("two"))
    broken = app.start(app.commit("breaks in prod", prod="no_health"))
    app.advance(broken, "deploy-staging").ok()
    failed = app.advance(broken, "deploy")
    assert failed.exit_code == 1 and failed.payload["outcome"] == "failed", failed.describe()
    assert "rollback_prod: prod restored" in failed.payload["reason"]

    found = app.cli("metrics", app.name, as_json=True).ok()["apps"][app.name]
    assert found["deployment_frequency"]["deployments"] == 2
    assert found["change_failure_rate"] == {
        "rate": pytest.approx(1 / 3, abs=1e-3),
        "failures": 1,
        "failed_in_prod": 1,
        "rolled_back": 0,
        "promotions": 3,
    }, "the automatic restore undid the broken commit, not the release it restored"
    lead = found["lead_time_for_changes"]
    assert lead["samples"] == 2 and lead["missing_commit_time"] == 0
    assert lead["median_s"] > 0
    assert found["time_to_restore"]["samples"] == 1 and found["time_to_restore"]["median_s"] > 0

    with dashboard(free_port(), str(app.workspace.config_path)) as url:
        text, _ = scrape(url)
        page.goto(url + "/")
        charts = page.locator(f"#metrics .dora-app[data-app='{app.name}']")
        today = datetime.now(UTC).date()
        bar = charts.locator(f"svg.deploys rect.bar[data-day='{today}'] title")
        failure_bar = charts.locator(f"svg.failure-rate rect.bar[data-day='{today}'] title")
        bar_text, failure_text = bar.text_content(), failure_bar.text_content()
        summary = charts.locator("li.change-failure-rate").inner_text()
    samples, _ = parse_metrics(text)
    labels = (("app", app.name),)
    assert samples[("orchestrator_dora_deployments", labels)] == 2
    assert samples[("orchestrator_dora_promotions", labels)] == 3
    assert samples[("orchestrator_dora_failures", labels)] == 1
    assert samples[("orchestrator_dora_change_failure_rate", labels)] == pytest.approx(1 / 3)
    median = samples[("orchestrator_dora_lead_time_seconds", (("app", app.name), ("quantile", "0.5")))]
    assert median == pytest.approx(lead["median_s"], abs=1e-3)
    by_outcome = {
        k[1][1][1]: v
        for k, v in samples.items()
        if k[0] == "orchestrator_transitions_total" and dict(k[1])["to_state"] == "deploy"
    }
    assert by_outcome == {"succeeded": 2, "failed": 1}
    # Everything happened today (UTC); a test running across midnight would see two days instead.
    if datetime.now(UTC).date() == today:
        assert bar_text == f"{today}: 2 deploys"
        assert failure_text == f"{today}: 33% failed (1 of 3)"
    assert summary.startswith("Change failure rate: 33% (1 of 3: 1 failed in prod, 0 rolled back)")
