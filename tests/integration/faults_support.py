"""Helpers for test_faults.py: the orchestrator as a real OS process, and the Docker engine restarted.

A CliRunner runs the CLI inside pytest's own process, which cannot be SIGKILLed halfway through an edge
and survive to check the result; so every command whose death matters runs as ``python -m orchestrator``
in the test's workspace (its orchestrator.toml, its database through ORCH_DATABASE_URL), with structlog
JSON on stderr. The crash itself comes from the documented test hook ORCH_TEST_CRASH_AT (see
orchestrator/steps.py): the process signals itself at a named step boundary.

test_faults.py also loads this module as a pytest plugin (``pytest_plugins``): it registers the
``engine_restart`` marker and moves the test that restarts dockerd to the end of the session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ORCHESTRATOR = (sys.executable, "-m", "orchestrator")
# Generous: a whole edge takes seconds here; this only turns a hang into a failure with the output.
COMMAND_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Proc:
    """One finished orchestrator process: its argv, exit status and output (``payload``: the single
    JSON object --json promises, or None when stdout is not one)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def payload(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError:
            return None

    def describe(self) -> str:
        return (
            f"orchestrator {' '.join(self.argv)} -> {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    def ok(self) -> Any:
        assert self.returncode == 0, self.describe()
        payload = self.payload
        assert isinstance(payload, dict), self.describe()
        return payload


@dataclass
class Orchestrator:
    """Runs the orchestrator CLI as a child process in ``cwd`` (where orchestrator.toml is), with the
    ORCH_* variables the test set (ORCH_DATABASE_URL via the workspace fixture), JSON logs, and no crash
    hook unless asked for."""

    cwd: Path

    def env(self, crash_at: str | None = None, crash_signal: str | None = None) -> dict[str, str]:
        env = {**os.environ, "ORCH_LOG_FORMAT": "json"}
        env.pop("ORCH_TEST_CRASH_AT", None)
        env.pop("ORCH_TEST_CRASH_SIGNAL", None)
        if crash_at is not None:
            env["ORCH_TEST_CRASH_AT"] = crash_at
        if crash_signal is not None:
            env["ORCH_TEST_CRASH_SIGNAL"] = crash_signal
        return env

    def argv(self, *args: str | int) -> tuple[str, ...]:
        return tuple(str(a) for a in args)

    def run(
        self,
        *args: str | int,
        crash_at: str | None = None,
        crash_signal: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        argv = self.argv(*args)
        proc = subprocess.run(
            [*ORCHESTRATOR, *argv],
            cwd=self.cwd,
            env={**self.env(crash_at, crash_signal), **(env or {})},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        return Proc(argv, proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str | int, env: Mapping[str, str] | None = None) -> Running:
        """Start a command without waiting for it (stdout/stderr go to files, so a long edge cannot
        block on a full pipe)."""
        argv = self.argv(*args)
        out = self.cwd / f"proc-{time.monotonic_ns()}"
        stdout, stderr = out.with_suffix(".out").open("w"), out.with_suffix(".err").open("w")
        popen = subprocess.Popen(
            [*ORCHESTRATOR, *argv],
            cwd=self.cwd,
            env={**self.env(), **(env or {})},
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        stdout.close()
        stderr.close()
        return Running(argv, popen, out.with_suffix(".out"), out.with_suffix(".err"))

    # the commands the tests use -------------------------------------------------------------------

    def start_run(self, app: str, sha: str) -> int:
        return int(self.run("run", "start", "--app", app, "--sha", sha, "--json").ok()["run_id"])

    def advance(self, run_id: int, to: str, **kwargs: Any) -> Proc:
        return self.run("advance", run_id, "--to", to, "--json", **kwargs)

    def deploy(self, app: str, sha: str) -> int:
        """A new run of ``sha`` through both edges, each exiting 0."""
        run_id = self.start_run(app, sha)
        for to in ("deploy-staging", "deploy"):
            result = self.advance(run_id, to).ok()
            assert (result["state"], result["outcome"]) == (to, "succeeded"), result
        return run_id

    def show(self, run_id: int) -> dict[str, Any]:
        return self.run("runs", "show", run_id, "--json").ok()  # type: ignore[no-any-return]

    def status(self, app: str) -> dict[str, Any]:
        return self.run("status", app, "--json").ok()  # type: ignore[no-any-return]

    def locks(self) -> list[dict[str, Any]]:
        return list(self.run("locks", "--json").ok()["locks"])

    def recover(self, app: str | None = None) -> list[dict[str, Any]]:
        args = ("recover", app, "--json") if app else ("recover", "--json")
        return list(self.run(*args).ok()["recovered"])


@dataclass
class Running:
    argv: tuple[str, ...]
    popen: subprocess.Popen[str]
    stdout_path: Path
    stderr_path: Path

    def wait(self, timeout: float = COMMAND_TIMEOUT_S) -> Proc:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"orchestrator {' '.join(self.argv)} did not finish:\n{self.output()}"
            ) from None
        return Proc(
            self.argv,
            self.popen.returncode,
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """Teardown for a test that failed while this was still running: kill it (our own child)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()


def wait_until(
    what: str, check: Callable[[], bool], *, running: Running | None, limit_s: float = 120.0
) -> None:
    """Poll ``check`` until it holds; fail (never hang) if it does not within ``limit_s`` or the process
    being watched exits first. The limit is a safety net, not an assertion about speed."""
    deadline = time.monotonic() + limit_s
    while not check():
        if running is not None and running.popen.poll() is not None:
            raise AssertionError(
                f"{what}: orchestrator exited ({running.popen.returncode}) first:\n{running.output()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {limit_s:g} s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# restarting the Docker engine

ENGINE_RESTART = "engine_restart"
DOCKER_PIDFILE = Path("/var/run/docker.pid")
BOOTSTRAP = Path(__file__).resolve().parents[2] / "scripts" / "bootstrap.sh"


def restarts_engine(test: Callable[..., None]) -> Callable[..., None]:
    """Decorator for a test that restarts dockerd: it gets the ``engine_restart`` marker (so ``-m "not
    engine_restart"`` leaves it out) and runs after every other test of the session. A plain attribute
    rather than ``@pytest.mark``: this plugin registers the marker only once test_faults.py is imported,
    after its decorators have run."""
    test.restarts_engine = True  # type: ignore[attr-defined]
    return test


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{ENGINE_RESTART}: restarts dockerd, which stops every container on the engine; runs last in "
        "the session",
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart the engine run after every other test of the session (a stable sort: the
    rest keep their order), so no other test's containers are running when dockerd goes down."""
    for item in items:
        if getattr(getattr(item, "function", None), "restarts_engine", False):
            item.add_marker(ENGINE_RESTART)
    items.sort(key=lambda item: item.get_closest_marker(ENGINE_RESTART) is not None)


def stop_dockerd() -> None:
    """SIGTERM the running dockerd (as an operator or a package upgrade would) and wait until it is gone.

    dockerd 20.10 keeps serving connections it already has while it stops containers (10 s for an app
    whose PID 1 ignores SIGTERM): a runner holding a pooled connection still gets answers until the
    daemon exits. Only then is the engine really unreachable."""
    pid = int(DOCKER_PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    wait_until("dockerd exits", lambda: process_state(pid) in (None, "Z"), running=None)


def start_dockerd() -> None:
    """Bring the engine back exactly as scripts/bootstrap.sh does (its ensure_docker waits for the old
    daemon to exit, clears stale pid files and starts dockerd until `docker info` answers).

    In a session of its own: the daemon it starts must not belong to pytest's process group, or
    whatever ends that group (``timeout``, a CI job's cleanup) would SIGKILL the engine with it."""
    proc = subprocess.run(
        ["bash", "-c", 'source "$1" && ensure_docker', "bootstrap", str(BOOTSTRAP)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"bootstrap's ensure_docker failed:\n{proc.stdout}\n{proc.stderr}"


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, T for stopped, Z for a zombie), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def freeze(running: Running) -> None:
    """SIGSTOP our own child and wait until the kernel has stopped it: it makes no call until thawed."""
    running.popen.send_signal(signal.SIGSTOP)
    wait_until(
        "the orchestrator is stopped", lambda: process_state(running.popen.pid) == "T", running=running
    )


def thaw(running: Running) -> None:
    running.popen.send_signal(signal.SIGCONT)
