"""SQLAlchemy models: the persisted history operators read with `runs show` and the dashboard.

Schema changes go through Alembic (migrations/); production code never calls ``create_all``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orchestrator.store.records import utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Run(Base):
    __tablename__ = "runs"
    # History is read newest first (`runs list`, /api/runs): each filter has an index that hands its
    # runs over in id order, so a page is a bounded index scan, not a sort of every match (0006).
    __table_args__ = (
        Index("ix_runs_app_id", "app", "id"),
        Index("ix_runs_actor_id", "actor", "id"),
        Index("ix_runs_sha", "sha"),
        # /metrics: runs per app and state, from the index alone (0008).
        Index("ix_runs_app_state", "app", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(63))
    sha: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The CI job that did it (a GitHub Actions run, a GitLab job), when in CI: orchestrator/identity.py.
    ci_url: Mapped[str | None] = mapped_column(String(500))
    # The sha's committer date, read from git at `run start`: the start of the DORA lead time for
    # changes. Kept here so `metrics` answers from the history on a host without the repository.
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    transitions: Mapped[list[Transition]] = relationship(
        back_populates="run", order_by="Transition.id", cascade="all, delete-orphan"
    )


class Transition(Base):
    """One attempt to move a run along an edge. Written ``in_progress`` before any side effect, so a
    crash leaves a row that says exactly which edge was under way and since when."""

    __tablename__ = "transitions"
    # (run_id, id): a run's last transition (its outcome in `runs list`) from the index alone;
    # (actor, run_id): runs moved by an actor, newest first; (to_state, outcome, finished_at, ...): `metrics`'
    # window, with what it reads of each transition, so the index alone answers it (0008).
    __table_args__ = (
        Index("ix_transitions_run_id_id", "run_id", "id"),
        Index("ix_transitions_actor_run_id", "actor", "run_id"),
        Index(
            "ix_transitions_to_state_outcome_finished_at",
            "to_state",
            "outcome",
            "finished_at",
            "run_id",
            "id",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    from_state: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # in_progress | succeeded | failed | aborted | interrupted | superseded
    # (interrupted: stopped mid-edge with side effects that `orchestrator recover` must reconcile)
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    # Where the run actually landed: to_state on success, development on failure, from_state if aborted.
    result_state: Mapped[str | None] = mapped_column(String(32))
    # Who is doing the work, so another process can tell a live holder from a dead one: the host and
    # pid (with the pid's start time, since pids are reused) and a lease the holder renews while alive.
    holder_host: Mapped[str | None] = mapped_column(String(255))
    holder_pid: Mapped[int | None] = mapped_column(Integer)
    holder_start: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The CI job that did it (a GitHub Actions run, a GitLab job), when in CI: orchestrator/identity.py.
    ci_url: Mapped[str | None] = mapped_column(String(500))

    run: Mapped[Run] = relationship(back_populates="transitions")
    gate_results: Mapped[list[GateResultRow]] = relationship(
        back_populates="transition", order_by="GateResultRow.position", cascade="all, delete-orphan"
    )
    steps: Mapped[list[StepRow]] = relationship(order_by="StepRow.position", cascade="all, delete-orphan")


class GateResultRow(Base):
    __tablename__ = "gate_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transition_id: Mapped[int] = mapped_column(ForeignKey("transitions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    duration_s: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    transition: Mapped[Transition] = relationship(back_populates="gate_results")


class StepRow(Base):
    """One recorded promotion step (Kargo's promotion steps): written when it starts and again when it
    ends, with what it changed. Recovery reads these to know how far a dead process got."""

    __tablename__ = "transition_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transition_id: Mapped[int] = mapped_column(ForeignKey("transitions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str | None] = mapped_column(String(32))
    # started | done | failed | undone
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class Release(Base):
    """What an environment was set to run, and by which run: the anchor for verification, drift
    and rollback."""

    __tablename__ = "releases"
    # (app, environment, id): an environment's latest release and the one before it; transition_id:
    # the release a promotion made (`metrics`, recovery); (kind, created_at): rollbacks in a window.
    __table_args__ = (
        Index("ix_releases_app_environment_id", "app", "environment", "id"),
        Index("ix_releases_transition_id", "transition_id"),
        Index("ix_releases_kind_created_at", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(63))
    environment: Mapped[str] = mapped_column(String(32))
    image_id: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str | None] = mapped_column(String(300))
    revision: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    transition_id: Mapped[int | None] = mapped_column(ForeignKey("transitions.id", ondelete="SET NULL"))
    # deploy | rollback
    kind: Mapped[str] = mapped_column(String(16), default="deploy")
    # sha256 of the compose file the release ran with (compose apps): which file, not just which image.
    compose_sha256: Mapped[str | None] = mapped_column(String(80))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The CI job that did it (a GitHub Actions run, a GitLab job), when in CI: orchestrator/identity.py.
    ci_url: Mapped[str | None] = mapped_column(String(500))
    # The Docker engine it ran on (``local`` or ``user@host:port``; config.EngineTarget.host): where to
    # look for it even after the environment moved to another host. NULL: recorded before engines were.
    engine: Mapped[str | None] = mapped_column(String(300))


class EnvironmentLock(Base):
    """At most one transition may touch an (app, environment) at a time; the primary key makes the
    database, not a race-prone read-then-write, the arbiter between concurrent CI runners."""

    __tablename__ = "environment_locks"

    app: Mapped[str] = mapped_column(String(63), primary_key=True)
    environment: Mapped[str] = mapped_column(String(32), primary_key=True)
    # None for operator actions that belong to no run (rollback).
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    transition_id: Mapped[int | None] = mapped_column(ForeignKey("transitions.id", ondelete="CASCADE"))
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # run (a transition holds it) | operator (rollback, recover) | manual (`orchestrator lock`)
    kind: Mapped[str] = mapped_column(String(16), default="run")
    reason: Mapped[str | None] = mapped_column(Text)
    holder_host: Mapped[str | None] = mapped_column(String(255))
    holder_pid: Mapped[int | None] = mapped_column(Integer)
    holder_start: Mapped[str | None] = mapped_column(String(32))
    # None: never expires (a hand-held lock stays until `orchestrator unlock`).
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The CI job that did it (a GitHub Actions run, a GitLab job), when in CI: orchestrator/identity.py.
    ci_url: Mapped[str | None] = mapped_column(String(500))


class Freeze(Base):
    """Stop the line: while a row exists for an app (or ``*`` for all), no run of it may advance."""

    __tablename__ = "freezes"

    app: Mapped[str] = mapped_column(String(63), primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The CI job that did it (a GitHub Actions run, a GitLab job), when in CI: orchestrator/identity.py.
    ci_url: Mapped[str | None] = mapped_column(String(500))


class LockWaiter(Base):
    """A run waiting (``advance --wait``) for an environment: lets a newer waiting run supersede an
    older one, so a CI backlog never deploys stale commits one after another."""

    __tablename__ = "lock_waiters"

    app: Mapped[str] = mapped_column(String(63), primary_key=True)
    environment: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A waiter that died stops renewing this and is ignored once it passes.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Event(Base):
    """The audit trail of everything that is not a gate: locks taken over or forced, freezes,
    interruptions and recoveries."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    app: Mapped[str | None] = mapped_column(String(63), index=True)
    environment: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    transition_id: Mapped[int | None] = mapped_column(ForeignKey("transitions.id", ondelete="SET NULL"))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The CI job that did it (a GitHub Actions run, a GitLab job), when in CI: orchestrator/identity.py.
    ci_url: Mapped[str | None] = mapped_column(String(500))


class Approval(Base):
    """A person's decision about the edge of a run into an environment that requires approval: who,
    when, and (for a rejection) why. One approval and one rejection at most per run and environment:
    the unique constraint, not a read-then-write, makes two concurrent `approve` calls one success and
    one conflict."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("run_id", "environment", "decision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    environment: Mapped[str] = mapped_column(String(32))
    # approved | rejected
    decision: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
