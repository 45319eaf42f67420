"""Telling a dead or restarted container from a slow one while waiting for health (pure: ContainerInfo
values as the engine reports them, no Docker), and the wait that stops on it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.docker_engine import ContainerInfo
from orchestrator.health import container_failure, wait_healthy

STARTED = "2026-01-01T10:00:00.000000001Z"


def info(
    status: str = "running", *, restarts: int = 0, exit_code: int | None = 0, started: str = STARTED
) -> ContainerInfo:
    return ContainerInfo(
        "c1",
        "shop-prod",
        "sha256:img",
        status,
        exit_code=exit_code,
        restart_count=restarts,
        started_at=started,
    )


def test_a_running_container_that_was_not_restarted_is_fine() -> None:
    assert container_failure(info(), info()) is None
    assert container_failure(info("created", started="0001-01-01T00:00:00Z"), info()) is None


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (None, "was removed"),
        (info("exited", exit_code=3), "exited with code 3"),
        (info("dead", exit_code=137), "exited with code 137"),
        (info("exited", exit_code=None), "exited"),
        # Prod's restart policy: the engine is about to start it again; the exit code is still there.
        (
            info("restarting", restarts=1, exit_code=3),
            "exited with code 3 and is being restarted by the engine (restart 1)",
        ),
        # Already running again: the engine reset its exit code, but the count gives the crash away.
        (info(restarts=2, started="2026-01-01T10:00:01Z"), "was restarted by the engine 2 times"),
        (info(restarts=1, started="2026-01-01T10:00:01Z"), "was restarted by the engine 1 time"),
        # A restart the count does not show (``docker restart`` resets nothing but the start time).
        (info(started="2026-01-01T10:00:05Z"), "was restarted (started again at 2026-01-01T10:00:05Z)"),
    ],
    ids=[
        "removed",
        "exited",
        "dead",
        "exited-no-code",
        "restarting",
        "restarted-twice",
        "restarted-once",
        "started-again",
    ],
)
def test_exit_and_restart_are_failures_with_their_cause(now: ContainerInfo | None, expected: str) -> None:
    assert container_failure(info(), now) == expected


def test_restarts_before_the_wait_began_are_not_held_against_it() -> None:
    """The baseline is the container as the wait found it: a container recovery finds already restarted
    (engine restart) fails only if it restarts again while we watch."""
    before = info(restarts=4, started="2026-01-01T09:00:00Z")
    assert container_failure(before, info(restarts=4, started="2026-01-01T09:00:00Z")) is None
    assert container_failure(before, info(restarts=5, started="2026-01-01T09:00:09Z")) is not None


class _Never(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def unhealthy_port() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Never)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_port
    srv.shutdown()
    srv.server_close()


def test_watch_is_asked_at_the_first_failed_poll_then_rate_limited(unhealthy_port: int) -> None:
    """The first look is immediate (a container that died at start ends the wait at once); after that
    the engine is asked at most every watch_every_s, not on every 10 ms poll."""
    asked: list[float] = []

    def watch() -> str | None:
        asked.append(time.monotonic())
        return None

    report = wait_healthy(
        f"http://127.0.0.1:{unhealthy_port}/health",
        timeout=0.5,
        interval=0.01,
        watch=watch,
        watch_every_s=0.2,
    )
    assert not report.healthy and report.container_failure is None
    assert report.answered, "HTTP 503 is an answer: something listens"
    assert 2 <= len(asked) <= 4, asked
    assert len(asked) < report.attempts
    assert "not healthy after" in report.reason


def test_nothing_listening_is_not_an_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = wait_healthy(f"http://127.0.0.1:{port}/health", timeout=0.2, interval=0.05)
    assert not report.healthy and not report.answered
