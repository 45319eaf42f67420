"""The staging check step: scripts/staging_check.py (the built-in stub) run against staging.

Operators run the script as a process; the orchestrator runs the very same ``main`` inside its own
process, in a worker thread it waits for at most ORCH_STAGING_CHECK_TIMEOUT_S: a second interpreter cost
more than the check itself (tens of milliseconds on every staging edge), and the stub uses only the
standard library with a per-request timeout, so a hang is bounded and a crash is reported as a failed
check with its exception, never taken for a pass.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from orchestrator.config import AppConfig, Settings
from orchestrator.errors import StepTimeout
from orchestrator.machine import STAGING
from orchestrator.steps import StepLog


@dataclass(frozen=True)
class StagingCheck:
    """How the staging check ended: its exit code (0 passes) and output, raw (the caller redacts it), and
    ``command``, the same check run as a process (scripts/staging_check.py with the same arguments)."""

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


_stub_lock = threading.Lock()


def load_stub() -> ModuleType:
    """The stub, with what it imports (argparse, http.client with email and ssl: 15-25 ms on a 2-core
    runner), loaded once per process by whichever thread asks first: the check itself, or the edge
    loading it ahead while it waits on the engine (service/advance.py ``load_ahead``)."""
    with _stub_lock:
        return _load_stub()


@functools.cache
def _load_stub() -> ModuleType:
    path = staging_check_script()
    spec = importlib.util.spec_from_file_location("orchestrator_staging_check_stub", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{path} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The stub's own limit per HTTP request; the whole check is bounded by ORCH_STAGING_CHECK_TIMEOUT_S.
_REQUEST_TIMEOUT_S = 5.0


def run_staging_check(
    app: AppConfig, settings: Settings, steps: StepLog, base_url: str, sha: str
) -> StagingCheck:
    """The check's output is returned raw: the caller redacts it before it is stored or printed."""
    limit = settings.staging_check_timeout_s
    args = [
        "--mode",
        "stub",
        "--base-url",
        base_url,
        "--expected-revision",
        sha,
        "--health-path",
        app.health_path,
        "--timeout",
        f"{min(_REQUEST_TIMEOUT_S, limit):g}",
    ]
    if app.version_path:
        args += ["--version-path", app.version_path]
    cmd = (sys.executable, str(staging_check_script()), *args)
    with steps.step("staging_check", STAGING) as step:
        out = io.StringIO()
        code: list[int] = []

        def check() -> None:
            try:
                code.append(load_stub().main(args, out=out))
            except SystemExit as exc:  # argparse refusing an argument
                code.append(exc.code if isinstance(exc.code, int) else 2)
            except Exception:
                out.write(traceback.format_exc())
                code.append(1)

        worker = threading.Thread(target=check, name="staging-check", daemon=True)
        worker.start()
        worker.join(limit)
        if not code:
            # A check that never answers says nothing about the commit: infrastructure, exit 4.
            raise StepTimeout(
                f"staging check did not finish within {limit:g} s (ORCH_STAGING_CHECK_TIMEOUT_S)"
            )
        returncode = code[0]
        step.changed(exit_code=returncode)
        if returncode != 0:
            step.fail(f"exit {returncode}")
    return StagingCheck(returncode == 0, returncode, out.getvalue().strip(), cmd)
