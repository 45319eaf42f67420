"""The staging check step runs the stub (scripts/staging_check.py) inside the orchestrator's process:
same verdicts and output as the script run by an operator, still bounded by ORCH_STAGING_CHECK_TIMEOUT_S,
and a crash of the check is a failed check, never a pass."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.config import AppConfig, Settings
from orchestrator.errors import StepTimeout
from orchestrator.steps import StepLog
from orchestrator.steps import staging_check as step

SHA = "a" * 40


class _Handler(http.server.BaseHTTPRequestHandler):
    version = SHA

    def do_GET(self) -> None:
        body = {"/health": b"ok\n", "/version": type(self).version.encode()}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def app(tmp_path: Path) -> AppConfig:
    return AppConfig(name="shop", source=tmp_path, version_path="/version")


def script(base_url: str, sha: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(step.staging_check_script()), "--base-url", base_url]
    argv += ["--expected-revision", sha, "--version-path", "/version"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("sha", [SHA, "b" * 40], ids=["passes", "wrong-revision"])
def test_in_process_check_says_what_the_script_says(server: str, tmp_path: Path, sha: str) -> None:
    log = StepLog()
    found = step.run_staging_check(app(tmp_path), Settings(database_url="sqlite://"), log, server, sha)
    operator = script(server, sha)
    assert (found.ok, found.exit_code) == (operator.returncode == 0, operator.returncode)
    assert found.output == (operator.stdout + operator.stderr).strip()
    assert [(h.name, h.changes, h.failure) for h in log.recorded] == [
        ("staging_check", {"exit_code": found.exit_code}, None if found.ok else f"exit {found.exit_code}")
    ]


def test_a_check_that_never_answers_is_a_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = Settings(database_url="sqlite://", staging_check_timeout_s=0.3)
        with pytest.raises(StepTimeout, match="ORCH_STAGING_CHECK_TIMEOUT_S"):
            step.run_staging_check(app(tmp_path), settings, StepLog(), url, SHA)


def test_a_crashing_check_fails(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> tuple[int, str, str]:
        raise ValueError("the check itself broke")

    monkeypatch.setattr(step.load_stub(), "fetch", boom)
    found = step.run_staging_check(app(tmp_path), Settings(database_url="sqlite://"), StepLog(), server, SHA)
    assert (found.ok, found.exit_code) == (False, 1)
    assert "ValueError: the check itself broke" in found.output


def test_the_check_reaches_staging_directly_whatever_proxy_the_environment_names(server: str) -> None:
    """A CI runner's HTTP_PROXY without NO_PROXY: urllib sent the check of the runner's own loopback to
    the proxy (here a closed port), and a healthy staging failed its check."""
    import os

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
        env.update({"HTTP_PROXY": proxy, "http_proxy": proxy})
        argv = [sys.executable, str(step.staging_check_script()), "--base-url", server]
        argv += ["--expected-revision", SHA, "--version-path", "/version"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
