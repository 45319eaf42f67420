"""The promotion as recorded steps (Kargo's promotion steps).

Every piece of work an edge does to an environment (build, tag, push, stop, start, health, check,
guard, verify, record) runs inside ``steps.step(name)``: the step is persisted as ``started`` before it
acts and as ``done`` / ``failed`` after, with what it changed (container ids, image ids, tags, override
files). A process that dies between the two leaves a ``started`` row: that is how `recover` knows how
far a dead runner got, how `runs show` prints the work, and where the fault-injection tests stop.

The test-only hook: ``ORCH_TEST_CRASH_AT=<before|after>:<step>`` makes the process signal itself
(``ORCH_TEST_CRASH_SIGNAL``: KILL, the default, or TERM) right after the step is recorded as started
(before) or right after its work is done but before that is recorded (after): the two moments a real
crash hurts most. It fires at most once per process. STOP freezes the process there instead, until the
test sends SIGCONT: how a test makes the world change (the engine restarts) at an exact boundary.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CRASH_AT_VAR = "ORCH_TEST_CRASH_AT"
CRASH_SIGNAL_VAR = "ORCH_TEST_CRASH_SIGNAL"


class StepStatus(StrEnum):
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"


@dataclass
class StepHandle:
    """What a running step reports: the changes it made (as it makes them) and whether it failed."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    def changed(self, **facts: Any) -> None:
        self.changes.update(facts)

    def fail(self, reason: str) -> None:
        self.failure = reason


BeginStep = Callable[[int, str, str | None], int]
FinishStep = Callable[[int, StepStatus, dict[str, Any], str | None], None]

_fired = False
_CRASH_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP}


def _crash_hook(moment: str, name: str) -> None:
    global _fired
    wanted = os.environ.get(CRASH_AT_VAR)
    if not wanted or _fired or wanted != f"{moment}:{name}":
        return
    _fired = True
    sig = _CRASH_SIGNALS.get(os.environ.get(CRASH_SIGNAL_VAR, "KILL").upper(), signal.SIGKILL)
    os.kill(os.getpid(), sig)


class StepLog:
    """Records a transition's steps in order. Without a store (operator actions, unit tests of pure
    logic) it records nothing but still names the work."""

    def __init__(
        self, begin: BeginStep | None = None, finish: FinishStep | None = None, *, position: int = 0
    ) -> None:
        self._begin = begin
        self._finish = finish
        # Recovery appends to a transition that already has steps: numbering continues after them.
        self._position = position
        self._prefix = ""
        self.recorded: list[StepHandle] = []
        # Callbacks waiting for a step to be done, by its full name (when_done).
        self._waiting: dict[str, list[Callable[[], None]]] = {}

    def when_done(self, name: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the step ``name`` is recorded done (not when it fails): work that
        may start only once that step is done, and then runs alongside the steps after it (advance.py
        lists prod's images for the prune after a deploy once prod's tags have moved, while its
        containers are swapped). It runs in the caller's thread, between two steps: it should start
        work, not do it, and must not raise."""
        self._waiting.setdefault(name, []).append(callback)

    @contextmanager
    def phase(self, prefix: str) -> Iterator[None]:
        """Name the steps of an undo (``restore_prod_start``) apart from the forward ones."""
        before = self._prefix
        self._prefix = f"{prefix}_"
        try:
            yield
        finally:
            self._prefix = before

    @contextmanager
    def step(self, name: str, environment: str | None = None) -> Iterator[StepHandle]:
        full = self._prefix + name
        self._position += 1
        step_id = self._begin(self._position, full, environment) if self._begin else None
        handle = StepHandle(full)
        self.recorded.append(handle)
        # The hooks sit inside the try: a SIGTERM they send (like a real one landing on a boundary)
        # raises Interrupted here, and the step must end ``failed`` rather than stay ``started`` in a
        # transition the undo then closes.
        try:
            if step_id is not None:
                _crash_hook("before", full)
            yield handle
            if step_id is not None:
                _crash_hook("after", full)
        except BaseException as exc:
            if step_id is not None and self._finish is not None:
                self._finish(step_id, StepStatus.FAILED, handle.changes, f"{type(exc).__name__}: {exc}")
            raise
        if step_id is not None and self._finish is not None:
            status = StepStatus.FAILED if handle.failure else StepStatus.DONE
            self._finish(step_id, status, handle.changes, handle.failure)
        if not handle.failure:
            for callback in self._waiting.pop(full, ()):
                callback()
