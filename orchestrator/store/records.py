"""The values the store hands out (frozen dataclasses, never ORM objects) and the conflicts it raises.

Kept apart from the queries so that the service, the CLI and recovery can speak about runs, locks and
releases without importing SQLAlchemy sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator import views
from orchestrator.errors import Conflict
from orchestrator.holder import Holder, Liveness, holder_of
from orchestrator.verdict import GateResult, GateStatus, TransitionOutcome

# The converters below read ORM objects (history.py) and the store's DB-API rows (store/sql.py) alike:
# both answer the columns as attributes. The models are named for type checking only, so that the
# CLI's path never imports SQLAlchemy.
if TYPE_CHECKING:
    from orchestrator.store.models import (
        Approval,
        EnvironmentLock,
        Event,
        Freeze,
        Release,
        Run,
        StepRow,
        Transition,
    )

IN_PROGRESS = TransitionOutcome.IN_PROGRESS
INTERRUPTED = TransitionOutcome.INTERRUPTED
SUPERSEDED = TransitionOutcome.SUPERSEDED
# A person refused the edge (`orchestrator reject`): recorded as a transition that ends the run.
REJECTED = TransitionOutcome.REJECTED
# Transitions whose side effects nobody has reconciled yet; a run has at most one.
UNFINISHED = (IN_PROGRESS, INTERRUPTED)
ALL_APPS = "*"

RUN_LOCK = "run"
OPERATOR_LOCK = "operator"
MANUAL_LOCK = "manual"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RunRecord:
    """One commit of an app on its way through the line, from `run start`: the state it is in now, who
    started it and from which CI job."""

    id: int
    app: str
    sha: str
    state: str
    actor: str
    created_at: datetime
    updated_at: datetime
    ci_url: str | None = None

    @classmethod
    def of(cls, row: Run) -> RunRecord:
        return cls(
            row.id,
            row.app,
            row.sha,
            row.state,
            row.actor,
            _aware(row.created_at),
            _aware(row.updated_at),
            row.ci_url,
        )


@dataclass(frozen=True)
class StepRecord:
    """One step of a transition (a build, a tag, a container started...) with what it ``changes``: what
    recovery reads to know how far an edge got before it stopped."""

    id: int
    position: int
    name: str
    environment: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    changes: dict[str, Any]
    error: str | None


def _step(row: StepRow) -> StepRecord:
    return StepRecord(
        row.id,
        row.position,
        row.name,
        row.environment,
        row.status,
        _aware(row.started_at),
        _aware(row.finished_at),
        dict(row.changes or {}),
        row.error,
    )


@dataclass(frozen=True)
class TransitionRecord:
    """One attempt to move a run along an edge: its outcome, gate results and steps, and, while it is
    unfinished, the process running it (``holder``) and its lease, for recovery to judge."""

    id: int
    run_id: int
    from_state: str
    to_state: str
    actor: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    reason: str | None
    result_state: str | None
    checks: tuple[GateResult, ...]
    steps: tuple[StepRecord, ...] = ()
    holder: Holder | None = None
    lease_expires_at: datetime | None = None
    ci_url: str | None = None


@dataclass(frozen=True)
class ReleaseRecord:
    """What an environment was made to run: the image by id (and registry digest when pushed), its revision,
    and how it got there (``kind``: a deploy or a rollback); status and rollback go by it."""

    id: int
    app: str
    environment: str
    image_id: str
    digest: str | None
    revision: str
    run_id: int | None
    kind: str
    reason: str | None
    created_at: datetime
    transition_id: int | None = None
    compose_sha256: str | None = None
    ci_url: str | None = None
    engine: str | None = None


def _release(row: Release) -> ReleaseRecord:
    return ReleaseRecord(
        row.id,
        row.app,
        row.environment,
        row.image_id,
        row.digest,
        row.revision,
        row.run_id,
        row.kind,
        row.reason,
        _aware(row.created_at),
        row.transition_id,
        row.compose_sha256,
        row.ci_url,
        row.engine,
    )


def _transition(row: Transition) -> TransitionRecord:
    checks = tuple(
        GateResult(
            g.name, GateStatus(g.status), g.reason, dict(g.details or {}), g.duration_s, _aware(g.started_at)
        )
        for g in row.gate_results
    )
    return TransitionRecord(
        row.id,
        row.run_id,
        row.from_state,
        row.to_state,
        row.actor,
        _aware(row.started_at),
        _aware(row.finished_at),
        row.outcome,
        row.reason,
        row.result_state,
        checks,
        tuple(_step(st) for st in row.steps),
        holder_of(row.holder_host, row.holder_pid, row.holder_start),
        _aware(row.lease_expires_at),
        row.ci_url,
    )


class UnfinishedTransition(Conflict):
    """The run already has a transition nobody closed (maybe its runner died): recover it first."""

    def __init__(self, transition: TransitionRecord) -> None:
        self.transition = transition
        who = transition.actor + (f", {transition.holder.describe()}" if transition.holder else "")
        # Most often a live runner is mid-edge (a second CI job on the same run): say who, and only
        # send the reader to `recover` for what nobody is finishing.
        advice = (
            "'orchestrator recover' reconciles it"
            if transition.outcome == INTERRUPTED
            else "wait for it to finish; if its runner died, 'orchestrator recover' reconciles it"
        )
        super().__init__(
            f"run {transition.run_id} has an unfinished transition {transition.id} "
            f"({transition.from_state}->{transition.to_state}, {transition.outcome}, "
            f"started {views.iso(transition.started_at)}) by {who}: {advice}"
        )


class Superseded(Conflict):
    """A newer run of the same app owns, moves into or waits for the environment."""

    def __init__(self, run_id: int, newer_run_id: int, why: str) -> None:
        self.run_id = run_id
        self.newer_run_id = newer_run_id
        super().__init__(f"run {run_id} is superseded by newer run {newer_run_id}: {why}")


@dataclass(frozen=True)
class LockRecord:
    """An environment held by a run, an operator action or a person by hand (``kind``); ``liveness`` tells
    whether its holder is still there, so a dead runner's lock can be freed."""

    app: str
    environment: str
    kind: str
    holder: str
    run_id: int | None
    transition_id: int | None
    acquired_at: datetime
    reason: str | None
    process: Holder | None
    lease_expires_at: datetime | None
    ci_url: str | None = None

    @classmethod
    def of(cls, row: EnvironmentLock) -> LockRecord:
        return cls(
            row.app,
            row.environment,
            row.kind,
            row.holder,
            row.run_id,
            row.transition_id,
            _aware(row.acquired_at),
            row.reason,
            holder_of(row.holder_host, row.holder_pid, row.holder_start),
            _aware(row.lease_expires_at),
            row.ci_url,
        )

    def liveness(self, now: datetime | None = None) -> str:
        """alive | dead | expired | held (a hand-held lock: only `unlock` ends it)."""
        if self.kind == MANUAL_LOCK:
            return "held"
        if self.process is not None:
            seen = self.process.liveness()
            if seen == Liveness.DEAD:
                return "dead"
            if seen == Liveness.ALIVE:
                return "alive"
        if self.lease_expires_at is None or self.lease_expires_at <= (now or utcnow()):
            return "expired"
        return "alive"

    @property
    def abandoned(self) -> bool:
        """Its holder is gone: on this host the process is dead, elsewhere its lease ran out."""
        return self.liveness() in ("dead", "expired")

    def describe(self) -> str:
        if self.kind == MANUAL_LOCK:
            who = f"{self.holder} by hand" + (f" ({self.reason})" if self.reason else "")
        elif self.run_id is not None:
            who = f"run {self.run_id} ({self.holder})"
        else:
            who = self.holder
        return f"{self.app} {self.environment} is locked by {who} since {views.iso(self.acquired_at)}"


class LockHeld(Conflict):
    """Someone else holds an environment this action needs."""

    def __init__(self, app: str, locks: Sequence[LockRecord]) -> None:
        self.app = app
        self.locks = list(locks)
        if not self.locks:
            message = f"{app} was locked by another runner a moment ago; try again"
        else:
            lock = self.locks[0]
            message = lock.describe()
            if lock.kind == MANUAL_LOCK:
                message += f": 'orchestrator unlock {app} --env {lock.environment}' releases it"
            elif lock.abandoned:
                message += ": its holder is gone; 'orchestrator recover' frees it"
            else:
                message += ": wait for it to finish, or pass --wait SECONDS"
        super().__init__(message, details={"locks": [views.lock_record(lk) for lk in self.locks]})


@dataclass(frozen=True)
class FreezeRecord:
    """A stopped line: no promotion of ``app`` (of every app for ``ALL_APPS``) until `unfreeze`, with who
    stopped it, when and why."""

    app: str
    actor: str
    reason: str
    since: datetime
    ci_url: str | None = None

    @classmethod
    def of(cls, row: Freeze) -> FreezeRecord:
        return cls(row.app, row.actor, row.reason, _aware(row.since), row.ci_url)

    def describe(self) -> str:
        scope = "every app" if self.app == ALL_APPS else self.app
        return f"{scope} frozen by {self.actor} since {views.iso(self.since)}: {self.reason}"


@dataclass(frozen=True)
class EventRecord:
    """Something done outside a run's transitions (a lock, a freeze, a rollback, a prune, a failed
    notification...): the audit trail's account of who did it, when and why."""

    id: int
    at: datetime
    app: str | None
    environment: str | None
    kind: str
    actor: str
    message: str
    run_id: int | None
    transition_id: int | None
    details: dict[str, Any]
    ci_url: str | None = None

    @classmethod
    def of(cls, row: Event) -> EventRecord:
        return cls(
            row.id,
            _aware(row.at),
            row.app,
            row.environment,
            row.kind,
            row.actor,
            row.message,
            row.run_id,
            row.transition_id,
            dict(row.details or {}),
            row.ci_url,
        )


@dataclass(frozen=True)
class ApprovalRecord:
    """A person's decision (``approved`` or ``rejected``) about a run's edge into ``environment``."""

    id: int
    run_id: int
    environment: str
    decision: str
    actor: str
    reason: str | None
    at: datetime

    @classmethod
    def of(cls, row: Approval) -> ApprovalRecord:
        return cls(row.id, row.run_id, row.environment, row.decision, row.actor, row.reason, _aware(row.at))

    def describe(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"{self.decision} for {self.environment} by {self.actor} at {views.iso(self.at)}{why}"
