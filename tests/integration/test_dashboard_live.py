"""The dashboard against a real deployment (issue 13): an app promoted to prod on the real engine, then
a failed promotion of a broken commit; a person opening the dashboard in chromium sees the revision
that really runs in prod (read from the container, as `status` reads it) and why the second run failed.
The API's /api/status is the CLI's `status --json`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from dashboard_support import dashboard

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker


def test_dashboard_shows_the_running_revision_and_a_failed_runs_reason(
    busybox_app: BusyboxApp, page: Any, free_port: Callable[[], int]
) -> None:
    app = busybox_app
    good = app.commit("release")
    app.deploy(good)
    broken = app.commit("broken", health=False)
    failed_run = app.start(broken)
    assert app.advance(failed_run, "deploy-staging").exit_code == 1
    recorded = app.show(failed_run)["transitions"][-1]
    assert recorded["outcome"] == "failed"

    with dashboard(free_port(), str(app.workspace.config_path)) as url:
        page.goto(url + "/")
        prod = page.locator(f"#environments tr[data-app='{app.name}'][data-env='prod']")
        assert prod.locator("td.running-revision").inner_text() == good
        assert "healthy" in prod.inner_text()
        row = page.locator(f"tr.run[data-run='{failed_run}']")
        assert row.locator("td").nth(4).inner_text() == "failed"
        assert recorded["reason"].splitlines()[0] in row.inner_text()

        with urllib.request.urlopen(f"{url}/api/status?app={app.name}", timeout=60) as response:
            api = json.loads(response.read())
    cli = app.cli("--config", str(app.workspace.config_path), "status", app.name, as_json=True).payload
    assert api == cli


def test_rolling_prod_back_from_the_dashboard_needs_the_token(
    busybox_app: BusyboxApp, page: Any, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's rollback is `orchestrator rollback` on the real engine: without the right token prod
    keeps its container; with it (the dashboard's button) prod runs the previous release again."""
    app = busybox_app
    first = app.commit("first")
    app.deploy(first)
    second = app.commit("second")
    app.deploy(second)
    before = app.running("prod")
    assert before is not None and before.revision == second
    token = "t" * 32
    monkeypatch.setenv("ORCH_API_TOKEN", token)

    with dashboard(free_port(), str(app.workspace.config_path)) as url:
        refused = urllib.request.Request(
            f"{url}/api/apps/{app.name}/prod/rollback",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + "u" * 32},
        )
        with pytest.raises(urllib.error.HTTPError) as wrong:
            urllib.request.urlopen(refused, timeout=60)
        assert wrong.value.code == 401
        assert app.running("prod") == before, "a refused request changes nothing on the engine"

        page.goto(url + "/")
        page.fill("#api-token input[name=token]", token)
        page.fill("#api-token input[name=actor]", "erin")
        page.click("#api-token button[type=submit]")
        page.on("dialog", lambda dialog: dialog.accept())
        row = page.locator(f"#environments tr[data-app='{app.name}'][data-env='prod']")
        with page.expect_navigation(timeout=120_000):
            row.locator("form.rollback button").click()
        row = page.locator(f"#environments tr[data-app='{app.name}'][data-env='prod']")
        assert row.locator("td.running-revision").inner_text() == first
        assert "rollback" in row.inner_text()

    after = app.running("prod")
    assert after is not None and after.revision == first and after.container_id != before.container_id
    (latest, *_) = app.cli("releases", app.name, "--env", "prod", as_json=True).ok()["releases"]
    assert (latest["kind"], latest["revision"], latest["actor"]) == ("rollback", first, "api:erin")
