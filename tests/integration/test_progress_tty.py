"""Progress of a real deploy (issue 13, "Progress"): on a terminal the build's output and the health
waits are shown as they happen; off a terminal (CI) stderr carries the structured logs and nothing else;
--quiet shows no progress even on a terminal. The CLI runs as a process on a pseudo-terminal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from tty_support import run_on_tty

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker


def test_a_deploy_on_a_terminal_shows_the_build_output_and_the_health_waits(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    sha = app.commit("release")
    shown = run_on_tty("deploy", "--app", app.name, "--sha", sha, stderr_on_tty=True, timeout_s=600)
    screen = shown.screen
    assert shown.exit_code == 0, screen[-4000:]
    assert "build | " in screen, screen[-4000:]
    assert f"health | http://127.0.0.1:{app.staging_port}" in screen, screen[-4000:]
    assert f"health | http://127.0.0.1:{app.prod_port}" in screen, screen[-4000:]
    assert "healthy after" in screen


def test_off_a_terminal_a_deploy_shows_no_progress_only_structured_logs(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    sha = app.commit("release")
    result = app.cli("deploy", "--app", app.name, "--sha", sha)
    result.ok()
    assert "build | " not in result.stderr and "health | " not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no logs at all"
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_quiet_on_a_terminal_shows_no_progress(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    sha = app.commit("release")
    shown = run_on_tty(
        "--quiet", "deploy", "--app", app.name, "--sha", sha, stderr_on_tty=True, timeout_s=600
    )
    assert shown.exit_code == 0, shown.screen[-4000:]
    assert "build | " not in shown.screen and "health | " not in shown.screen
    assert "health: waiting" not in shown.screen
    assert "run " in shown.screen  # the result itself is printed as always
