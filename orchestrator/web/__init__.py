"""`orchestrator serve`: the orchestrator's own HTTP face.

``/health`` and ``/version`` are what the orchestrator's own gates need to deploy the orchestrator
itself (health path, served revision); the dashboard and the read-only JSON API under ``/api/`` are a
Flask application (orchestrator/web/app.py) with Jinja2 templates, which escape what they show.

The listener stays the standard library's, hardened and tested (tests/unit/test_web_hardening.py), with
Flask plugged in through WSGI: every response says ``X-Content-Type-Options: nosniff`` (a browser must
not guess a script out of a JSON or text body); ``Server`` names the product only (the standard library
would add ``Python/3.x.y``, telling a scanner which CVEs to try); a connection that sends nothing is
dropped after ``IDLE_TIMEOUT_S``, so idle sockets cannot hold the server's threads forever; and only
GET, HEAD and POST reach the application, anything else is 501. POST is for the token-protected
actions of web/actions.py; the application answers 405 to a POST anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from wsgiref.handlers import SimpleHandler

# Each read on a connection (the request line, a header line) must arrive within this many seconds.
IDLE_TIMEOUT_S = 5.0
SERVER_NAME = "orchestrator"
NOSNIFF = ("X-Content-Type-Options", "nosniff")
METHODS = ("GET", "HEAD", "POST")

WsgiApp = Callable[..., Any]


def revision() -> str:
    """The commit this process was built from: the Dockerfile bakes GIT_SHA into ORCH_REVISION."""
    return os.environ.get("ORCH_REVISION", "").strip() or "unknown"


class _WsgiHandler(SimpleHandler):
    """wsgiref's response writer, naming the product only, and with nosniff on its own 500 page."""

    server_software = SERVER_NAME
    http_version = "1.0"
    # wsgiref would copy the whole process environment (tokens, database URLs) into every request.
    os_environ: dict[str, str] = {}  # noqa: RUF012 - wsgiref's own attribute
    error_headers = [("Content-Type", "text/plain"), NOSNIFF]  # noqa: RUF012 - wsgiref's own attribute

    def log_exception(self, exc_info: Any) -> None:
        from orchestrator.logging import get_logger

        get_logger().error("request_failed", exc_info=exc_info)


def _with_nosniff(app: WsgiApp) -> WsgiApp:
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [h for h in headers if h[0].lower() not in ("x-content-type-options", "server")]
            return start_response(status, [*headers, NOSNIFF], exc_info)

        return app(environ, start)

    return wrapped


class _Handler(BaseHTTPRequestHandler):
    # StreamRequestHandler applies it to the socket; a read that times out closes the connection.
    timeout = IDLE_TIMEOUT_S
    # A request line too malformed to name a version would otherwise be answered HTTP/0.9 style: a
    # bare body without status line or headers (nosniff included). No client speaks 0.9 any more.
    default_request_version = "HTTP/1.0"
    app: WsgiApp

    def version_string(self) -> str:
        return SERVER_NAME

    def end_headers(self) -> None:
        # Here rather than in _send so that the standard library's own error pages carry it too.
        self.send_header(*NOSNIFF)
        super().end_headers()

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except TimeoutError:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        if self.command not in METHODS:
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        handler = _WsgiHandler(
            self.rfile, self.wfile, self.get_stderr(), self._environ(), multithread=True, multiprocess=False
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.app)
        self.close_connection = True

    def _environ(self) -> dict[str, str]:
        from wsgiref.simple_server import WSGIRequestHandler

        # wsgiref's request handler knows how to turn a parsed request into a WSGI environ.
        environ: dict[str, str] = WSGIRequestHandler.get_environ(self)  # type: ignore[arg-type]
        environ["SERVER_SOFTWARE"] = SERVER_NAME
        return environ

    def get_stderr(self) -> Any:
        import sys

        return sys.stderr

    def log_message(self, format: str, *args: object) -> None:  # keep request noise out of stderr logs
        return


def make_server(
    host: str,
    port: int,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    app: WsgiApp | None = None,
) -> ThreadingHTTPServer:
    """The hardened listener serving ``app`` (default: the dashboard with no config, /health and
    /version only needing nothing)."""
    if app is None:
        from orchestrator.web.app import create_app

        app = create_app()
    handler = type(
        "_Handler", (_Handler,), {"timeout": idle_timeout_s, "app": staticmethod(_with_nosniff(app))}
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    # What wsgiref's WSGIServer.setup_environ would give every request.
    server.base_environ = {  # type: ignore[attr-defined]
        "SERVER_NAME": host,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PORT": str(server.server_port),
        "REMOTE_HOST": "",
        "CONTENT_LENGTH": "",
        "SCRIPT_NAME": "",
    }
    return server
