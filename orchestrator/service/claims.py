"""Taking a run and its environments for one edge: the claim that writes the transition
``in_progress``, recovery of whatever a dead holder left on the way, the wait for a live holder, and the
supersede that ends a run a newer one overtook."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orchestrator.errors import Conflict
from orchestrator.holder import Holder
from orchestrator.logging import get_logger
from orchestrator.machine import EDGE_ENVIRONMENTS, Edge
from orchestrator.service.common import LazyEngine, Shared, target_environment
from orchestrator.store.repository import LockHeld, RunRecord, Superseded, UnfinishedTransition

if TYPE_CHECKING:
    from orchestrator.service.recover import Recovery

# How often a waiting advance retries the lock: well under a second, so a freed environment is taken
# at once rather than after a long back-off.
LOCK_POLL_S = 0.2


def supersede(shared: Shared, run: RunRecord, edge: Edge, actor: str, exc: Superseded) -> None:
    """End ``run`` on ``edge`` because a newer run of the app is headed the same way, and say so."""
    shared.store.supersede(run.id, edge.source.value, edge.dest.value, actor, exc.message)
    get_logger().warning("run_superseded", newer_run_id=exc.newer_run_id, reason=exc.message)
    shared.notify("superseded", run, target_environment(edge), actor, reason=exc.message)


class Claims:
    """The claim loop. It is given Recovery because a lock or unfinished transition in the way may be
    a dead runner's, and recovering it is what frees the way (no separate `recover` needed first)."""

    def __init__(self, shared: Shared, recovery: Recovery) -> None:
        self.shared = shared
        self.store = shared.store
        self.recovery = recovery

    def claim(self, run: RunRecord, edge: Edge, actor: str, engine: LazyEngine, wait_s: float) -> int:
        """Take the run and its environments; recover whatever a dead holder left on the way; with
        ``wait_s`` wait for a live holder, saying so, so that a newer waiting run supersedes us."""
        log = get_logger()
        lease_s = self.shared.lease_s
        target_env = target_environment(edge)
        deadline = time.monotonic() + wait_s
        waiting_since: float | None = None
        renewed = 0.0
        try:
            while True:
                try:
                    return self.store.begin_transition(
                        run.id,
                        edge.source.value,
                        edge.dest.value,
                        actor,
                        EDGE_ENVIRONMENTS[edge],
                        target_environment=target_env,
                        holder=Holder.me(),
                        lease_s=lease_s,
                    )
                except Superseded as exc:
                    supersede(self.shared, run, edge, actor, exc)
                    raise
                except (UnfinishedTransition, LockHeld) as exc:
                    if isinstance(exc, UnfinishedTransition):
                        if self.recovery.recover_if_abandoned(exc.transition, engine, actor):
                            continue
                    elif self.recovery.free_abandoned(exc.locks, engine, actor):
                        continue
                    now = time.monotonic()
                    if now >= deadline:
                        if waiting_since is not None:
                            raise Conflict(
                                f"{exc.message} (waited {now - waiting_since:.0f} s)", details=exc.details
                            ) from None
                        raise
                    if waiting_since is None:
                        waiting_since = now
                        log.info("waiting_for_lock", holder=exc.message, wait_s=wait_s)
                    if now - renewed > lease_s / 3:
                        self.store.wait_for(run.app, target_env, run.id, lease_s)
                        renewed = now
                    time.sleep(min(LOCK_POLL_S, max(deadline - now, 0.01)))
        finally:
            if waiting_since is not None:
                self.store.stop_waiting(run.app, target_env, run.id)
