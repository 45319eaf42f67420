"""The dashboard against a real deployment (issue 13): an app promoted to prod on the real engine, then
a failed promotion of a broken commit; a person opening the dashboard in chromium sees the revision
that really runs in prod (read from the container, as `status` reads it) and why the second run failed.
The API's /api/status is the CLI's `status --json`.
"""

from __future__ import annotations

import json
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
