"""Every query the CLI and the service need. No SQL lives anywhere else.

Values leave this module as the frozen dataclasses of store/records.py, never as ORM objects, so no
caller can lazily load or accidentally write through a detached session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, selectinload, sessionmaker

from orchestrator.errors import BadInput, Conflict, InfraUnavailable
from orchestrator.holder import Holder
from orchestrator.store import db
from orchestrator.store.models import (
    Approval,
    EnvironmentLock,
    Event,
    Freeze,
    GateResultRow,
    LockWaiter,
    Release,
    Run,
    StepRow,
    Transition,
    utcnow,
)
from orchestrator.store.records import (  # noqa: F401 - re-exported: callers import them from here
    ALL_APPS,
    IN_PROGRESS,
    INTERRUPTED,
    MANUAL_LOCK,
    OPERATOR_LOCK,
    REJECTED,
    RUN_LOCK,
    SUPERSEDED,
    UNFINISHED,
    ApprovalRecord,
    EventRecord,
    FreezeRecord,
    LockHeld,
    LockRecord,
    ReleaseRecord,
    RunRecord,
    StepRecord,
    Superseded,
    TransitionRecord,
    UnfinishedTransition,
    _aware,
    _iso,
    _release,
    _step,
    _transition,
)

if TYPE_CHECKING:
    from orchestrator.metrics import Promotion, Rollback


# A TransitionRecord carries its gate results and steps: loaded for a whole list of transitions in one
# query each, not lazily by two more queries per transition.
WITH_CHECKS_AND_STEPS = (selectinload(Transition.gate_results), selectinload(Transition.steps))


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    """IN lists of bounded length (SQLite limits bound parameters per statement)."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _raw_time(column: Any, sqlite: bool) -> Any:
    """A timestamp column as SQLite stores it (ISO text), for ``_time`` to parse: SQLAlchemy's own
    conversion (a regular expression per value) costs more than the query when `metrics` reads a
    window of thousands of promotions. Other databases hand over timestamps natively."""
    return sa.type_coerce(column, sa.String) if sqlite else column


def _time(value: str | datetime | None) -> datetime | None:
    """A timestamp read through ``_raw_time``: timezone-aware, UTC."""
    if isinstance(value, str):
        # SQLite's text has no offset and means UTC; parsing it with one is cheaper than .replace().
        return (
            datetime.fromisoformat(value + "+00:00")
            if value[-6] not in "+-"
            else datetime.fromisoformat(value)
        )
    return _aware(value)


def _held_by(model: type[Transition] | type[EnvironmentLock], holder: Holder) -> sa.ColumnElement[bool]:
    """Rows of exactly this process: host, pid and the pid's start time. The pid alone would let a
    process that inherited a dead holder's pid renew or drop what that holder left for recovery."""
    start = model.holder_start == holder.start if holder.start is not None else model.holder_start.is_(None)
    return sa.and_(model.holder_host == holder.host, model.holder_pid == holder.pid, start)


class Store:
    def __init__(self, url: str, *, upgrade: bool = True, ci_url: str | None = None) -> None:
        """``ci_url``: the CI job this process runs in (orchestrator/identity.py). Every run,
        transition, lock, freeze, event and release this store writes carries it beside its actor."""
        self.url = url
        self.ci_url = ci_url
        self.engine = db.make_engine(url)
        if upgrade:
            db.ensure_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if ci_url is not None:
            sa.event.listen(self._sessions, "before_flush", self._stamp_ci_url)

    def _stamp_ci_url(self, session: Session, _context: Any, _instances: Any) -> None:
        # One place rather than a parameter on every write: one process is one CI job, and a write
        # method that forgot the link would leave a hole in the audit trail nobody notices.
        for row in session.new:
            if hasattr(row, "ci_url") and row.ci_url is None:
                row.ci_url = self.ci_url

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

    def create_run(
        self, app: str, sha: str, actor: str, state: str, *, committed_at: datetime | None = None
    ) -> RunRecord:
        with self._session() as s:
            row = Run(app=app, sha=sha, actor=actor, state=state, committed_at=committed_at)
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
            rows = s.scalars(
                sa.select(Transition)
                .where(Transition.run_id == run_id)
                .order_by(Transition.id)
                .options(*WITH_CHECKS_AND_STEPS)
            )
            return [_transition(r) for r in rows]

    # transitions ----------------------------------------------------------------------------------

    def begin_transition(
        self,
        run_id: int,
        from_state: str,
        to_state: str,
        actor: str,
        environments: Sequence[str],
        *,
        target_environment: str,
        holder: Holder,
        lease_s: float,
    ) -> int:
        """Claim the run and its environments and write the transition ``in_progress``, atomically.

        The compare-and-set on the run's state is the first write, so it takes the row (PostgreSQL) or
        database (SQLite) lock before anything is read: two runners advancing the same run cannot both
        see it idle. The supersede rule is checked inside the same transaction, so an older run can
        never slip in between a newer run's release and its own lock.
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
                        Transition.run_id == run_id, Transition.outcome.in_(UNFINISHED)
                    )
                ).first()
                if unfinished is not None:
                    raise UnfinishedTransition(_transition(unfinished))
                run = s.get(Run, run_id)
                assert run is not None
                newer = self._newer_contender(s, run, to_state, target_environment)
                if newer is not None:
                    raise Superseded(run_id, *newer)
                expires = utcnow() + timedelta(seconds=lease_s)
                transition = Transition(
                    run_id=run_id,
                    from_state=from_state,
                    to_state=to_state,
                    actor=actor,
                    outcome=IN_PROGRESS,
                    holder_host=holder.host,
                    holder_pid=holder.pid,
                    holder_start=holder.start,
                    lease_expires_at=expires,
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
                            kind=RUN_LOCK,
                            holder_host=holder.host,
                            holder_pid=holder.pid,
                            holder_start=holder.start,
                            lease_expires_at=expires,
                        )
                    )
                s.flush()
                return transition.id
        except IntegrityError:
            run = self.get_run(run_id)
            raise LockHeld(run.app, self.locks(run.app, environments)) from None

    @staticmethod
    def _newer_contender(s: Session, run: Run, to_state: str, env: str) -> tuple[int, str] | None:
        """A newer run of the same app that already owns, is moving into, or waits for ``env``."""
        latest = s.scalars(
            sa.select(Release)
            .where(Release.app == run.app, Release.environment == env)
            .order_by(Release.id.desc())
            .limit(1)
        ).first()
        if latest is not None and latest.kind == "deploy" and (latest.run_id or 0) > run.id:
            return latest.run_id or 0, f"its release {latest.id} already runs in {env}"
        moving = s.scalars(
            sa.select(Transition.run_id)
            .join(Run, Run.id == Transition.run_id)
            .where(
                Run.app == run.app,
                Transition.run_id > run.id,
                Transition.to_state == to_state,
                Transition.outcome.in_(UNFINISHED),
            )
            .limit(1)
        ).first()
        if moving is not None:
            return moving, f"it is moving to {to_state} now"
        waiting = s.scalars(
            sa.select(LockWaiter.run_id).where(
                LockWaiter.app == run.app,
                LockWaiter.environment == env,
                LockWaiter.run_id > run.id,
                LockWaiter.expires_at > utcnow(),
            )
        ).first()
        if waiting is not None:
            return waiting, f"it is waiting for {env} too"
        return None

    def supersede(self, run_id: int, from_state: str, to_state: str, actor: str, reason: str) -> int:
        """End a run that a newer one overtook: recorded as a transition, the run leaves the line.

        Like ``begin_transition`` the compare-and-set on the run comes first and the check for an
        unfinished transition after it, in one commit: another runner may have moved the run, or begun
        an edge of it, since the claim that found the newer run, and a ``superseded`` row written anyway
        would leave a run whose state its history does not explain.
        """
        with self._session() as s:
            return _end_run(
                s,
                run_id,
                from_state,
                to_state,
                actor,
                ending=SUPERSEDED,
                reason=reason,
                now=utcnow(),
                moved_by="runner",
                under_way=lambda unfinished: UnfinishedTransition(_transition(unfinished)),
            ).id

    def renew_lease(self, transition_id: int, holder: Holder, lease_s: float) -> bool:
        """The heartbeat: push the lease of the transition and its locks forward. False when the
        transition is no longer ours (an operator forced its locks away, or it was closed)."""
        expires = utcnow() + timedelta(seconds=lease_s)
        with self._session() as s:
            mine = s.execute(
                sa.update(Transition)
                .where(
                    Transition.id == transition_id,
                    Transition.outcome == IN_PROGRESS,
                    _held_by(Transition, holder),
                )
                .values(lease_expires_at=expires)
            ).rowcount
            if not mine:
                # Closed, interrupted (its locks' lease was run out on purpose, for `recover`) or taken
                # over: pushing its locks' lease forward would make them look held by a live runner.
                return False
            locks = s.execute(
                sa.update(EnvironmentLock)
                .where(EnvironmentLock.transition_id == transition_id)
                .values(lease_expires_at=expires)
            ).rowcount
        return bool(locks)

    def locks(self, app: str | None = None, environments: Sequence[str] | None = None) -> list[LockRecord]:
        q = sa.select(EnvironmentLock).order_by(EnvironmentLock.app, EnvironmentLock.environment)
        if app is not None:
            q = q.where(EnvironmentLock.app == app)
        if environments is not None:
            q = q.where(EnvironmentLock.environment.in_(list(environments)))
        with self._session() as s:
            return [LockRecord.of(row) for row in s.scalars(q)]

    def unfinished_transitions(self, app: str | None = None) -> list[TransitionRecord]:
        """Transitions nobody has closed: in progress (maybe with a dead holder) or interrupted."""
        q = sa.select(Transition).where(Transition.outcome.in_(UNFINISHED)).order_by(Transition.id)
        if app is not None:
            q = q.join(Run, Run.id == Transition.run_id).where(Run.app == app)
        with self._session() as s:
            return [_transition(row) for row in s.scalars(q)]

    def claim_transition(
        self, transition_id: int, expected: Holder | None, me: Holder, lease_s: float, actor: str
    ) -> bool:
        """Take over an abandoned transition for recovery: a compare-and-set on its recorded holder,
        so two recovering processes never both act on it. The takeover is recorded as an event."""
        expires = utcnow() + timedelta(seconds=lease_s)
        with self._session() as s:
            row = s.get(Transition, transition_id)
            if row is None or row.outcome not in UNFINISHED:
                return False
            q = sa.update(Transition).where(
                Transition.id == transition_id, Transition.outcome.in_(UNFINISHED)
            )
            if expected is None:
                q = q.where(Transition.holder_pid.is_(None))
            else:
                q = q.where(
                    _held_by(Transition, expected),
                )
            values = {
                "holder_host": me.host,
                "holder_pid": me.pid,
                "holder_start": me.start,
                "lease_expires_at": expires,
            }
            if s.execute(q.values(**values)).rowcount != 1:
                return False
            s.execute(
                sa.update(EnvironmentLock)
                .where(EnvironmentLock.transition_id == transition_id)
                .values(**values)
            )
            run = s.get(Run, row.run_id)
            was = expected.describe() if expected else "an unknown holder"
            s.add(
                Event(
                    app=run.app if run else None,
                    kind="lock_taken_over",
                    actor=actor,
                    message=f"transition {transition_id} taken over for recovery from {was}",
                    run_id=row.run_id,
                    transition_id=transition_id,
                    details={"from": was, "to": me.describe()},
                )
            )
            return True

    def interrupt_transition(self, transition_id: int, reason: str) -> None:
        """Leave the transition for `recover`: its side effects could not be undone now (the engine is
        gone), so its locks stay, with a lease that has already run out, until recovery reconciles."""
        now = utcnow()
        with self._session() as s:
            # Never reopen a transition someone already closed (recovery took it over meanwhile).
            if not s.execute(
                sa.update(Transition)
                .where(Transition.id == transition_id, Transition.outcome.in_(UNFINISHED))
                .values(outcome=INTERRUPTED, reason=reason, lease_expires_at=now)
            ).rowcount:
                return
            s.execute(
                sa.update(EnvironmentLock)
                .where(EnvironmentLock.transition_id == transition_id)
                .values(lease_expires_at=now)
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
        shows a run in a state its last transition does not explain.

        A compare-and-set on the transition being unfinished: a runner whose lease ran out (another
        host, cut off from the database) may come back after `recover` closed its transition and
        reconciled the environments; its verdict must not overwrite what recovery recorded, nor move
        the run again.
        """
        now = utcnow()
        with self._session() as s:
            closed = s.execute(
                sa.update(Transition)
                .where(Transition.id == transition_id, Transition.outcome.in_(UNFINISHED))
                .values(finished_at=now, outcome=outcome, reason=reason, result_state=result_state)
            ).rowcount
            transition = s.get(Transition, transition_id)
            if transition is None:
                raise BadInput(f"unknown transition {transition_id}")
            if closed != 1:
                raise Conflict(
                    f"transition {transition_id} of run {transition.run_id} was already closed "
                    f"({transition.outcome}: {transition.reason}); its verdict stands, nothing changed"
                )
            s.execute(
                sa.update(Run).where(Run.id == transition.run_id).values(state=result_state, updated_at=now)
            )
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
        compose_sha256: str | None = None,
        engine: str | None = None,
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
                compose_sha256=compose_sha256,
                engine=engine,
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

    def acquire_locks(
        self,
        app: str,
        environments: Sequence[str],
        *,
        holder: str,
        kind: str,
        reason: str | None = None,
        process: Holder | None = None,
        lease_s: float | None = None,
    ) -> None:
        """Locks that belong to no run: an operator action (rollback, recover; leased) or a hand-held
        lock (no process, no lease: it stays until `orchestrator unlock`)."""
        expires = utcnow() + timedelta(seconds=lease_s) if lease_s is not None else None
        try:
            with self._session() as s:
                for env in environments:
                    s.add(
                        EnvironmentLock(
                            app=app,
                            environment=env,
                            run_id=None,
                            transition_id=None,
                            holder=holder,
                            kind=kind,
                            reason=reason,
                            holder_host=process.host if process else None,
                            holder_pid=process.pid if process else None,
                            holder_start=process.start if process else None,
                            lease_expires_at=expires,
                        )
                    )
                s.flush()
        except IntegrityError:
            raise LockHeld(app, self.locks(app, environments)) from None

    def renew_locks(self, app: str, environments: Sequence[str], process: Holder, lease_s: float) -> bool:
        with self._session() as s:
            renewed = s.execute(
                sa.update(EnvironmentLock)
                .where(
                    EnvironmentLock.app == app,
                    EnvironmentLock.environment.in_(list(environments)),
                    _held_by(EnvironmentLock, process),
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            ).rowcount
        return renewed == len(environments)

    def release_locks(self, app: str, environments: Sequence[str], process: Holder) -> None:
        """Drop the run-less locks this process holds (never a lock someone else took over since)."""
        with self._session() as s:
            s.execute(
                sa.delete(EnvironmentLock).where(
                    EnvironmentLock.app == app,
                    EnvironmentLock.environment.in_(list(environments)),
                    EnvironmentLock.run_id.is_(None),
                    _held_by(EnvironmentLock, process),
                )
            )

    def delete_lock(self, app: str, environment: str, *, actor: str, why: str) -> LockRecord | None:
        """Remove one lock whoever holds it (unlock, or a stale operator lock), and record it."""
        with self._session() as s:
            row = s.get(EnvironmentLock, (app, environment))
            if row is None:
                return None
            found = LockRecord.of(row)
            s.delete(row)
            s.add(
                Event(
                    app=app,
                    environment=environment,
                    kind="unlock",
                    actor=actor,
                    message=why,
                    run_id=found.run_id,
                    transition_id=found.transition_id,
                    details={"lock": found.as_dict()},
                )
            )
            return found

    # waiters --------------------------------------------------------------------------------------

    def wait_for(self, app: str, environment: str, run_id: int, lease_s: float) -> None:
        """Say (and keep saying, while waiting) that this run wants ``environment``."""
        expires = utcnow() + timedelta(seconds=lease_s)
        with self._session() as s:
            row = s.get(LockWaiter, (app, environment, run_id))
            if row is None:
                s.add(LockWaiter(app=app, environment=environment, run_id=run_id, expires_at=expires))
            else:
                row.expires_at = expires

    def stop_waiting(self, app: str, environment: str, run_id: int) -> None:
        with self._session() as s:
            s.execute(
                sa.delete(LockWaiter).where(
                    LockWaiter.app == app, LockWaiter.environment == environment, LockWaiter.run_id == run_id
                )
            )

    # freezes and events ---------------------------------------------------------------------------

    def freeze(self, app: str | None, actor: str, reason: str) -> FreezeRecord:
        key = app or ALL_APPS
        with self._session() as s:
            row = s.get(Freeze, key)
            if row is None:
                row = Freeze(app=key, actor=actor, reason=reason, since=utcnow())
                s.add(row)
            else:
                row.actor, row.reason, row.since, row.ci_url = actor, reason, utcnow(), self.ci_url
            s.flush()
            s.add(Event(app=app, kind="freeze", actor=actor, message=reason, details={}))
            return FreezeRecord.of(row)

    def unfreeze(self, app: str | None, actor: str) -> FreezeRecord | None:
        key = app or ALL_APPS
        with self._session() as s:
            row = s.get(Freeze, key)
            if row is None:
                return None
            found = FreezeRecord.of(row)
            s.delete(row)
            s.add(
                Event(
                    app=app, kind="unfreeze", actor=actor, message=f"unfroze (was: {row.reason})", details={}
                )
            )
            return found

    def freezes(self) -> list[FreezeRecord]:
        with self._session() as s:
            return [FreezeRecord.of(r) for r in s.scalars(sa.select(Freeze).order_by(Freeze.app))]

    def frozen(self, app: str) -> FreezeRecord | None:
        """The freeze that stops ``app``: its own, else the one for every app."""
        with self._session() as s:
            for key in (app, ALL_APPS):
                row = s.get(Freeze, key)
                if row is not None:
                    return FreezeRecord.of(row)
        return None

    def record_event(
        self,
        kind: str,
        actor: str,
        message: str,
        *,
        app: str | None = None,
        environment: str | None = None,
        run_id: int | None = None,
        transition_id: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        with self._session() as s:
            s.add(
                Event(
                    app=app,
                    environment=environment,
                    kind=kind,
                    actor=actor,
                    message=message,
                    run_id=run_id,
                    transition_id=transition_id,
                    details=details or {},
                )
            )

    def events(
        self, *, app: str | None = None, run_id: int | None = None, limit: int = 50
    ) -> list[EventRecord]:
        q = sa.select(Event).order_by(Event.id.desc()).limit(limit)
        if app is not None:
            q = q.where(Event.app == app)
        if run_id is not None:
            q = q.where(Event.run_id == run_id)
        with self._session() as s:
            return [EventRecord.of(r) for r in s.scalars(q)]

    # approvals ------------------------------------------------------------------------------------

    def approvals(self, run_id: int) -> list[ApprovalRecord]:
        with self._session() as s:
            rows = s.scalars(sa.select(Approval).where(Approval.run_id == run_id).order_by(Approval.id))
            return [ApprovalRecord.of(r) for r in rows]

    def newer_contender(self, run_id: int, to_state: str, environment: str) -> tuple[int, str] | None:
        """The newer run of the same app that would supersede ``run_id`` on its next claim, and why."""
        with self._session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise BadInput(f"unknown run {run_id}: 'orchestrator runs list' shows the runs there are")
            return self._newer_contender(s, run, to_state, environment)

    def approve(
        self, run_id: int, from_state: str, environment: str, actor: str, reason: str | None
    ) -> ApprovalRecord:
        """Record the approval, if the run still waits in ``from_state`` (compare-and-set: a run moved
        meanwhile is not approved) and nobody approved it first (the unique constraint decides)."""
        try:
            with self._session() as s:
                still = s.execute(
                    sa.update(Run)
                    .where(Run.id == run_id, Run.state == from_state)
                    .values(updated_at=utcnow())
                ).rowcount
                if still != 1:
                    raise Conflict(f"run {run_id} is no longer in {from_state}: another command moved it")
                row = Approval(
                    run_id=run_id, environment=environment, decision="approved", actor=actor, reason=reason
                )
                s.add(row)
                s.flush()
                run = s.get(Run, run_id)
                assert run is not None
                s.add(
                    Event(
                        app=run.app,
                        environment=environment,
                        kind="approved",
                        actor=actor,
                        message=f"run {run_id} approved for {environment}"
                        + (f": {reason}" if reason else ""),
                        run_id=run_id,
                        details={"approval_id": row.id},
                    )
                )
                return ApprovalRecord.of(row)
        except IntegrityError:
            found = next(a for a in self.approvals(run_id) if a.environment == environment)
            raise Conflict(
                f"run {run_id} was already {found.describe()}: nothing to do",
                details={"approval": found.as_dict()},
            ) from None

    def reject(
        self, run_id: int, from_state: str, to_state: str, environment: str, actor: str, reason: str
    ) -> tuple[ApprovalRecord, int]:
        """End the run as rejected: the decision, a ``rejected`` transition explaining the run's new
        state, and an event, in one commit. Like ``supersede``, the compare-and-set on the run comes
        first and the check for an edge under way after it: a promotion already running is not
        stopped by a row written beside it (roll back instead)."""
        with self._session() as s:
            now = utcnow()
            transition = _end_run(
                s,
                run_id,
                from_state,
                to_state,
                actor,
                ending=REJECTED,
                reason=f"rejected by {actor}: {reason}",
                now=now,
                moved_by="command",
                under_way=lambda unfinished: Conflict(
                    f"run {run_id} is moving to {unfinished.to_state} right now (transition "
                    f"{unfinished.id}): too late to reject it; once it ends, roll back with "
                    f"'orchestrator rollback APP --env {environment}' if it must not stay"
                ),
            )
            row = Approval(
                run_id=run_id, environment=environment, decision=REJECTED, actor=actor, reason=reason, at=now
            )
            s.add(row)
            s.flush()
            run = s.get(Run, run_id)
            assert run is not None
            s.add(
                Event(
                    app=run.app,
                    environment=environment,
                    kind="rejected",
                    actor=actor,
                    message=f"run {run_id} rejected for {environment}: {reason}",
                    run_id=run_id,
                    transition_id=transition.id,
                    details={"approval_id": row.id},
                )
            )
            return ApprovalRecord.of(row), transition.id

    def approval_requested(self, run_id: int, app: str, environment: str, actor: str) -> bool:
        """Record (once per run and environment) that the run waits for a person; True the first time,
        so the caller notifies approvers once, not on every poll or CI retry."""
        with self._session() as s:
            seen = s.scalars(
                sa.select(Event.id)
                .where(
                    Event.run_id == run_id,
                    Event.kind == "approval_requested",
                    Event.environment == environment,
                )
                .limit(1)
            ).first()
            if seen is not None:
                return False
            s.add(
                Event(
                    app=app,
                    environment=environment,
                    kind="approval_requested",
                    actor=actor,
                    message=f"run {run_id} awaits approval for {environment}",
                    run_id=run_id,
                    details={},
                )
            )
            return True

    # DORA history ---------------------------------------------------------------------------------

    def prod_history(self, app: str | None, since: datetime) -> tuple[list[Promotion], list[Rollback]]:
        """What `metrics` computes from: the prod-edge transitions that finished since ``since`` and
        reached prod (succeeded, or failed after a prod step began), and prod's rollback releases
        since then with the release each replaced. Three queries, whatever the size of the window, each
        reading the window through an index (0006), not the whole history."""
        from orchestrator.metrics import Promotion, Rollback

        with self._session() as s:
            # The prod release each successful promotion made comes in the same query (by the index on
            # releases.transition_id), not by one more query per 500 promotions.
            sqlite = self.engine.dialect.name == "sqlite"
            q = (
                sa.select(
                    Transition.id,
                    Transition.run_id,
                    Transition.outcome,
                    _raw_time(Transition.finished_at, sqlite).label("finished_at"),
                    Run.app,
                    _raw_time(Run.committed_at, sqlite).label("committed_at"),
                    Release.id.label("release_id"),
                    _raw_time(Release.created_at, sqlite).label("released_at"),
                )
                .join(Run, Run.id == Transition.run_id)
                .outerjoin(
                    Release,
                    sa.and_(
                        Release.transition_id == Transition.id,
                        Release.environment == "prod",
                        Transition.outcome == "succeeded",
                    ),
                )
                .where(
                    Transition.to_state == "deploy",
                    Transition.outcome.in_(("succeeded", "failed")),
                    Transition.finished_at >= since,
                )
            )
            if app is not None:
                q = q.where(Run.app == app)
            # A window holds thousands of promotions: read as plain rows (no ORM result processing).
            found = s.connection().execute(q).all()
            # A transition that recorded two prod releases (a retried record step) counts once, with
            # its newest. Rows are unpacked by position: thousands of them, read by name, cost more
            # than the query.
            released: dict[int, tuple[int, Any]] = {}
            rows: dict[int, tuple[Any, ...]] = {}
            for row in found:
                tid, release_id, released_at = row[0], row[6], row[7]
                rows[tid] = tuple(row)
                if release_id is not None and (tid not in released or release_id > released[tid][0]):
                    released[tid] = (release_id, released_at)
            failed_ids = [tid for tid, row in rows.items() if row[2] == "failed"]
            touched: dict[int, datetime] = {}
            for chunk in _chunks(failed_ids):
                touched.update(
                    s.execute(
                        sa.select(StepRow.transition_id, sa.func.min(StepRow.started_at))
                        .where(StepRow.transition_id.in_(chunk), StepRow.environment == "prod")
                        .group_by(StepRow.transition_id)
                    ).all()
                )
            promotions = []
            for tid, run_id, outcome, finished_at, app_name, committed_at, _, _ in rows.values():
                succeeded = outcome == "succeeded"
                if not succeeded and tid not in touched:
                    continue
                release = released.get(tid)
                promotions.append(
                    Promotion(
                        app=app_name,
                        run_id=run_id,
                        transition_id=tid,
                        succeeded=succeeded,
                        finished_at=_time(finished_at),  # type: ignore[arg-type]
                        committed_at=_time(committed_at),
                        prod_touched_at=_aware(touched.get(tid)),
                        release_id=release[0] if release else None,
                        released_at=_time(release[1]) if release else None,
                    )
                )
            earlier = aliased(Release)
            replaced = (
                sa.select(sa.func.max(earlier.id))
                .where(earlier.app == Release.app, earlier.environment == "prod", earlier.id < Release.id)
                .scalar_subquery()
            )
            # `orchestrator rollback` only (no transition): a failed promotion's own restore undoes the
            # promotion that failed (already counted), not the good release it brings back.
            rq = sa.select(Release.app, Release.id, Release.created_at, replaced).where(
                Release.environment == "prod",
                Release.kind == "rollback",
                Release.transition_id.is_(None),
                Release.created_at >= since,
            )
            if app is not None:
                rq = rq.where(Release.app == app)
            rollbacks = [
                Rollback(app=a, release_id=i, at=_aware(at), replaced_release_id=prev)  # type: ignore[arg-type]
                for a, i, at, prev in s.execute(rq).all()
            ]
        return promotions, rollbacks

    def set_commit_time(self, run_id: int, committed_at: datetime) -> None:
        with self._session() as s:
            s.execute(
                sa.update(Run)
                .where(Run.id == run_id, Run.committed_at.is_(None))
                .values(committed_at=committed_at)
            )

    # steps ----------------------------------------------------------------------------------------

    def begin_step(self, transition_id: int, position: int, name: str, environment: str | None) -> int:
        with self._session() as s:
            row = StepRow(
                transition_id=transition_id,
                position=position,
                name=name,
                environment=environment,
                status="started",
                started_at=utcnow(),
                changes={},
            )
            s.add(row)
            s.flush()
            return row.id

    def finish_step(
        self, step_id: int, *, status: str, changes: dict[str, Any], error: str | None = None
    ) -> None:
        with self._session() as s:
            row = s.get(StepRow, step_id)
            assert row is not None
            row.status = status
            row.changes = dict(changes)
            row.error = error
            row.finished_at = utcnow()

    def get_transition(self, transition_id: int) -> TransitionRecord:
        with self._session() as s:
            row = s.get(Transition, transition_id)
            if row is None:
                raise BadInput(f"unknown transition {transition_id}")
            return _transition(row)

    def releases_of_run(self, run_id: int) -> list[ReleaseRecord]:
        with self._session() as s:
            rows = s.scalars(sa.select(Release).where(Release.run_id == run_id).order_by(Release.id))
            return [_release(r) for r in rows]

    def latest_release_outside(self, app: str, environment: str, transition_id: int) -> ReleaseRecord | None:
        """The environment's latest release not made by ``transition_id``: what it ran before."""
        with self._session() as s:
            row = s.scalars(
                sa.select(Release)
                .where(
                    Release.app == app,
                    Release.environment == environment,
                    sa.or_(Release.transition_id.is_(None), Release.transition_id != transition_id),
                )
                .order_by(Release.id.desc())
                .limit(1)
            ).first()
            return _release(row) if row else None

    def releases_of_transition(self, transition_id: int) -> list[ReleaseRecord]:
        with self._session() as s:
            rows = s.scalars(
                sa.select(Release).where(Release.transition_id == transition_id).order_by(Release.id)
            )
            return [_release(r) for r in rows]

    def latest_release(self, app: str, environment: str) -> ReleaseRecord | None:
        found = self.releases(app, environment, limit=1)
        return found[0] if found else None


def _end_run(
    s: Session,
    run_id: int,
    from_state: str,
    to_state: str,
    actor: str,
    *,
    ending: str,
    reason: str,
    now: datetime,
    moved_by: str,
    under_way: Callable[[Transition], Exception],
) -> Transition:
    """End a run outside any edge (superseded, rejected), inside the caller's commit: the
    compare-and-set on the run first and the check for an unfinished transition after it, so a run
    another process moved, or whose edge is under way, is never given a row its state does not
    explain; then the transition that records the ending, as one instant (left to the column
    default, started_at would come after finished_at)."""
    claimed = s.execute(
        sa.update(Run).where(Run.id == run_id, Run.state == from_state).values(state=ending, updated_at=now)
    ).rowcount
    if claimed != 1:
        raise Conflict(f"run {run_id} is no longer in {from_state}: another {moved_by} moved it")
    unfinished = s.scalars(
        sa.select(Transition).where(Transition.run_id == run_id, Transition.outcome.in_(UNFINISHED))
    ).first()
    if unfinished is not None:
        raise under_way(unfinished)
    transition = Transition(
        run_id=run_id,
        from_state=from_state,
        to_state=to_state,
        actor=actor,
        outcome=ending,
        reason=reason,
        result_state=ending,
        started_at=now,
        finished_at=now,
    )
    s.add(transition)
    s.flush()
    return transition
