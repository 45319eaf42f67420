"""Every query the CLI and the service need. No SQL lives anywhere else.

Values leave this module as the frozen dataclasses of store/records.py, never as ORM objects or driver
rows, so no caller can lazily load or accidentally write through a detached session.

The queries run over DB-API (store/sql.py), not SQLAlchemy: every CI call of the orchestrator opens
this store, and importing the ORM, configuring its mappers and compiling its statements cost more than
the command's own work before it talks to Docker (issue 12). SQLAlchemy is still here for what is off
that path, imported on first use: Alembic upgrades (``engine``), the ORM sessions the report queries of
history.py read through (``_session``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator import views
from orchestrator.errors import BadInput, Conflict, InfraUnavailable
from orchestrator.holder import Holder
from orchestrator.store import db, sql
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
    _release,
    _step,
    _transition,
    utcnow,
)
from orchestrator.store.sql import IntegrityViolation, Row, Transaction, in_list

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker


def __getattr__(name: str) -> Any:
    """``WITH_CHECKS_AND_STEPS`` for history.py's ORM queries, built on first use: defining it at import
    would import SQLAlchemy on every command."""
    if name == "WITH_CHECKS_AND_STEPS":
        from sqlalchemy.orm import selectinload

        from orchestrator.store.models import Transition

        # A TransitionRecord carries its gate results and steps: loaded for a whole list of transitions
        # in one query each, not lazily by two more queries per transition.
        return (selectinload(Transition.gate_results), selectinload(Transition.steps))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The tables whose rows say which CI job wrote them (orchestrator/identity.py).
_STAMPED = frozenset({"runs", "transitions", "releases", "environment_locks", "freezes", "events"})


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    """IN lists of bounded length (SQLite limits bound parameters per statement)."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _held_by(holder: Holder, prefix: str = "held") -> tuple[str, dict[str, Any]]:
    """Rows of exactly this process: host, pid and the pid's start time. The pid alone would let a
    process that inherited a dead holder's pid renew or drop what that holder left for recovery."""
    params: dict[str, Any] = {f"{prefix}_host": holder.host, f"{prefix}_pid": holder.pid}
    if holder.start is None:
        start = "holder_start IS NULL"
    else:
        start = f"holder_start = :{prefix}_start"
        params[f"{prefix}_start"] = holder.start
    return f"holder_host = :{prefix}_host AND holder_pid = :{prefix}_pid AND {start}", params


def transition_records(tx: Transaction, rows: list[Row]) -> list[TransitionRecord]:
    """Transitions with their gate results and steps: one query each for the whole list."""
    ids = [row.id for row in rows]
    checks: dict[int, list[Row]] = {i: [] for i in ids}
    steps: dict[int, list[Row]] = {i: [] for i in ids}
    for chunk in _chunks(ids):
        marks, params = in_list("t", chunk)
        for found, table in ((checks, "gate_results"), (steps, "transition_steps")):
            for child in tx.rows(
                f"SELECT * FROM {table} WHERE transition_id IN {marks} ORDER BY position, id", params
            ):
                found[child.transition_id].append(child)
    for row in rows:
        row.gate_results = checks[row.id]
        row.steps = steps[row.id]
    return [_transition(row) for row in rows]  # type: ignore[arg-type]


_UNFINISHED_IN, _UNFINISHED = in_list("unfinished", [str(o) for o in UNFINISHED])


class Store:
    def __init__(self, url: str, *, upgrade: bool = True, ci_url: str | None = None) -> None:
        """``ci_url``: the CI job this process runs in (orchestrator/identity.py). Every run,
        transition, lock, freeze, event and release this store writes carries it beside its actor."""
        self.url = url
        self.ci_url = ci_url
        self._db = sql.Database(url)
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        if upgrade:
            self.ensure_schema()

    def ensure_schema(self) -> None:
        """One query when the schema is current (every call but the first after an upgrade of
        orchestrator); Alembic, and with it SQLAlchemy, only when it is behind."""
        if self._db.revision() != db.HEAD_REVISION:
            db.upgrade(self.engine)

    @property
    def engine(self) -> Engine:
        """A SQLAlchemy engine on the same database, created on first use (upgrades, reports, tests)."""
        if self._engine is None:
            self._engine = db.make_engine(self.url)
        return self._engine

    def close(self) -> None:
        self._db.close()
        if self._engine is not None:
            self._engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """An ORM session, for history.py's report queries (not on the CLI's write path)."""
        from sqlalchemy.exc import OperationalError

        if self._sessions is None:
            import sqlalchemy as sa
            from sqlalchemy.orm import sessionmaker

            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
            if self.ci_url is not None:
                sa.event.listen(self._sessions, "before_flush", self._stamp_ci_url)
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise InfraUnavailable(
                f"database {db.safe_url(self.url)} failed: {str(exc.orig).strip().splitlines()[0]}"
            ) from None

    def _stamp_ci_url(self, session: Session, _context: Any, _instances: Any) -> None:
        # One place rather than a parameter on every write: one process is one CI job, and a write
        # method that forgot the link would leave a hole in the audit trail nobody notices.
        for row in session.new:
            if hasattr(row, "ci_url") and row.ci_url is None:
                row.ci_url = self.ci_url

    def _write(self) -> AbstractContextManager[Transaction]:
        return self._db.transaction(write=True)

    def reading(self) -> AbstractContextManager[Transaction]:
        """A read transaction, also for the read-side queries of store/listing.py."""
        return self._db.transaction(write=False)

    def _insert(
        self, tx: Transaction, table: str, values: dict[str, Any], *, returning_id: bool = True
    ) -> int:
        """INSERT with what models.py's Python-side defaults and the ORM's ci_url stamp used to add."""
        if table in _STAMPED and values.get("ci_url") is None:
            values["ci_url"] = self.ci_url
        return tx.insert(table, values, returning_id=returning_id) or 0

    def _event(self, tx: Transaction, **values: Any) -> int:
        values.setdefault("at", utcnow())
        values.setdefault("details", {})
        return self._insert(tx, "events", values)

    def _insert_transition(
        self, tx: Transaction, run_id: int, from_state: str, to_state: str, actor: str, **values: Any
    ) -> int:
        return self._insert(
            tx,
            "transitions",
            {"run_id": run_id, "from_state": from_state, "to_state": to_state, "actor": actor, **values},
        )

    @staticmethod
    def _hold_run_in(tx: Transaction, run_id: int, from_state: str, *, mover: str) -> datetime:
        """The compare-and-set a write about a run starts with: the run must still be in ``from_state``.
        On PostgreSQL, touching its row takes the row's lock for the rest of the transaction (SQLite's
        write transaction holds the whole database from its BEGIN IMMEDIATE). Returns the time written,
        for the rows that follow."""
        now = utcnow()
        held = tx.update(
            "UPDATE runs SET updated_at = :now WHERE id = :id AND state = :from_state",
            {"now": now, "id": run_id, "from_state": from_state},
        )
        if held != 1:
            raise Conflict(f"run {run_id} is no longer in {from_state}: {mover} moved it")
        return now

    @staticmethod
    def _unfinished(tx: Transaction, run_id: int) -> Row | None:
        return tx.one(
            f"SELECT * FROM transitions WHERE run_id = :run_id AND outcome IN {_UNFINISHED_IN} "
            "ORDER BY id LIMIT 1",
            {"run_id": run_id, **_UNFINISHED},
        )

    # runs -----------------------------------------------------------------------------------------

    def create_run(
        self, app: str, sha: str, actor: str, state: str, *, committed_at: datetime | None = None
    ) -> RunRecord:
        now = utcnow()
        values: dict[str, Any] = {
            "app": app,
            "sha": sha,
            "state": state,
            "actor": actor,
            "created_at": now,
            "updated_at": now,
            "committed_at": committed_at,
        }
        with self._write() as tx:
            run_id = self._insert(tx, "runs", values)
        return RunRecord.of(Row(id=run_id, **values))  # type: ignore[arg-type]

    def get_run(self, run_id: int) -> RunRecord:
        with self.reading() as tx:
            row = tx.one("SELECT * FROM runs WHERE id = :id", {"id": run_id})
        if row is None:
            raise BadInput(f"unknown run {run_id}: 'orchestrator runs list' shows the runs there are")
        return RunRecord.of(row)  # type: ignore[arg-type]

    def list_runs(
        self, *, app: str | None = None, state: str | None = None, limit: int = 20
    ) -> list[RunRecord]:
        return [RunRecord.of(r) for r in self._newest("runs", limit, app=app, state=state)]  # type: ignore[arg-type]

    def transitions(self, run_id: int) -> list[TransitionRecord]:
        with self.reading() as tx:
            rows = tx.rows("SELECT * FROM transitions WHERE run_id = :run_id ORDER BY id", {"run_id": run_id})
            return transition_records(tx, rows)

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
        database (SQLite: BEGIN IMMEDIATE, before anything is read) lock: two runners advancing the
        same run cannot both see it idle. The supersede rule is checked inside the same transaction,
        so an older run can never slip in between a newer run's release and its own lock.
        """
        try:
            with self._write() as tx:
                self._hold_run_in(tx, run_id, from_state, mover="another runner")
                unfinished = self._unfinished(tx, run_id)
                if unfinished is not None:
                    raise UnfinishedTransition(transition_records(tx, [unfinished])[0])
                run = tx.one("SELECT id, app FROM runs WHERE id = :id", {"id": run_id})
                assert run is not None
                newer = _newer_contender(tx, run, to_state, target_environment)
                if newer is not None:
                    raise Superseded(run_id, *newer)
                expires = utcnow() + timedelta(seconds=lease_s)
                process = {
                    "holder_host": holder.host,
                    "holder_pid": holder.pid,
                    "holder_start": holder.start,
                    "lease_expires_at": expires,
                }
                transition_id = self._insert_transition(
                    tx,
                    run_id,
                    from_state,
                    to_state,
                    actor,
                    started_at=utcnow(),
                    outcome=IN_PROGRESS,
                    **process,
                )
                for env in environments:
                    self._insert(
                        tx,
                        "environment_locks",
                        {
                            "app": run.app,
                            "environment": env,
                            "run_id": run_id,
                            "transition_id": transition_id,
                            "holder": actor,
                            "acquired_at": utcnow(),
                            "kind": RUN_LOCK,
                            **process,
                        },
                        returning_id=False,
                    )
                return transition_id
        except IntegrityViolation:
            found = self.get_run(run_id)
            raise LockHeld(found.app, self.locks(found.app, environments)) from None

    def supersede(self, run_id: int, from_state: str, to_state: str, actor: str, reason: str) -> int:
        """End a run that a newer one overtook: recorded as a transition, the run leaves the line.

        Like ``begin_transition`` the compare-and-set on the run comes first and the check for an
        unfinished transition after it, in one commit: another runner may have moved the run, or begun
        an edge of it, since the claim that found the newer run, and a ``superseded`` row written anyway
        would leave a run whose state its history does not explain.
        """
        with self._write() as tx:
            return self._end_run(
                tx,
                run_id,
                from_state,
                to_state,
                actor,
                ending=SUPERSEDED,
                reason=reason,
                now=utcnow(),
                moved_by="runner",
                under_way=UnfinishedTransition,
            )

    def renew_lease(self, transition_id: int, holder: Holder, lease_s: float) -> bool:
        """The heartbeat: push the lease of the transition and its locks forward. False when the
        transition is no longer ours (an operator forced its locks away, or it was closed)."""
        expires = utcnow() + timedelta(seconds=lease_s)
        held, params = _held_by(holder)
        with self._write() as tx:
            mine = tx.update(
                f"UPDATE transitions SET lease_expires_at = :expires WHERE id = :id AND outcome = :outcome "
                f"AND {held}",
                {"expires": expires, "id": transition_id, "outcome": IN_PROGRESS, **params},
            )
            if not mine:
                # Closed, interrupted (its locks' lease was run out on purpose, for `recover`) or taken
                # over: pushing its locks' lease forward would make them look held by a live runner.
                return False
            locks = tx.update(
                "UPDATE environment_locks SET lease_expires_at = :expires WHERE transition_id = :id",
                {"expires": expires, "id": transition_id},
            )
        return bool(locks)

    def locks(self, app: str | None = None, environments: Sequence[str] | None = None) -> list[LockRecord]:
        where, params = _where(app=app)
        if environments is not None:
            marks, envs = in_list("env", list(environments))
            where += (" AND" if where else " WHERE") + f" environment IN {marks}"
            params.update(envs)
        with self.reading() as tx:
            rows = tx.rows(f"SELECT * FROM environment_locks{where} ORDER BY app, environment", params)
        return [LockRecord.of(row) for row in rows]  # type: ignore[arg-type]

    def unfinished_transitions(self, app: str | None = None) -> list[TransitionRecord]:
        """Transitions nobody has closed: in progress (maybe with a dead holder) or interrupted."""
        query = f"SELECT t.* FROM transitions t WHERE t.outcome IN {_UNFINISHED_IN}"
        params: dict[str, Any] = dict(_UNFINISHED)
        if app is not None:
            query += " AND t.run_id IN (SELECT id FROM runs WHERE app = :app)"
            params["app"] = app
        with self.reading() as tx:
            return transition_records(tx, tx.rows(query + " ORDER BY t.id", params))

    def claim_transition(
        self, transition_id: int, expected: Holder | None, me: Holder, lease_s: float, actor: str
    ) -> bool:
        """Take over an abandoned transition for recovery: a compare-and-set on its recorded holder,
        so two recovering processes never both act on it. The takeover is recorded as an event."""
        expires = utcnow() + timedelta(seconds=lease_s)
        with self._write() as tx:
            row = tx.one("SELECT id, run_id, outcome FROM transitions WHERE id = :id", {"id": transition_id})
            if row is None or row.outcome not in UNFINISHED:
                return False
            if expected is None:
                held, params = "holder_pid IS NULL", {}
            else:
                held, params = _held_by(expected)
            values = {
                "me_host": me.host,
                "me_pid": me.pid,
                "me_start": me.start,
                "expires": expires,
                "id": transition_id,
            }
            assign = (
                "holder_host = :me_host, holder_pid = :me_pid, holder_start = :me_start, "
                "lease_expires_at = :expires"
            )
            claimed = tx.update(
                f"UPDATE transitions SET {assign} WHERE id = :id AND outcome IN {_UNFINISHED_IN} AND {held}",
                {**values, **_UNFINISHED, **params},
            )
            if claimed != 1:
                return False
            tx.update(f"UPDATE environment_locks SET {assign} WHERE transition_id = :id", values)
            app = tx.scalar("SELECT app FROM runs WHERE id = :id", {"id": row.run_id})
            was = expected.describe() if expected else "an unknown holder"
            self._event(
                tx,
                app=app,
                kind="lock_taken_over",
                actor=actor,
                message=f"transition {transition_id} taken over for recovery from {was}",
                run_id=row.run_id,
                transition_id=transition_id,
                details={"from": was, "to": me.describe()},
            )
            return True

    def interrupt_transition(self, transition_id: int, reason: str) -> None:
        """Leave the transition for `recover`: its side effects could not be undone now (the engine is
        gone), so its locks stay, with a lease that has already run out, until recovery reconciles."""
        now = utcnow()
        with self._write() as tx:
            # Never reopen a transition someone already closed (recovery took it over meanwhile).
            if not tx.update(
                "UPDATE transitions SET outcome = :outcome, reason = :reason, lease_expires_at = :now "
                f"WHERE id = :id AND outcome IN {_UNFINISHED_IN}",
                {"outcome": INTERRUPTED, "reason": reason, "now": now, "id": transition_id, **_UNFINISHED},
            ):
                return
            tx.update(
                "UPDATE environment_locks SET lease_expires_at = :now WHERE transition_id = :id",
                {"now": now, "id": transition_id},
            )

    def record_gate_result(self, transition_id: int, position: int, result: Any) -> None:
        with self._write() as tx:
            self._insert(
                tx,
                "gate_results",
                {
                    "transition_id": transition_id,
                    "position": position,
                    "name": result.name,
                    "status": str(result.status),
                    "reason": result.reason,
                    "details": dict(result.details),
                    "duration_s": result.duration_s,
                    "started_at": result.started_at,
                },
                returning_id=False,
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
        with self._write() as tx:
            closed = tx.update(
                "UPDATE transitions SET finished_at = :now, outcome = :outcome, reason = :reason, "
                f"result_state = :result_state WHERE id = :id AND outcome IN {_UNFINISHED_IN}",
                {
                    "now": now,
                    "outcome": outcome,
                    "reason": reason,
                    "result_state": result_state,
                    "id": transition_id,
                    **_UNFINISHED,
                },
            )
            transition = tx.one(
                "SELECT run_id, outcome, reason FROM transitions WHERE id = :id", {"id": transition_id}
            )
            if transition is None:
                raise BadInput(f"unknown transition {transition_id}")
            if closed != 1:
                raise Conflict(
                    f"transition {transition_id} of run {transition.run_id} was already closed "
                    f"({transition.outcome}: {transition.reason}); its verdict stands, nothing changed"
                )
            tx.update(
                "UPDATE runs SET state = :state, updated_at = :now WHERE id = :id",
                {"state": result_state, "now": now, "id": transition.run_id},
            )
            tx.update("DELETE FROM environment_locks WHERE transition_id = :id", {"id": transition_id})

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
        values: dict[str, Any] = {
            "app": app,
            "environment": environment,
            "image_id": image_id,
            "digest": digest,
            "revision": revision,
            "run_id": run_id,
            "transition_id": transition_id,
            "kind": kind,
            "compose_sha256": compose_sha256,
            "reason": reason,
            "created_at": utcnow(),
            "engine": engine,
        }
        with self._write() as tx:
            release_id = self._insert(tx, "releases", values)
        return _release(Row(id=release_id, **values))  # type: ignore[arg-type]

    def releases(self, app: str, environment: str, *, limit: int = 20) -> list[ReleaseRecord]:
        with self.reading() as tx:
            rows = tx.rows(
                "SELECT * FROM releases WHERE app = :app AND environment = :env "
                "ORDER BY id DESC LIMIT :limit",
                {"app": app, "env": environment, "limit": limit},
            )
        return [_release(r) for r in rows]  # type: ignore[arg-type]

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
            with self._write() as tx:
                for env in environments:
                    self._insert(
                        tx,
                        "environment_locks",
                        {
                            "app": app,
                            "environment": env,
                            "run_id": None,
                            "transition_id": None,
                            "holder": holder,
                            "acquired_at": utcnow(),
                            "kind": kind,
                            "reason": reason,
                            "holder_host": process.host if process else None,
                            "holder_pid": process.pid if process else None,
                            "holder_start": process.start if process else None,
                            "lease_expires_at": expires,
                        },
                        returning_id=False,
                    )
        except IntegrityViolation:
            raise LockHeld(app, self.locks(app, environments)) from None

    def renew_locks(self, app: str, environments: Sequence[str], process: Holder, lease_s: float) -> bool:
        marks, envs = in_list("env", list(environments))
        held, params = _held_by(process)
        with self._write() as tx:
            renewed = tx.update(
                f"UPDATE environment_locks SET lease_expires_at = :expires WHERE app = :app "
                f"AND environment IN {marks} AND {held}",
                {"expires": utcnow() + timedelta(seconds=lease_s), "app": app, **envs, **params},
            )
        return renewed == len(environments)

    def release_locks(self, app: str, environments: Sequence[str], process: Holder) -> None:
        """Drop the run-less locks this process holds (never a lock someone else took over since)."""
        marks, envs = in_list("env", list(environments))
        held, params = _held_by(process)
        with self._write() as tx:
            tx.update(
                f"DELETE FROM environment_locks WHERE app = :app AND environment IN {marks} "
                f"AND run_id IS NULL AND {held}",
                {"app": app, **envs, **params},
            )

    def delete_lock(self, app: str, environment: str, *, actor: str, why: str) -> LockRecord | None:
        """Remove one lock whoever holds it (unlock, or a stale operator lock), and record it."""
        key = {"app": app, "env": environment}
        with self._write() as tx:
            row = tx.one("SELECT * FROM environment_locks WHERE app = :app AND environment = :env", key)
            if row is None:
                return None
            found = LockRecord.of(row)  # type: ignore[arg-type]
            tx.update("DELETE FROM environment_locks WHERE app = :app AND environment = :env", key)
            self._event(
                tx,
                app=app,
                environment=environment,
                kind="unlock",
                actor=actor,
                message=why,
                run_id=found.run_id,
                transition_id=found.transition_id,
                details={"lock": views.lock_record(found)},
            )
            return found

    # waiters --------------------------------------------------------------------------------------

    def wait_for(self, app: str, environment: str, run_id: int, lease_s: float) -> None:
        """Say (and keep saying, while waiting) that this run wants ``environment``."""
        expires = utcnow() + timedelta(seconds=lease_s)
        key = {"app": app, "env": environment, "run_id": run_id}
        with self._write() as tx:
            renewed = tx.update(
                "UPDATE lock_waiters SET expires_at = :expires "
                "WHERE app = :app AND environment = :env AND run_id = :run_id",
                {**key, "expires": expires},
            )
            if not renewed:
                self._insert(
                    tx,
                    "lock_waiters",
                    {
                        "app": app,
                        "environment": environment,
                        "run_id": run_id,
                        "since": utcnow(),
                        "expires_at": expires,
                    },
                    returning_id=False,
                )

    def stop_waiting(self, app: str, environment: str, run_id: int) -> None:
        with self._write() as tx:
            tx.update(
                "DELETE FROM lock_waiters WHERE app = :app AND environment = :env AND run_id = :run_id",
                {"app": app, "env": environment, "run_id": run_id},
            )

    # freezes and events ---------------------------------------------------------------------------

    def freeze(self, app: str | None, actor: str, reason: str) -> FreezeRecord:
        key = app or ALL_APPS
        now = utcnow()
        values = {"app": key, "actor": actor, "reason": reason, "since": now, "ci_url": self.ci_url}
        with self._write() as tx:
            if not tx.update(
                "UPDATE freezes SET actor = :actor, reason = :reason, since = :since, ci_url = :ci_url "
                "WHERE app = :app",
                values,
            ):
                self._insert(tx, "freezes", dict(values), returning_id=False)
            self._event(tx, app=app, kind="freeze", actor=actor, message=reason, details={})
        return FreezeRecord(key, actor, reason, now, self.ci_url)

    def unfreeze(self, app: str | None, actor: str) -> FreezeRecord | None:
        key = app or ALL_APPS
        with self._write() as tx:
            row = tx.one("SELECT * FROM freezes WHERE app = :app", {"app": key})
            if row is None:
                return None
            found = FreezeRecord.of(row)  # type: ignore[arg-type]
            tx.update("DELETE FROM freezes WHERE app = :app", {"app": key})
            self._event(
                tx, app=app, kind="unfreeze", actor=actor, message=f"unfroze (was: {row.reason})", details={}
            )
            return found

    def freezes(self) -> list[FreezeRecord]:
        with self.reading() as tx:
            rows = tx.rows("SELECT * FROM freezes ORDER BY app")
        return [FreezeRecord.of(r) for r in rows]  # type: ignore[arg-type]

    def frozen(self, app: str) -> FreezeRecord | None:
        """The freeze that stops ``app``: its own, else the one for every app."""
        with self.reading() as tx:
            rows = {
                row.app: row
                for row in tx.rows(
                    "SELECT * FROM freezes WHERE app IN (:app, :all)", {"app": app, "all": ALL_APPS}
                )
            }
        row = rows.get(app) or rows.get(ALL_APPS)
        return FreezeRecord.of(row) if row is not None else None  # type: ignore[arg-type]

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
        with self._write() as tx:
            self._event(
                tx,
                app=app,
                environment=environment,
                kind=kind,
                actor=actor,
                message=message,
                run_id=run_id,
                transition_id=transition_id,
                details=details or {},
            )

    def events(
        self, *, app: str | None = None, run_id: int | None = None, limit: int = 50
    ) -> list[EventRecord]:
        return [EventRecord.of(r) for r in self._newest("events", limit, app=app, run_id=run_id)]  # type: ignore[arg-type]

    def _newest(self, table: str, limit: int, **equal: Any) -> list[Row]:
        """The newest ``limit`` rows of ``table`` (a name of ours, never input) matching ``equal``."""
        where, params = _where(**equal)
        with self.reading() as tx:
            return tx.rows(
                f"SELECT * FROM {table}{where} ORDER BY id DESC LIMIT :limit", {**params, "limit": limit}
            )

    # approvals ------------------------------------------------------------------------------------

    def approvals(self, run_id: int) -> list[ApprovalRecord]:
        with self.reading() as tx:
            rows = tx.rows("SELECT * FROM approvals WHERE run_id = :run_id ORDER BY id", {"run_id": run_id})
        return [ApprovalRecord.of(r) for r in rows]  # type: ignore[arg-type]

    def newer_contender(self, run_id: int, to_state: str, environment: str) -> tuple[int, str] | None:
        """The newer run of the same app that would supersede ``run_id`` on its next claim, and why."""
        with self.reading() as tx:
            run = tx.one("SELECT id, app FROM runs WHERE id = :id", {"id": run_id})
            if run is None:
                raise BadInput(f"unknown run {run_id}: 'orchestrator runs list' shows the runs there are")
            return _newer_contender(tx, run, to_state, environment)

    def approve(
        self, run_id: int, from_state: str, environment: str, actor: str, reason: str | None
    ) -> ApprovalRecord:
        """Record the approval, if the run still waits in ``from_state`` (compare-and-set: a run moved
        meanwhile is not approved) and nobody approved it first (the unique constraint decides)."""
        try:
            with self._write() as tx:
                now = self._hold_run_in(tx, run_id, from_state, mover="another command")
                approval = ApprovalRecord(0, run_id, environment, "approved", actor, reason, now)
                approval_id = self._approval(tx, approval)
                app = tx.scalar("SELECT app FROM runs WHERE id = :id", {"id": run_id})
                self._event(
                    tx,
                    app=app,
                    environment=environment,
                    kind="approved",
                    actor=actor,
                    message=f"run {run_id} approved for {environment}" + (f": {reason}" if reason else ""),
                    run_id=run_id,
                    details={"approval_id": approval_id},
                )
                return ApprovalRecord(approval_id, run_id, environment, "approved", actor, reason, now)
        except IntegrityViolation:
            found = next(a for a in self.approvals(run_id) if a.environment == environment)
            raise Conflict(
                f"run {run_id} was already {found.describe()}: nothing to do",
                details={"approval": views.approval(found)},
            ) from None

    def _approval(self, tx: Transaction, approval: ApprovalRecord) -> int:
        return self._insert(
            tx,
            "approvals",
            {
                "run_id": approval.run_id,
                "environment": approval.environment,
                "decision": approval.decision,
                "actor": approval.actor,
                "reason": approval.reason,
                "at": approval.at,
            },
        )

    def reject(
        self, run_id: int, from_state: str, to_state: str, environment: str, actor: str, reason: str
    ) -> tuple[ApprovalRecord, int]:
        """End the run as rejected: the decision, a ``rejected`` transition explaining the run's new
        state, and an event, in one commit. Like ``supersede``, the compare-and-set on the run comes
        first and the check for an edge under way after it: a promotion already running is not
        stopped by a row written beside it (roll back instead)."""
        with self._write() as tx:
            now = utcnow()
            transition_id = self._end_run(
                tx,
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
            decision = ApprovalRecord(0, run_id, environment, str(REJECTED), actor, reason, now)
            approval_id = self._approval(tx, decision)
            app = tx.scalar("SELECT app FROM runs WHERE id = :id", {"id": run_id})
            self._event(
                tx,
                app=app,
                environment=environment,
                kind="rejected",
                actor=actor,
                message=f"run {run_id} rejected for {environment}: {reason}",
                run_id=run_id,
                transition_id=transition_id,
                details={"approval_id": approval_id},
            )
        return ApprovalRecord(
            approval_id, run_id, environment, str(REJECTED), actor, reason, now
        ), transition_id

    def approval_requested(self, run_id: int, app: str, environment: str, actor: str) -> bool:
        """Record (once per run and environment) that the run waits for a person; True the first time,
        so the caller notifies approvers once, not on every poll or CI retry."""
        with self._write() as tx:
            seen = tx.scalar(
                "SELECT id FROM events WHERE run_id = :run_id AND kind = 'approval_requested' "
                "AND environment = :env LIMIT 1",
                {"run_id": run_id, "env": environment},
            )
            if seen is not None:
                return False
            self._event(
                tx,
                app=app,
                environment=environment,
                kind="approval_requested",
                actor=actor,
                message=f"run {run_id} awaits approval for {environment}",
                run_id=run_id,
                details={},
            )
            return True

    # DORA history ---------------------------------------------------------------------------------

    def set_commit_time(self, run_id: int, committed_at: datetime) -> None:
        with self._write() as tx:
            tx.update(
                "UPDATE runs SET committed_at = :at WHERE id = :id AND committed_at IS NULL",
                {"at": committed_at, "id": run_id},
            )

    # steps ----------------------------------------------------------------------------------------

    def begin_step(self, transition_id: int, position: int, name: str, environment: str | None) -> int:
        with self._write() as tx:
            return self._insert(
                tx,
                "transition_steps",
                {
                    "transition_id": transition_id,
                    "position": position,
                    "name": name,
                    "environment": environment,
                    "status": "started",
                    "started_at": utcnow(),
                    "changes": {},
                },
            )

    def finish_step(
        self, step_id: int, *, status: str, changes: dict[str, Any], error: str | None = None
    ) -> None:
        with self._write() as tx:
            found = tx.update(
                "UPDATE transition_steps SET status = :status, changes = :changes, error = :error, "
                "finished_at = :now WHERE id = :id",
                {"status": status, "changes": dict(changes), "error": error, "now": utcnow(), "id": step_id},
            )
            assert found == 1, f"unknown step {step_id}"

    def get_transition(self, transition_id: int) -> TransitionRecord:
        with self.reading() as tx:
            row = tx.one("SELECT * FROM transitions WHERE id = :id", {"id": transition_id})
            if row is None:
                raise BadInput(f"unknown transition {transition_id}")
            return transition_records(tx, [row])[0]

    def releases_of_run(self, run_id: int) -> list[ReleaseRecord]:
        with self.reading() as tx:
            rows = tx.rows("SELECT * FROM releases WHERE run_id = :run_id ORDER BY id", {"run_id": run_id})
        return [_release(r) for r in rows]  # type: ignore[arg-type]

    def latest_release_outside(self, app: str, environment: str, transition_id: int) -> ReleaseRecord | None:
        """The environment's latest release not made by ``transition_id``: what it ran before."""
        with self.reading() as tx:
            row = tx.one(
                "SELECT * FROM releases WHERE app = :app AND environment = :env "
                "AND (transition_id IS NULL OR transition_id != :tid) ORDER BY id DESC LIMIT 1",
                {"app": app, "env": environment, "tid": transition_id},
            )
        return _release(row) if row else None  # type: ignore[arg-type]

    def releases_of_transition(self, transition_id: int) -> list[ReleaseRecord]:
        with self.reading() as tx:
            rows = tx.rows(
                "SELECT * FROM releases WHERE transition_id = :tid ORDER BY id", {"tid": transition_id}
            )
        return [_release(r) for r in rows]  # type: ignore[arg-type]

    def latest_release(self, app: str, environment: str) -> ReleaseRecord | None:
        found = self.releases(app, environment, limit=1)
        return found[0] if found else None

    def _end_run(
        self,
        tx: Transaction,
        run_id: int,
        from_state: str,
        to_state: str,
        actor: str,
        *,
        ending: str,
        reason: str,
        now: datetime,
        moved_by: str,
        under_way: Callable[[TransitionRecord], Exception],
    ) -> int:
        """End a run outside any edge (superseded, rejected), inside the caller's commit: the
        compare-and-set on the run first and the check for an unfinished transition after it, so a run
        another process moved, or whose edge is under way, is never given a row its state does not
        explain; then the transition that records the ending, as one instant (started_at and
        finished_at both ``now``)."""
        claimed = tx.update(
            "UPDATE runs SET state = :ending, updated_at = :now WHERE id = :id AND state = :from_state",
            {"ending": ending, "now": now, "id": run_id, "from_state": from_state},
        )
        if claimed != 1:
            raise Conflict(f"run {run_id} is no longer in {from_state}: another {moved_by} moved it")
        unfinished = self._unfinished(tx, run_id)
        if unfinished is not None:
            raise under_way(transition_records(tx, [unfinished])[0])
        return self._insert_transition(
            tx,
            run_id,
            from_state,
            to_state,
            actor,
            outcome=ending,
            reason=reason,
            result_state=ending,
            started_at=now,
            finished_at=now,
        )


def _where(**equal: Any) -> tuple[str, dict[str, Any]]:
    """`` WHERE a = :a AND ...`` for the filters that are set (None and "" mean: not filtered)."""
    params = {name: value for name, value in equal.items() if value is not None and value != ""}
    if not params:
        return "", {}
    return " WHERE " + " AND ".join(f"{name} = :{name}" for name in params), params


def _newer_contender(tx: Transaction, run: Row, to_state: str, env: str) -> tuple[int, str] | None:
    """A newer run of the same app that already owns, is moving into, or waits for ``env``."""
    latest = tx.one(
        "SELECT id, kind, run_id FROM releases WHERE app = :app AND environment = :env "
        "ORDER BY id DESC LIMIT 1",
        {"app": run.app, "env": env},
    )
    if latest is not None and latest.kind == "deploy" and (latest.run_id or 0) > run.id:
        return latest.run_id or 0, f"its release {latest.id} already runs in {env}"
    moving = tx.scalar(
        "SELECT t.run_id FROM transitions t JOIN runs r ON r.id = t.run_id WHERE r.app = :app "
        f"AND t.run_id > :run_id AND t.to_state = :to_state AND t.outcome IN {_UNFINISHED_IN} LIMIT 1",
        {"app": run.app, "run_id": run.id, "to_state": to_state, **_UNFINISHED},
    )
    if moving is not None:
        return moving, f"it is moving to {to_state} now"
    waiting = tx.scalar(
        "SELECT run_id FROM lock_waiters WHERE app = :app AND environment = :env AND run_id > :run_id "
        "AND expires_at > :now LIMIT 1",
        {"app": run.app, "env": env, "run_id": run.id, "now": utcnow()},
    )
    if waiting is not None:
        return waiting, f"it is waiting for {env} too"
    return None
