"""Every query the CLI and the service need. No SQL lives anywhere else.

Values leave this module as frozen dataclasses, never as ORM objects, so no caller can lazily load or
accidentally write through a detached session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import BadInput, Conflict, InfraUnavailable
from orchestrator.store import db
from orchestrator.store.models import EnvironmentLock, GateResultRow, Release, Run, Transition, utcnow

IN_PROGRESS = "in_progress"


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat() if value else None


@dataclass(frozen=True)
class RunRecord:
    id: int
    app: str
    sha: str
    state: str
    actor: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Run) -> RunRecord:
        return cls(
            row.id, row.app, row.sha, row.state, row.actor, _aware(row.created_at), _aware(row.updated_at)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "app": self.app,
            "sha": self.sha,
            "state": self.state,
            "actor": self.actor,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class GateRecord:
    name: str
    status: str
    reason: str
    details: dict[str, Any]
    duration_s: float
    started_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "details": self.details,
            "duration_s": self.duration_s,
            "started_at": _iso(self.started_at),
        }


@dataclass(frozen=True)
class TransitionRecord:
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
    checks: tuple[GateRecord, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "transition_id": self.id,
            "from": self.from_state,
            "to": self.to_state,
            "actor": self.actor,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "outcome": self.outcome,
            "reason": self.reason,
            "result_state": self.result_state,
            "checks": [c.as_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class ReleaseRecord:
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.id,
            "app": self.app,
            "environment": self.environment,
            "image_id": self.image_id,
            "digest": self.digest,
            "revision": self.revision,
            "run_id": self.run_id,
            "kind": self.kind,
            "reason": self.reason,
            "created_at": _iso(self.created_at),
        }


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
    )


def _transition(row: Transition) -> TransitionRecord:
    checks = tuple(
        GateRecord(g.name, g.status, g.reason, dict(g.details or {}), g.duration_s, _aware(g.started_at))
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
    )


class Store:
    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        self.url = url
        self.engine = db.make_engine(url)
        if upgrade:
            db.ensure_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise InfraUnavailable(
                f"database {db.safe_url(self.url)} failed: {str(exc.orig).strip().splitlines()[0]}"
            ) from None

    # runs -----------------------------------------------------------------------------------------

    def create_run(self, app: str, sha: str, actor: str, state: str) -> RunRecord:
        with self._session() as s:
            row = Run(app=app, sha=sha, actor=actor, state=state)
            s.add(row)
            s.flush()
            return RunRecord.of(row)

    def get_run(self, run_id: int) -> RunRecord:
        with self._session() as s:
            row = s.get(Run, run_id)
            if row is None:
                raise BadInput(f"unknown run {run_id}: 'orchestrator runs list' shows the runs there are")
            return RunRecord.of(row)

    def list_runs(
        self, *, app: str | None = None, state: str | None = None, limit: int = 20
    ) -> list[RunRecord]:
        q = sa.select(Run).order_by(Run.id.desc()).limit(limit)
        if app:
            q = q.where(Run.app == app)
        if state:
            q = q.where(Run.state == state)
        with self._session() as s:
            return [RunRecord.of(r) for r in s.scalars(q)]

    def transitions(self, run_id: int) -> list[TransitionRecord]:
        with self._session() as s:
            rows = s.scalars(sa.select(Transition).where(Transition.run_id == run_id).order_by(Transition.id))
            return [_transition(r) for r in rows]

    # transitions ----------------------------------------------------------------------------------

    def begin_transition(
        self, run_id: int, from_state: str, to_state: str, actor: str, environments: Sequence[str]
    ) -> int:
        """Claim the run and its environments and write the transition ``in_progress``, atomically.

        The compare-and-set on the run's state is the first write, so it takes the row (PostgreSQL) or
        database (SQLite) lock before anything is read: two runners advancing the same run cannot both
        see it idle.
        """
        try:
            with self._session() as s:
                claimed = s.execute(
                    sa.update(Run)
                    .where(Run.id == run_id, Run.state == from_state)
                    .values(updated_at=utcnow())
                ).rowcount
                if claimed != 1:
                    raise Conflict(f"run {run_id} is no longer in {from_state}: another runner moved it")
                unfinished = s.scalars(
                    sa.select(Transition).where(
                        Transition.run_id == run_id, Transition.outcome == IN_PROGRESS
                    )
                ).first()
                if unfinished is not None:
                    raise Conflict(
                        f"run {run_id} has an unfinished transition {unfinished.id} "
                        f"({unfinished.from_state}->{unfinished.to_state}, "
                        f"started {_iso(unfinished.started_at)})"
                    )
                run = s.get(Run, run_id)
                assert run is not None
                transition = Transition(
                    run_id=run_id, from_state=from_state, to_state=to_state, actor=actor, outcome=IN_PROGRESS
                )
                s.add(transition)
                s.flush()
                for env in environments:
                    s.add(
                        EnvironmentLock(
                            app=run.app,
                            environment=env,
                            run_id=run_id,
                            transition_id=transition.id,
                            holder=actor,
                        )
                    )
                s.flush()
                return transition.id
        except IntegrityError:
            run = self.get_run(run_id)
            raise Conflict(self._lock_message(run.app, environments)) from None

    def _lock_message(self, app: str, environments: Sequence[str]) -> str:
        with self._session() as s:
            locks = s.scalars(
                sa.select(EnvironmentLock).where(
                    EnvironmentLock.app == app, EnvironmentLock.environment.in_(list(environments))
                )
            ).all()
            if not locks:
                return f"{app}: {', '.join(environments)} was locked by another runner; try again"
            lock = locks[0]
            by = f"run {lock.run_id} ({lock.holder})" if lock.run_id is not None else f"{lock.holder}"
            return (
                f"{app} {lock.environment} is locked by {by} since "
                f"{_iso(lock.acquired_at)}: wait for it to finish"
            )

    def record_gate_result(self, transition_id: int, position: int, result: Any) -> None:
        with self._session() as s:
            s.add(
                GateResultRow(
                    transition_id=transition_id,
                    position=position,
                    name=result.name,
                    status=str(result.status),
                    reason=result.reason,
                    details=dict(result.details),
                    duration_s=result.duration_s,
                    started_at=result.started_at,
                )
            )

    def finish_transition(
        self, transition_id: int, *, outcome: str, reason: str | None, result_state: str
    ) -> None:
        """Close the transition, move the run, and release its locks in one commit, so history never
        shows a run in a state its last transition does not explain."""
        with self._session() as s:
            transition = s.get(Transition, transition_id)
            assert transition is not None
            transition.finished_at = utcnow()
            transition.outcome = outcome
            transition.reason = reason
            transition.result_state = result_state
            run = s.get(Run, transition.run_id)
            assert run is not None
            run.state = result_state
            run.updated_at = utcnow()
            s.execute(sa.delete(EnvironmentLock).where(EnvironmentLock.transition_id == transition_id))

    # releases -------------------------------------------------------------------------------------

    def record_release(
        self,
        *,
        app: str,
        environment: str,
        image_id: str,
        revision: str,
        run_id: int | None,
        transition_id: int | None,
        digest: str | None = None,
        kind: str = "deploy",
        reason: str | None = None,
    ) -> ReleaseRecord:
        with self._session() as s:
            row = Release(
                app=app,
                environment=environment,
                image_id=image_id,
                digest=digest,
                revision=revision,
                run_id=run_id,
                transition_id=transition_id,
                kind=kind,
                reason=reason,
            )
            s.add(row)
            s.flush()
            return _release(row)

    def releases(self, app: str, environment: str, *, limit: int = 20) -> list[ReleaseRecord]:
        with self._session() as s:
            rows = s.scalars(
                sa.select(Release)
                .where(Release.app == app, Release.environment == environment)
                .order_by(Release.id.desc())
                .limit(limit)
            )
            return [_release(r) for r in rows]

    def get_release(self, release_id: int) -> ReleaseRecord:
        with self._session() as s:
            row = s.get(Release, release_id)
            if row is None:
                raise BadInput(f"unknown release {release_id}: 'orchestrator status' lists the current ones")
            return _release(row)

    @contextmanager
    def environment_lock(self, app: str, environments: Sequence[str], holder: str) -> Iterator[None]:
        """Hold (app, environment) locks for an operator action that belongs to no run (rollback), with
        the same database-arbitrated exclusion runs get."""
        try:
            with self._session() as s:
                for env in environments:
                    s.add(
                        EnvironmentLock(
                            app=app, environment=env, run_id=None, transition_id=None, holder=holder
                        )
                    )
                s.flush()
        except IntegrityError:
            raise Conflict(self._lock_message(app, environments)) from None
        try:
            yield
        finally:
            with self._session() as s:
                s.execute(
                    sa.delete(EnvironmentLock).where(
                        EnvironmentLock.app == app,
                        EnvironmentLock.environment.in_(list(environments)),
                        EnvironmentLock.run_id.is_(None),
                        EnvironmentLock.holder == holder,
                    )
                )

    def releases_of_run(self, run_id: int) -> list[ReleaseRecord]:
        with self._session() as s:
            rows = s.scalars(sa.select(Release).where(Release.run_id == run_id).order_by(Release.id))
            return [_release(r) for r in rows]

    def latest_release(self, app: str, environment: str) -> ReleaseRecord | None:
        found = self.releases(app, environment, limit=1)
        return found[0] if found else None
