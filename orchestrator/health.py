"""HTTP health polling against loopback.

The design this replaces slept 6 s between 10 tries, so a healthy container waited up to 6 s to be
noticed and a dead one cost a minute. We poll every ``interval`` (50 ms by default) until ``timeout``,
stop at once when the container has exited or been restarted, and on failure report what we actually
saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import httpclient, progress

if TYPE_CHECKING:
    from orchestrator.docker_engine import ContainerInfo

_BODY_LIMIT = 512


@dataclass(frozen=True)
class Probe:
    """One GET of a health URL: the status it answered (None when nothing answered, with the error), and the
    start of its body; ``ok`` is a 2xx."""

    status: int | None
    body: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class HealthReport:
    """How a health wait ended and what it saw on the way (attempts, time taken, the last answer, how many
    polls ended each way): ``details`` is the evidence a deploy records with its verdict."""

    url: str
    healthy: bool
    attempts: int
    elapsed_s: float
    last: Probe | None
    reason: str
    seen: dict[str, int] = field(default_factory=dict)
    # Why the container cannot become healthy (it exited, or the engine restarted it), when that is
    # what ended the wait; None when the wait ended on an answer or on the timeout.
    container_failure: str | None = None

    @property
    def answered(self) -> bool:
        """Whether anything answered HTTP at all (any status): if not, nothing listens on the port."""
        return any(key.isdigit() for key in self.seen)

    def details(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "attempts": self.attempts,
            "elapsed_s": round(self.elapsed_s, 4),
            "last_status": self.last.status if self.last else None,
            "last_body": self.last.body if self.last else None,
            "last_error": self.last.error if self.last else None,
            # How many polls ended each way ("200", "503", "ConnectionRefusedError"): the shape of a failure.
            "seen": self.seen,
            "container_failure": self.container_failure,
        }


def get(url: str, *, timeout: float = 2.0) -> Probe:
    answer = httpclient.probe(url, timeout=timeout, limit=_BODY_LIMIT)
    return Probe(answer.status, answer.text, answer.error)


def container_failure(before: ContainerInfo, now: ContainerInfo | None) -> str | None:
    """Why a container seen as ``before`` when the wait began can no longer become healthy, or None.

    An exit is the obvious case. The one that cost prod its health timeout is a restart: prod runs
    with restart policy ``unless-stopped``, so a release that crashes at start is brought back by the
    engine again and again and reads "restarting" or "running" depending on the moment we look. Any
    restart since ``before`` (RestartCount grew, the current run started at another time, or the engine
    says it is restarting) is that crash, seen late.
    """
    if now is None:
        return "was removed"
    if now.status in ("exited", "dead"):
        return f"exited with code {now.exit_code}" if now.exit_code is not None else "exited"
    if now.status == "removing":
        return "is being removed"
    restarts = now.restart_count - before.restart_count
    if now.status == "restarting":
        code = f" with code {now.exit_code}" if now.exit_code is not None else ""
        return f"exited{code} and is being restarted by the engine (restart {now.restart_count})"
    if restarts > 0:
        return f"was restarted by the engine {restarts} time{'s' if restarts > 1 else ''}"
    # The engine's zero time ("0001-01-01T00:00:00Z") means "never started yet", not a first run.
    if _started(before) and _started(now) and now.started_at != before.started_at:
        return f"was restarted (started again at {now.started_at})"
    return None


def _started(container: ContainerInfo) -> bool:
    return bool(container.started_at) and not str(container.started_at).startswith("0001-")


def wait_healthy(
    url: str,
    *,
    timeout: float,
    interval: float,
    watch: Callable[[], str | None] | None = None,
    watch_every_s: float = 0.1,
) -> HealthReport:
    """Poll ``url`` until it answers 2xx. ``watch`` says why the container cannot become healthy any
    more (it exited or was restarted; see container_failure) or None; it is asked at the first failed
    poll and then at most every ``watch_every_s``, so a dead container ends the wait within a fraction
    of a second instead of after the whole timeout.

    On a terminal the wait shows its elapsed time (orchestrator/progress.py): a health timeout is
    minutes long, and a silent wait looks like a hang."""
    try:
        report = _wait(url, timeout=timeout, interval=interval, watch=watch, watch_every_s=watch_every_s)
    finally:
        progress.clear()
    progress.line("health", f"{url} {report.reason}" if report.healthy else report.reason)
    return report


def _wait(
    url: str,
    *,
    timeout: float,
    interval: float,
    watch: Callable[[], str | None] | None,
    watch_every_s: float,
) -> HealthReport:
    start = time.monotonic()
    deadline = start + timeout
    attempts = 0
    seen: dict[str, int] = {}
    last: Probe | None = None
    watched = float("-inf")

    def report(healthy: bool, reason: str, failure: str | None = None) -> HealthReport:
        return HealthReport(url, healthy, attempts, elapsed, last, reason, seen, container_failure=failure)

    while True:
        attempts += 1
        last = get(url, timeout=max(0.2, min(2.0, deadline - time.monotonic())))
        key = str(last.status) if last.status is not None else (last.error or "error").split(":")[0]
        seen[key] = seen.get(key, 0) + 1
        elapsed = time.monotonic() - start
        if last.ok:
            return report(True, f"healthy after {elapsed:.3f}s")
        if watch is not None and time.monotonic() - watched >= watch_every_s:
            watched = time.monotonic()
            failure = watch()
            if failure is not None:
                why = f"container {failure} before {url} became healthy ({elapsed:.1f}s, {attempts} tries)"
                return report(False, why, failure)
        progress.status(
            "health", f"waiting for {url}: {elapsed:.1f}s of {timeout:.0f}s, {attempts} tries, last: {key}"
        )
        if time.monotonic() + interval > deadline:
            what = f"HTTP {last.status}" if last.status is not None else last.error
            return report(False, f"{url} not healthy after {elapsed:.1f}s ({attempts} tries, last: {what})")
        time.sleep(interval)
