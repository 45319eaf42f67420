"""Operator controls over the line: hand-held locks, unlock, freeze (stop the line) and unfreeze.

These are what a person reaches for when something is wrong: hold prod while investigating, clear a
lock a dead runner left, stop every promotion of an app (or all apps) until further notice. Every one
of them is recorded as an event, so the history says who stopped the line, when and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator import views
from orchestrator.config import Config
from orchestrator.errors import BadInput, Conflict
from orchestrator.machine import parse_environment
from orchestrator.service import RunService, parse_actor
from orchestrator.store.repository import MANUAL_LOCK, FreezeRecord, LockRecord, Store

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine


def parse_reason(raw: str | None, what: str) -> str:
    reason = (raw or "").strip()
    if not reason:
        raise BadInput(f"{what} needs --reason TEXT: the next person to hit it must know why")
    return reason


def lock(
    config: Config, store: Store, app: str, env: str, *, reason: str | None, actor: str | None
) -> LockRecord:
    """Hold ``app``'s ``env`` by hand: promotions and rollbacks of it exit 3 until `unlock`."""
    config.app(app)
    env = parse_environment(env)
    why = parse_reason(reason, "lock")
    who = parse_actor(actor)
    store.acquire_locks(app, [env], holder=who, kind=MANUAL_LOCK, reason=why)
    store.record_event("lock", who, why, app=app, environment=env)
    (held,) = store.locks(app, [env])
    return held


@dataclass(frozen=True)
class Unlocked:
    """What `unlock` did: the lock as it was held, and how it went (``released``, ``recovered: ...`` or
    ``forced``)."""

    lock: LockRecord
    how: str


def unlock(
    config: Config,
    store: Store,
    engine_factory: Callable[[], DockerEngine],
    app: str,
    env: str,
    *,
    force: bool,
    actor: str | None,
) -> Unlocked:
    """Release a lock. A hand-held lock just goes. A lock whose holder is gone is released by
    recovering what that holder left half-done. A live holder's lock is only taken with --force."""
    config.app(app)
    env = parse_environment(env)
    who = parse_actor(actor)
    found = store.locks(app, [env])
    if not found:
        raise Conflict(f"{app} {env} is not locked: nothing to unlock")
    held = found[0]
    if held.kind == MANUAL_LOCK:
        store.delete_lock(app, env, actor=who, why=f"unlocked by {who} (held by hand by {held.holder})")
        return Unlocked(held, "released")
    if held.abandoned:
        service = RunService(config, store, engine_factory)
        reports = service.recover(app, who)
        remaining = store.locks(app, [env])
        if not remaining:
            return Unlocked(held, "recovered: " + "; ".join(r.reason for r in reports))
        # Still held: another process took it over to recover it meanwhile. Speak of that holder, not
        # of the dead one (which the message below would call alive).
        held = remaining[0]
    if not force:
        raise Conflict(
            f"{held.describe()} and its holder ({held.process.describe() if held.process else 'unknown'}) "
            f"is alive: wait for it, or 'orchestrator unlock {app} --env {env} --force' to take it away",
            details={"lock": views.lock_record(held)},
        )
    store.delete_lock(app, env, actor=who, why=f"forced by {who} while {held.describe()}")
    return Unlocked(held, "forced")


def freeze(
    config: Config, store: Store, app: str | None, *, reason: str | None, actor: str | None
) -> FreezeRecord:
    if app is not None:
        config.app(app)
    return store.freeze(app, parse_actor(actor), parse_reason(reason, "freeze"))


def unfreeze(config: Config, store: Store, app: str | None, *, actor: str | None) -> FreezeRecord:
    if app is not None:
        config.app(app)
    found = store.unfreeze(app, parse_actor(actor))
    if found is None:
        what = app or "the line (all apps)"
        raise Conflict(f"{what} is not frozen: nothing to unfreeze")
    return found
