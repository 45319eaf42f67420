"""The staging check step: scripts/staging_check.py run against staging as a separate process, so a
check that hangs or crashes can be timed out and reported without taking the orchestrator with it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import AppConfig, Settings
from orchestrator.errors import StepTimeout
from orchestrator.machine import STAGING
from orchestrator.steps import StepLog


@dataclass(frozen=True)
class StagingCheck:
    ok: bool
    exit_code: int
    output: str
    command: tuple[str, ...]


def staging_check_script() -> Path:
    """scripts/staging_check.py from a source checkout, else the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "scripts" / "staging_check.py", here / "_scripts" / "staging_check.py"):
        if candidate.is_file():
            return candidate
    raise RuntimeError("scripts/staging_check.py is missing from this installation of orchestrator")


def run_staging_check(
    app: AppConfig, settings: Settings, steps: StepLog, base_url: str, sha: str
) -> StagingCheck:
    """The check's output is returned raw: the caller redacts it before it is stored or printed."""
    cmd = [
        sys.executable,
        str(staging_check_script()),
        "--mode",
        "stub",
        "--base-url",
        base_url,
        "--expected-revision",
        sha,
        "--health-path",
        app.health_path,
    ]
    if app.version_path:
        cmd += ["--version-path", app.version_path]
    limit = settings.staging_check_timeout_s
    with steps.step("staging_check", STAGING) as step:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            # A check that never answers says nothing about the commit: infrastructure, exit 4.
            raise StepTimeout(
                f"staging check did not finish within {limit:g} s (ORCH_STAGING_CHECK_TIMEOUT_S)"
            ) from None
        output = (proc.stdout + proc.stderr).strip()
        step.changed(exit_code=proc.returncode)
        if proc.returncode != 0:
            step.fail(f"exit {proc.returncode}")
    return StagingCheck(proc.returncode == 0, proc.returncode, output, tuple(cmd))
