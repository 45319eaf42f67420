"""Health polling against a real HTTP server on loopback (no Docker needed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.health import wait_healthy


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first ``healthy_after`` requests, then 200."""

    healthy_after = 0
    served = 0

    def do_GET(self) -> None:
        type(self).served += 1
        ok = type(self).served > self.healthy_after
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"warming up")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[tuple[ThreadingHTTPServer, type[_Flaky]]]:
    handler = type("Handler", (_Flaky,), {"served": 0, "healthy_after": 5})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, handler
    srv.shutdown()
    srv.server_close()


def test_becomes_healthy_on_the_first_green_poll(server: tuple[ThreadingHTTPServer, type[_Flaky]]) -> None:
    srv, _ = server
    report = wait_healthy(f"http://127.0.0.1:{srv.server_port}/health", timeout=30, interval=0.01)
    assert report.healthy
    # Every poll is recorded and the first 200 ends the wait: no extra tries, no trailing sleep.
    assert report.seen == {"503": 5, "200": 1}
    assert report.attempts == 6


def test_never_healthy_reports_what_it_saw(server: tuple[ThreadingHTTPServer, type[_Flaky]]) -> None:
    srv, handler = server
    handler.healthy_after = 3600
    report = wait_healthy(f"http://127.0.0.1:{srv.server_port}/health", timeout=0.4, interval=0.05)
    assert not report.healthy
    assert report.last is not None and report.last.status == 503 and report.last.body == "warming up"
    assert "not healthy" in report.reason and "HTTP 503" in report.reason
    assert report.details()["seen"]["503"] == report.attempts


def test_connection_refused_and_dead_container_stop_early() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    asked: list[int] = []

    def watch() -> str | None:
        asked.append(1)
        return "exited with code 3" if len(asked) >= 3 else None

    report = wait_healthy(
        f"http://127.0.0.1:{port}/health", timeout=30, interval=0.01, watch=watch, watch_every_s=0
    )
    assert not report.healthy
    assert report.container_failure == "exited with code 3"
    assert report.reason.startswith("container exited with code 3 before"), report.reason
    # Watched on every failed poll (watch_every_s=0) and stopped at the third: long before the 30 s.
    assert report.attempts == 3 and len(asked) == 3
    assert report.last is not None and report.last.error and "Refused" in report.last.error
    assert not report.answered, "nothing answered HTTP on the port"
    assert report.details()["container_failure"] == "exited with code 3"
