"""httpclient.probe: the GET that health checks, /version and the proxy's takeover send to an app the
orchestrator runs. It goes straight to the app's port (never through a proxy the environment names),
answers as ``request`` did (statuses, redirects, body limit, "nothing answered" with its cause), and
does not load urllib.request. A local HTTP server stands in for the app: this is about our client."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

from orchestrator import httpclient


class _App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        routes = {
            "/health": (200, {}, b"ok" * 100),
            "/down": (503, {}, b"starting"),
            "/moved": (302, {"Location": "/health?from=moved"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
        }
        status, headers, body = routes.get(self.path.split("?")[0], (404, {}, b"no"))
        self.send_response(status)
        for name, value in {**headers, "X-Seen-Path": self.path, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_of_any_status_comes_back_with_its_body_and_headers(app: str) -> None:
    ok = httpclient.probe(f"{app}/health", limit=6)
    assert ok.ok and ok.status == 200 and ok.body == b"okokok" and ok.header("x-seen-path") == "/health"
    down = httpclient.probe(f"{app}/down")
    assert down.status == 503 and not down.ok and down.text == "starting"


def test_redirects_are_followed_and_a_loop_ends(app: str) -> None:
    moved = httpclient.probe(f"{app}/moved")
    assert moved.status == 200 and moved.header("X-Seen-Path") == "/health?from=moved"
    loop = httpclient.probe(f"{app}/loop")
    assert loop.status is None and loop.error is not None and "redirects" in loop.error


def test_nothing_listening_is_no_status_with_the_cause() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        answer = httpclient.probe(f"http://127.0.0.1:{port}/health", timeout=1.0)
    assert answer.status is None and answer.error is not None
    assert answer.error.startswith("ConnectionRefusedError")


def test_a_proxy_named_in_the_environment_is_not_used(app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner's HTTP_PROXY without NO_PROXY: urllib would send the app's health check to the proxy
    (here a closed port, refusing), which cannot reach this machine's loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, dead_proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert httpclient.probe(f"{app}/health").status == 200
        assert httpclient.request(f"{app}/health").status is None, "urllib did go through the proxy"


def test_a_probe_does_not_load_urllib_request() -> None:
    code = (
        "import sys, socket\n"
        "from orchestrator import health\n"
        "health.get('http://127.0.0.1:9/health', timeout=0.5)\n"
        "print('urllib.request' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]
