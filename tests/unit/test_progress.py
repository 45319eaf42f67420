"""Progress of long steps (orchestrator/progress.py): on a terminal a health wait shows its elapsed time
and its end; off a terminal nothing is added to the structured logs; --quiet shows nothing anywhere;
--verbose adds plain lines off a terminal. Real processes on a real pseudo-terminal and a real HTTP
server on loopback; the Docker steps (build output, push) are covered by
tests/integration/test_progress_tty.py."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from test_health import _Flaky  # the same warming-up server (503s, then 200)
from tty_support import run_argv_on_tty

from orchestrator import progress

# The CLI's choice of listener for stderr (cli/base.py), then a health wait.
WAIT = """
import sys
from orchestrator import progress
from orchestrator.health import wait_healthy
progress.install(progress.choose(sys.stderr, quiet={quiet}, verbose={verbose}))
report = wait_healthy({url!r}, timeout=30, interval=0.05)
print("healthy" if report.healthy else "unhealthy", report.attempts)
"""


@pytest.fixture
def url() -> Iterator[str]:
    handler = type("Handler", (_Flaky,), {"served": 0, "healthy_after": 8})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/health"
    srv.shutdown()
    srv.server_close()


def _script(url: str, *, quiet: bool = False, verbose: bool = False) -> list[str]:
    return [sys.executable, "-c", WAIT.format(url=url, quiet=quiet, verbose=verbose)]


def test_a_health_wait_on_a_terminal_shows_its_elapsed_time_and_its_end(url: str) -> None:
    shown = run_argv_on_tty(_script(url), stderr_on_tty=True)
    assert shown.exit_code == 0, shown
    assert "healthy 9" in shown.screen
    assert f"health: waiting for {url}: " in shown.screen and "of 30s" in shown.screen
    assert "last: 503" in shown.screen
    assert f"health | {url} healthy after" in shown.screen
    # Redrawn in place: the status line is erased, not left behind line after line.
    assert "\r\x1b[K" in shown.screen


def test_off_a_terminal_a_health_wait_adds_nothing(url: str) -> None:
    done = subprocess.run(_script(url), capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith("healthy")
    assert done.stderr == ""


def test_quiet_shows_nothing_even_on_a_terminal(url: str) -> None:
    shown = run_argv_on_tty(_script(url, quiet=True), stderr_on_tty=True)
    assert shown.exit_code == 0, shown
    assert "health" not in shown.screen.replace("healthy 9", "")


def test_verbose_off_a_terminal_prints_plain_lines(url: str) -> None:
    done = subprocess.run(_script(url, verbose=True), capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"health: waiting for {url}")
    assert lines[-1].startswith(f"health | {url} healthy after")
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    assert len(lines) == 2, "a status at most every few seconds, not one per poll"


def test_output_from_apps_cannot_drive_the_terminal() -> None:
    """Build output comes from the app's Dockerfile: an escape sequence in it is shown as text."""
    screen = io.StringIO()
    listener = progress.TerminalProgress(screen)
    listener.line("build", "Step 1/3 \x1b]0;owned\x07 done")
    listener.status("push", "layer \x1b[2J 10 MB")
    text = screen.getvalue()
    assert "\x1b]0;owned" not in text and "\\x1b]0;owned\\x07" in text
    assert "\x1b[2J" not in text and "\\x1b[2J" in text


def test_the_listener_the_cli_installs() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress.choose(Tty(), quiet=False, verbose=False), progress.TerminalProgress)
    assert isinstance(progress.choose(Tty(), quiet=True, verbose=False), progress.Silent)
    assert isinstance(progress.choose(io.StringIO(), quiet=False, verbose=False), progress.Silent)
    assert isinstance(progress.choose(io.StringIO(), quiet=False, verbose=True), progress.PlainProgress)
