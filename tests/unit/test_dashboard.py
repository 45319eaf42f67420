"""The dashboard and its JSON API (issue 13, "Web dashboard and API").

History is seeded straight through the store (tests/dashboard_support.py); the dashboard is served by
the real hardened listener on loopback; what a person sees is asserted in a real headless chromium.
The API is held equal to the CLI's --json, byte for byte after parsing, so scripts can use either.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from dashboard_support import BAD_SHA, GOOD_SHA, Seeded, backdate, dashboard, promote_to_prod, seed

from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace


@pytest.fixture
def seeded(store: Store) -> Seeded:
    return seed(store)


@pytest.fixture
def site(workspace: Workspace, seeded: Seeded, free_port: Callable[[], int]) -> Iterator[str]:
    with dashboard(free_port(), str(workspace.config_path)) as url:
        yield url


def get_json(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_api_runs_is_runs_list_json(site: str, cli: Cli, seeded: Seeded) -> None:
    status, body, headers = get_json(f"{site}/api/runs")
    assert status == 200
    assert body == cli("runs", "list", as_json=True).ok()
    assert [r["run_id"] for r in body["runs"]] == [seeded.bad_run, seeded.good_run]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Server"] == "orchestrator"
    _, failed, _ = get_json(f"{site}/api/runs?outcome=failed")
    assert failed == cli("runs", "list", "--outcome", "failed", as_json=True).ok()
    assert [r["run_id"] for r in failed["runs"]] == [seeded.bad_run]


def test_api_run_is_runs_show_json(site: str, cli: Cli, seeded: Seeded) -> None:
    for run_id in (seeded.good_run, seeded.bad_run):
        status, body, _ = get_json(f"{site}/api/runs/{run_id}")
        assert status == 200
        assert body == cli("runs", "show", run_id, as_json=True).ok()


def test_api_unknown_run_is_404_with_the_cli_error(site: str) -> None:
    status, body, _ = get_json(f"{site}/api/runs/9999")
    assert status == 404
    assert body["error"] == "bad_input" and "unknown run 9999" in body["message"]


def test_api_releases_is_releases_json(site: str, cli: Cli, seeded: Seeded) -> None:
    status, body, _ = get_json(f"{site}/api/releases?app=demo")
    assert status == 200
    assert body == cli("releases", "demo", as_json=True).ok()
    (current,) = body["releases"]
    assert current["release_id"] == seeded.release
    assert current["actor"] == "ci-bot" and current["current"] is True and current["until"] is None


def test_api_read_endpoints_refuse_other_methods(site: str) -> None:
    """The read endpoints take GET and HEAD; POST belongs to the token-protected actions only
    (test_api_actions.py), and no other method reaches the application."""
    for method, status in (("POST", 405), ("PUT", 501), ("DELETE", 501)):
        request = urllib.request.Request(f"{site}/api/runs", method=method, data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == status, method


# --------------------------------------------------------------------------------------------------
# in the browser


def test_dashboard_lists_runs_with_outcome_and_the_failed_runs_reason(
    page: Any, site: str, seeded: Seeded
) -> None:
    page.goto(site + "/")
    bad = page.locator(f"tr.run[data-run='{seeded.bad_run}']")
    assert bad.locator("td").nth(4).inner_text() == "failed"
    assert "deploy_staging: shop-staging exited with code 3" in bad.inner_text()
    assert BAD_SHA[:12] in bad.inner_text() and "alice" in bad.inner_text()
    good = page.locator(f"tr.run[data-run='{seeded.good_run}']")
    assert good.locator("td").nth(4).inner_text() == "succeeded"
    assert "Metrics" in page.locator("#metrics").inner_text()


def test_run_page_shows_the_timeline_gates_and_evidence(page: Any, site: str, seeded: Seeded) -> None:
    page.goto(site + "/")
    page.click(f"tr.run[data-run='{seeded.bad_run}'] a")
    assert page.url.endswith(f"/runs/{seeded.bad_run}")
    timeline = page.locator("#timeline")
    assert "development → deploy-staging: failed" in timeline.inner_text()
    failing = page.locator("tr.check[data-gate='deploy_staging']")
    assert failing.locator("td").nth(1).inner_text() == "fail"
    assert "fatal: cannot open the database" in failing.locator("pre.evidence").inner_text()
    assert failing.locator("td").nth(3).inner_text().startswith(BAD_SHA[:12])


def test_dashboard_filters_runs_by_outcome(page: Any, site: str, seeded: Seeded) -> None:
    page.goto(site + "/")
    page.select_option("select[name=outcome]", "failed")
    page.click("form.filters button")
    page.wait_for_url("**outcome=failed**")
    assert page.locator("tr.run").count() == 1
    assert page.locator("tr.run").get_attribute("data-run") == str(seeded.bad_run)


def test_releases_page_says_what_ran_from_when_to_when(page: Any, site: str, seeded: Seeded) -> None:
    page.goto(site + "/releases")
    row = page.locator(f"tr.release[data-release='{seeded.release}']")
    text = row.inner_text()
    assert GOOD_SHA[:12] in text and "now" in text and "ci-bot" in text


def test_dashboard_escapes_what_users_wrote(
    page: Any, workspace: Workspace, store: Store, free_port: Callable[[], int]
) -> None:
    """An actor or reason is text, never markup: a <script> in it must show as written and not run."""
    evil = "<img src=x onerror=\"document.title='owned'\">"
    store.create_run("demo", GOOD_SHA, evil, "development")
    with dashboard(free_port(), str(workspace.config_path)) as url:
        page.goto(url + "/")
        assert evil in page.locator("tr.run").first.inner_text()
        assert page.title() != "owned" and page.locator("tr.run img").count() == 0


def test_dora_charts_show_each_days_deploys_and_the_failure_rate(
    page: Any, cli: Cli, workspace: Workspace, store: Store, free_port: Callable[[], int]
) -> None:
    """Two deploys two days ago, one today and a failure in prod today: two bars of deploys (2 and 1),
    and the failure rate in words, for today (1 of 2) and over the window (1 of 4), as `metrics` says it."""
    runs = [store.create_run("demo", GOOD_SHA, "ci", "deploy-staging").id for _ in range(4)]
    for run in runs[:2]:
        backdate(store, promote_to_prod(store, run), timedelta(days=2))
    promote_to_prod(store, runs[2])
    promote_to_prod(store, runs[3], fail_in_prod=True)
    expected = cli("metrics", "demo", as_json=True).ok()["apps"]["demo"]
    assert expected["deployment_frequency"]["days_with_deployments"] == 2
    today = datetime.now(UTC).date()

    with dashboard(free_port(), str(workspace.config_path)) as url:
        page.goto(url + "/")
        app = page.locator("#metrics .dora-app[data-app='demo']")
        bars = app.locator("svg.deploys rect.bar")
        assert bars.count() == expected["deployment_frequency"]["days_with_deployments"]
        drawn = {
            bars.nth(i).get_attribute("data-day"): bars.nth(i).locator("title").text_content()
            for i in range(2)
        }
        assert drawn == {
            (today - timedelta(days=2)).isoformat(): f"{today - timedelta(days=2)}: 2 deploys",
            today.isoformat(): f"{today}: 1 deploy",
        }
        rate = app.locator("li.change-failure-rate").inner_text()
        assert rate.startswith("Change failure rate: 25% (1 of 4")
        failure_bar = app.locator(f"svg.failure-rate rect.bar[data-day='{today}'] title")
        assert failure_bar.text_content() == f"{today}: 50% failed (1 of 2)"
        svg = app.locator("svg.deploys")
        assert svg.get_attribute("role") == "img"
        title_id = svg.get_attribute("aria-labelledby").split()[0]
        assert page.locator(f"[id='{title_id}']").text_content() == "demo: deploys to prod per day"
        # The numbers in words, for whoever cannot see the drawing.
        app.locator("figure[data-chart='deploys'] details summary").click()
        assert "2 deploys" in app.locator("figure[data-chart='deploys'] details table").inner_text()
