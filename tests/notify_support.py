"""A webhook receiver on 127.0.0.1 for the notification tests (unit and real-engine alike): it records
every JSON body POSTed to it and answers as its mode says."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """A webhook receiver: ``mode`` is ok (200), error (500), notfound (404) or hang (never answers)."""

    mode: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        # The path stands for a webhook's secret token: it must never appear in logs or events.
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/SECRET-TOKEN-{self.mode}"

    def bodies(self) -> list[dict[str, Any]]:
        return [r["json"] for r in self.requests]

    def stop(self) -> None:
        self.release.set()
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def start_receiver(mode: str = "ok") -> Receiver:
    receiver = Receiver(mode)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            receiver.requests.append(
                {"path": self.path, "type": self.headers.get("Content-Type"), "json": json.loads(body)}
            )
            if receiver.mode == "hang":
                receiver.release.wait(30)
                return
            status = {"ok": 200, "error": 500, "notfound": 404}[receiver.mode]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.server = server
    # shutdown() waits for the loop to look up: every 0.5 s by default, per receiver, per test.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return receiver
