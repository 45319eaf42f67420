"""The installed console script, run as a real process: the one thing CliRunner cannot prove.

CliRunner calls the click group directly; a CI pipeline runs ``orchestrator`` from PATH, where a broken
entry point, a stray print, or logs on stdout would corrupt ``--json`` for every caller.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Workspace


def orchestrator_script() -> Path:
    """The script next to this interpreter (the venv's bin/), else the one on PATH."""
    candidate = Path(sys.executable).with_name("orchestrator")
    if candidate.is_file():
        return candidate
    found = shutil.which("orchestrator")
    if found is None:
        pytest.fail("the 'orchestrator' console script is not installed: pip install -e '.[dev]'")
    return Path(found)


def run_script(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(orchestrator_script()), *args],
        cwd=workspace.path,
        env=dict(os.environ),  # the workspace's ORCH_DATABASE_URL, and no other ORCH_* variable
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_console_script_json_stdout_is_one_object_and_logs_go_to_stderr(workspace: Workspace) -> None:
    proc = run_script(workspace, "run", "start", "--app", "demo", "--sha", workspace.repo.sha, "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # the whole of stdout, not its first line
    assert isinstance(payload, dict)
    assert (payload["app"], payload["sha"], payload["state"]) == ("demo", workspace.repo.sha, "development")

    # Off a TTY the logs are JSON lines on stderr, carrying the bound context.
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    started = [e for e in events if e.get("event") == "run_started"]
    assert len(started) == 1
    assert (started[0]["run_id"], started[0]["app"], started[0]["sha"]) == (
        payload["run_id"],
        "demo",
        workspace.repo.sha,
    )


def test_console_script_error_exit_code_and_json(workspace: Workspace) -> None:
    proc = run_script(workspace, "run", "start", "--app", "demo", "--sha", "HEAD", "--json")
    assert proc.returncode == 2, proc.stderr
    payload = json.loads(proc.stdout)
    assert (payload["error"], payload["exit_code"]) == ("bad_input", 2)
    assert "is not a full commit sha" in payload["message"]
    assert "Traceback" not in proc.stderr
