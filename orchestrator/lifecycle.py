"""Process lifecycle for long operations: signals become exceptions, leases are renewed while alive.

A cancelled CI job sends SIGTERM (then SIGKILL after a grace period). Python's default for SIGTERM is
to die on the spot, which leaves prod half-swapped and the locks held; so while an edge runs, SIGTERM
and SIGINT raise ``Interrupted`` in the main thread, the edge undoes its work and closes its
transition, and only then does the process exit (128 + signal number, as shells report it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.errors import Interrupted
from orchestrator.logging import get_logger

# ``Interrupted`` (raised here, and imported from here by the edges) lives with the other errors the CLI
# maps to an exit code (errors.py): a command that never runs an edge need not import this module to name
# it in its ``except``.


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _handling(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGTERM and SIGINT go to ``handler`` while inside (main thread only: elsewhere Python cannot
    install handlers, and there is nothing to do); the previous handlers come back after."""
    import signal

    if not _in_main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def interruptible() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT raise Interrupted."""

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    with _handling(handler):
        yield


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """While undoing, a second SIGTERM must not cut the undo short: note it and carry on. The list
    of signals received is yielded so the caller can report them."""
    import signal

    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        get_logger().warning("signal_deferred", signal=signal.Signals(signum).name)

    with _handling(handler):
        yield received


class Heartbeat:
    """Renews a lease every ``interval`` seconds from a daemon thread while the work goes on.

    ``renew`` returns False when the lease is no longer ours (an operator forced the lock away): that
    is logged loudly once, since the work may now race someone else's.
    """

    def __init__(self, renew: Callable[[], bool], interval: float, what: str) -> None:
        self._renew = renew
        self._interval = interval
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat {what}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        log = get_logger()
        warned = False
        while not self._stop.wait(self._interval):
            try:
                ours = self._renew()
            except Exception as exc:  # a database hiccup must not kill the heartbeat for good
                log.warning("lease_renewal_failed", what=self._what, error=str(exc))
                continue
            if not ours and not warned:
                warned = True
                log.error("lease_lost", what=self._what)
