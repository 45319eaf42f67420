"""`orchestrator serve`: the orchestrator's own HTTP face.

Minimal on purpose: ``/health`` and ``/version`` are what the orchestrator's own gates need to deploy
the orchestrator itself (health path, served revision). Standard library only, so the image needs
nothing beyond the package.

Hardened like any listener: every response says ``X-Content-Type-Options: nosniff`` (a browser must
not guess a script out of a JSON or text body); ``Server`` names the product only (the standard
library would add ``Python/3.x.y``, telling a scanner which CVEs to try); and a connection that sends
nothing is dropped after ``IDLE_TIMEOUT_S``, so idle sockets cannot hold the server's threads forever.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Each read on a connection (the request line, a header line) must arrive within this many seconds.
IDLE_TIMEOUT_S = 5.0


def revision() -> str:
    """The commit this process was built from: the Dockerfile bakes GIT_SHA into ORCH_REVISION."""
    return os.environ.get("ORCH_REVISION", "").strip() or "unknown"


class _Handler(BaseHTTPRequestHandler):
    # StreamRequestHandler applies it to the socket; a read that times out closes the connection.
    timeout = IDLE_TIMEOUT_S
    # A request line too malformed to name a version would otherwise be answered HTTP/0.9 style: a
    # bare body without status line or headers (nosniff included). No client speaks 0.9 any more.
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        return "orchestrator"

    def end_headers(self) -> None:
        # Here rather than in _send so that the standard library's own error pages carry it too.
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, "application/json", json.dumps({"status": "ok"}))
        elif path == "/version":
            self._send(200, "text/plain; charset=utf-8", revision() + "\n")
        else:
            self._send(404, "application/json", json.dumps({"error": "not found", "path": path}))

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # keep request noise out of stderr logs
        return


def make_server(host: str, port: int, *, idle_timeout_s: float = IDLE_TIMEOUT_S) -> ThreadingHTTPServer:
    handler = type("_Handler", (_Handler,), {"timeout": idle_timeout_s})
    return ThreadingHTTPServer((host, port), handler)
