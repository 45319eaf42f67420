"""`orchestrator serve` as a listener on the network (issue 10, "Supply chain of the project itself").

Hazards: without ``X-Content-Type-Options: nosniff`` a browser may sniff a reflected body (the 404's
JSON echoes the path) into something it executes; ``Server: ... Python/3.x.y`` tells a scanner which
interpreter bugs to try; and a client that connects and sends nothing held a server thread for ever,
so a few hundred idle sockets starve it. Each test talks to the real ``orchestrator serve`` process
on 127.0.0.1:<free port>.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from orchestrator.web import IDLE_TIMEOUT_S

REVISION = "a" * 40


@pytest.fixture
def serve(free_port: Callable[[], int]) -> Iterator[int]:
    """``orchestrator serve`` on a free loopback port, as the image runs it; yields the port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "ORCH_REVISION": REVISION},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"orchestrator serve exited with {proc.returncode}: {proc.stderr.read()!r}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"orchestrator serve did not listen on 127.0.0.1:{port}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def request(port: int, method: str, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes as they are (for requests http.client refuses to send) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("GET", "/version", 200),
        ("GET", "/<script>", 404),
        ("POST", "/health", 405),
        ("PUT", "/health", 501),
    ],
)
def test_every_response_says_nosniff_and_names_no_python(
    serve: int, method: str, path: str, status: int
) -> None:
    """Our own responses and the standard library's error pages (501 for PUT) alike."""
    response = request(serve, method, path)
    assert response.status == status
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.getheader("Server") == "orchestrator"


@pytest.mark.parametrize("line", [b"GARBAGE", b"GET / HTTP/1.x", b"GET /<b> HTTP/1.1 extra"])
def test_malformed_request_lines_get_a_status_line_and_the_same_headers(serve: int, line: bytes) -> None:
    """The standard library answers a request line it cannot parse HTTP/0.9 style: a bare HTML body
    echoing the line, with no headers at all (so no nosniff)."""
    answer = raw_exchange(serve, line + b"\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.0 400 "), head
    assert "\r\nX-Content-Type-Options: nosniff\r\n" in head + "\r\n"
    assert "\r\nServer: orchestrator\r\n" in head and "Python" not in head


def test_version_still_serves_the_revision(serve: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", serve, timeout=10)
    conn.request("GET", "/version")
    assert conn.getresponse().read().decode().strip() == REVISION
    conn.close()


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nHost: x"], ids=["nothing", "half a request"])
def test_idle_connection_is_dropped_after_a_few_seconds(serve: int, sent: bytes) -> None:
    """The attack: connect and send nothing (or stop half way). Before the fix the server waited for
    ever; now it closes the connection after IDLE_TIMEOUT_S, and keeps serving others."""
    assert IDLE_TIMEOUT_S <= 10
    with socket.create_connection(("127.0.0.1", serve), timeout=IDLE_TIMEOUT_S + 10) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        try:
            closed = sock.recv(1024) == b""
        except TimeoutError:
            pytest.fail(f"the server still held an idle connection after {IDLE_TIMEOUT_S + 10:g} s")
        waited = time.monotonic() - started
    assert closed, "the server answered something instead of closing"
    assert IDLE_TIMEOUT_S - 1 <= waited <= IDLE_TIMEOUT_S + 3, waited
    assert request(serve, "GET", "/health").status == 200
