"""HTTP health polling against loopback.

The design this replaces slept 6 s between 10 tries, so a healthy container waited up to 6 s to be
noticed and a dead one cost a minute. We poll every ``interval`` (50 ms by default) until ``timeout``,
stop at once when the container has exited, and on failure report what we actually saw.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_BODY_LIMIT = 512


@dataclass(frozen=True)
class Probe:
    status: int | None
    body: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class HealthReport:
    url: str
    healthy: bool
    attempts: int
    elapsed_s: float
    last: Probe | None
    reason: str
    seen: dict[str, int] = field(default_factory=dict)

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
        }


def get(url: str, *, timeout: float = 2.0) -> Probe:
    req = urllib.request.Request(url, headers={"User-Agent": "orchestrator-health"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Probe(resp.status, resp.read(_BODY_LIMIT).decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        body = exc.read(_BODY_LIMIT).decode(errors="replace") if exc.fp else ""
        return Probe(exc.code, body)
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Probe(None, error=f"{type(reason).__name__}: {reason}")


def wait_healthy(
    url: str,
    *,
    timeout: float,
    interval: float,
    alive: Callable[[], bool] | None = None,
    alive_every: int = 10,
) -> HealthReport:
    """Poll ``url`` until it answers 2xx. ``alive`` (checked every ``alive_every`` polls) lets a crashed
    container fail the check at once instead of after the whole timeout."""
    start = time.monotonic()
    deadline = start + timeout
    attempts = 0
    seen: dict[str, int] = {}
    last: Probe | None = None
    while True:
        attempts += 1
        last = get(url, timeout=max(0.2, min(2.0, deadline - time.monotonic())))
        key = str(last.status) if last.status is not None else (last.error or "error").split(":")[0]
        seen[key] = seen.get(key, 0) + 1
        elapsed = time.monotonic() - start
        if last.ok:
            return HealthReport(url, True, attempts, elapsed, last, f"healthy after {elapsed:.3f}s", seen)
        if alive is not None and attempts % alive_every == 0 and not alive():
            return HealthReport(
                url, False, attempts, elapsed, last, f"container exited before {url} became healthy", seen
            )
        if time.monotonic() + interval > deadline:
            what = f"HTTP {last.status}" if last.status is not None else last.error
            return HealthReport(
                url,
                False,
                attempts,
                elapsed,
                last,
                f"{url} not healthy after {elapsed:.1f}s ({attempts} tries, last: {what})",
                seen,
            )
        time.sleep(interval)
