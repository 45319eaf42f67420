"""Webhook notifications for the outcomes only a real engine produces (issue 13): ``rolled_back`` from
`orchestrator rollback` of prod, and ``recovered`` from `orchestrator recover` after the runner of a
prod promotion was SIGKILLed mid-swap (prod left without a container). The receiver is the test's own,
on loopback; the kill is the documented test hook (ORCH_TEST_CRASH_AT) in a real child process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from faults_support import Orchestrator

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every JSON body POSTed to the receiver, in order; ORCH_NOTIFY_URLS points every orchestrator
    process of the test (in-process CLI and child processes alike) at it."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ORCH_NOTIFY_URLS", f"http://127.0.0.1:{server.server_address[1]}/hook")
    try:
        yield bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def events(bodies: list[dict[str, Any]], app: str) -> list[tuple[str, str | None]]:
    return [(b["event"], b["environment"]) for b in bodies if b["app"] == app]


def test_a_rollback_of_prod_is_announced_as_rolled_back(
    busybox_app: BusyboxApp, received: list[dict[str, Any]]
) -> None:
    app = busybox_app
    first = app.commit("one")
    app.deploy(first)
    second = app.deploy(app.commit("two"))
    received.clear()

    done = app.cli(
        "rollback", app.name, "--env", "prod", "--actor", "carol", "--reason", "two is slow", as_json=True
    )
    done.ok()
    assert app.running("prod") is not None and app.running("prod").revision == first  # type: ignore[union-attr]
    assert events(received, app.name) == [("rolled_back", "prod")]
    (body,) = received
    assert (body["actor"], body["sha"]) == ("carol", first)
    assert "two is slow" in (body["reason"] or "")
    assert body["run_id"] != second  # the run whose release prod runs again


def test_a_recovery_after_a_killed_runner_is_announced_as_recovered(
    busybox_app: BusyboxApp, received: list[dict[str, Any]]
) -> None:
    app = busybox_app
    app.deploy(app.commit("baseline"))
    orch = Orchestrator(app.workspace.path)
    run_id = orch.start_run(app.name, app.commit("killed mid-swap"))
    orch.advance(run_id, "deploy-staging").ok()
    received.clear()

    killed = orch.advance(run_id, "deploy", crash_at="after:prod_stop")
    assert killed.returncode == -9, killed.describe()
    assert app.running("prod") is None, "the kill left prod without a container"
    assert received == [], "a killed runner announces nothing"

    (report,) = app.cli("recover", app.name, "--actor", "dave", as_json=True).ok()["recovered"]
    assert app.running("prod") is not None
    assert events(received, app.name) == [("recovered", "prod")]
    (body,) = received
    assert (body["run_id"], body["transition_id"], body["actor"]) == (run_id, report["transition_id"], "dave")
    assert body["details"]["outcome"] == report["outcome"] == "aborted"
    assert "prod restored" in body["reason"]
