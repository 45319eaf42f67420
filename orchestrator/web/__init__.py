"""`orchestrator serve`: the orchestrator's own HTTP face.

Minimal on purpose: ``/health`` and ``/version`` are what the orchestrator's own gates need to deploy
the orchestrator itself (health path, served revision). Standard library only, so the image needs
nothing beyond the package.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from orchestrator import __version__


def revision() -> str:
    """The commit this process was built from: the Dockerfile bakes GIT_SHA into ORCH_REVISION."""
    return os.environ.get("ORCH_REVISION", "").strip() or "unknown"


class _Handler(BaseHTTPRequestHandler):
    server_version = f"orchestrator/{__version__}"

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


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), _Handler)
