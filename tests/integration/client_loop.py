"""The client of an environment during a swap: threads asking one URL over and over, counting every
failed request and the longest gap between two answers. One copy for the zero-downtime tests and
benchmarks/zero_downtime.py (which puts this folder on its path), so what the tests assert and what the
benchmark reports are measured the same way.

Two shapes of the same client: the issue's fast loop (one request every 20 ms), and slow requests kept
in flight back to back (``workers`` threads, staggered), so that one is being answered at whatever
moment the old release is stopped.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

INTERVAL_S = 0.02
SLOW_S = 1.5  # how long /cgi-bin/slow takes to answer, its first line sent at once
# A CGI for the test apps (www/cgi-bin/slow, made executable when the app starts): it begins its
# answer at once, so the proxy cannot retry it elsewhere once it is cut, and ends it SLOW_S later; both
# lines name the release that answered.
SLOW_CGI = f"""#!/bin/busybox sh
echo "Content-Type: text/plain"
echo ""
/bin/busybox cat /www/version
/bin/busybox sleep {SLOW_S}
/bin/busybox cat /www/version
"""


@dataclass
class Loop:
    """Requests to ``url`` on ``workers`` threads, each waiting ``interval_s`` between its requests."""

    url: str
    interval_s: float = INTERVAL_S
    timeout_s: float = 5.0
    workers: int = 1
    # A body that fails this was cut short: counted as a failed request. A response without a length
    # ends when the connection does, so a cut one reads as a complete (shorter) body.
    complete: Callable[[str], bool] | None = None
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    bodies: set[str] = field(default_factory=set)
    answered_at: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout_s) as answer:
                    body = answer.read().decode().strip()
                if self.complete is not None and not self.complete(body):
                    raise ValueError(f"cut short: {body!r}")
                with self._lock:
                    self.bodies.add(body)
                    self.ok += 1
                    self.answered_at.append(time.monotonic())
            except Exception as exc:
                with self._lock:
                    self.failed.append(repr(exc))
            self.stop.wait(self.interval_s)

    @property
    def longest_gap_s(self) -> float:
        times = sorted(self.answered_at)
        return max((b - a for a, b in itertools.pairwise(times)), default=float("nan"))

    def summary(self) -> str:
        return f"{len(self.failed)} of {self.ok + len(self.failed)} requests failed: {self.failed[:5]}"


@contextmanager
def client_loop(
    url: str,
    *,
    before_s: float = 0.2,
    after_s: float = 0.5,
    interval_s: float = INTERVAL_S,
    timeout_s: float = 5.0,
    workers: int = 1,
    stagger_s: float = 0.0,
    complete: Callable[[str], bool] | None = None,
) -> Iterator[Loop]:
    """``before_s`` of answers from what served before the body runs, ``after_s`` from what serves
    after. Threads start ``stagger_s`` apart, so slow requests overlap instead of ending together;
    leaving waits for every request in flight to end (each is counted)."""
    loop = Loop(url, interval_s=interval_s, timeout_s=timeout_s, workers=workers, complete=complete)
    threads = [threading.Thread(target=loop.run, daemon=True) for _ in range(workers)]
    try:
        for thread in threads:
            thread.start()
            time.sleep(stagger_s)
        time.sleep(before_s)
        yield loop
        time.sleep(after_s)
    finally:
        loop.stop.set()
        for thread in threads:
            thread.join(timeout=timeout_s + 5)


def slow_answer_complete(body: str) -> bool:
    """Both lines of SLOW_CGI, from one release: anything else was cut when its release exited."""
    lines = body.split("\n")
    return len(lines) == 2 and lines[0] == lines[1]


def slow_client_loop(url: str) -> Any:
    """Slow requests (SLOW_S each, to SLOW_CGI at ``url``) kept in flight back to back on three
    staggered threads: whenever an old release is stopped, it is answering some of them."""
    return client_loop(
        url,
        # Not 0: a refused request must not spin (and count) thousands of times while nothing listens.
        interval_s=INTERVAL_S,
        workers=3,
        stagger_s=SLOW_S / 3,
        before_s=0,
        after_s=0,
        complete=slow_answer_complete,
    )
