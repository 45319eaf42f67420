"""Who holds a lock or runs a transition, and whether that process is still alive.

A lease alone cannot tell a slow holder from a dead one until it expires; on the same host the kernel
can tell at once. A pid alone is not enough either (pids are reused), so the holder is identified by
host, pid and the pid's start time from /proc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from functools import cache


class Liveness(StrEnum):
    ALIVE = "alive"
    DEAD = "dead"
    # Another host: only its lease can say.
    UNKNOWN = "unknown"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None
    when there is no such process or it is a zombie (it has exited; only its parent has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass(frozen=True)
class Holder:
    """A process that holds a lock or runs a transition: host, pid and the pid's start time, so that a reused
    pid is not taken for it; ``liveness`` asks /proc when it is on this host."""

    host: str
    pid: int
    start: str | None

    @classmethod
    def me(cls) -> Holder:
        return _me(os.getpid())

    def liveness(self) -> Liveness:
        if self.host != _hostname():
            return Liveness.UNKNOWN
        started = _start_time(self.pid)
        if started is None or (self.start is not None and started != self.start):
            return Liveness.DEAD
        return Liveness.ALIVE

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@cache
def _hostname() -> str:
    # What socket.gethostname() returns on Linux (glibc asks uname too), without loading the socket module
    # into every command that only reads the history.
    return os.uname().nodename


@cache
def _me(pid: int) -> Holder:
    # Cached per pid: a forked child must not present itself as its parent.
    return Holder(_hostname(), pid, _start_time(pid))


def process(pid: int) -> Holder:
    """This host's process ``pid`` as it is now (a child just started, say), to ask later whether that
    very process still runs."""
    return Holder(_hostname(), pid, _start_time(pid))


def holder_of(host: str | None, pid: int | None, start: str | None) -> Holder | None:
    if host is None or pid is None:
        return None
    return Holder(host, pid, start)
