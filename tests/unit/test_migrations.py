"""Every migration upgrades and downgrades on the session's backend (``--db``), with history in place.

An operator who has to roll orchestrator back needs ``alembic downgrade`` to keep the runs it already
recorded; a migration that only ever ran against empty SQLite files proves neither. So each step is
taken one at a time, and before each downgrade the database holds a run, a transition with a gate
result, a release and the run's lock, plus rows only that revision knows (an operator lock, a
hand-held lock, recorded steps, a freeze, a waiter, an event).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext

from orchestrator.store import db
from orchestrator.store.models import Base

# History every revision has: it must survive every downgrade but the last (to base, no tables).
CORE = ("runs", "transitions", "gate_results", "releases", "environment_locks")


def revisions() -> list[str]:
    """Base to head, in order."""
    return [script.revision for script in reversed(list(db._scripts().walk_revisions()))]


def alembic(conn: sa.Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(db.migrations_dir()))
    cfg.attributes["connection"] = conn
    return cfg


def current(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def tables(conn: sa.Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names()) - {"alembic_version"}


def insert(conn: sa.Connection, table_name: str, /, **values: Any) -> Any:
    """Insert into the table as this revision has it: the columns it does not have yet are left out."""
    table = sa.Table(table_name, sa.MetaData(), autoload_with=conn)
    row = {key: value for key, value in values.items() if key in table.c}
    return conn.execute(table.insert().values(**row)).inserted_primary_key


def ids(conn: sa.Connection, name: str, column: str = "id") -> set[Any]:
    return set(conn.execute(sa.text(f"SELECT {column} FROM {name}")).scalars())


def seed(conn: sa.Connection, tag: str) -> dict[str, Any]:
    """One run's worth of history, valid at the current revision; returns the keys of what it wrote."""
    now = datetime.now(UTC)
    holder = {
        "holder_host": "runner-1",
        "holder_pid": 4242,
        "holder_start": "12345",
        "lease_expires_at": now + timedelta(minutes=5),
    }
    app = f"app-{tag}"
    (run_id,) = insert(
        conn,
        "runs",
        app=app,
        sha="a" * 40,
        state="deploy-staging",
        actor="ci",
        ci_url="https://ci.example/jobs/1",
        created_at=now,
        updated_at=now,
    )
    (transition_id,) = insert(
        conn,
        "transitions",
        run_id=run_id,
        from_state="deploy-staging",
        to_state="deploy",
        actor="ci",
        started_at=now,
        outcome="in_progress",
        **holder,
    )
    (gate_id,) = insert(
        conn,
        "gate_results",
        transition_id=transition_id,
        position=0,
        name="commit_exists",
        status="passed",
        reason="ok",
        details={"sha": "a" * 40},
        duration_s=0.1,
        started_at=now,
    )
    (release_id,) = insert(
        conn,
        "releases",
        app=app,
        environment="staging",
        image_id="sha256:" + "b" * 64,
        revision="a" * 40,
        run_id=run_id,
        transition_id=transition_id,
        kind="deploy",
        created_at=now,
    )
    lock = dict(holder="run", acquired_at=now, **holder)
    insert(
        conn,
        "environment_locks",
        app=app,
        environment="prod",
        run_id=run_id,
        transition_id=transition_id,
        kind="run",
        **lock,
    )
    written = {"run": run_id, "transition": transition_id, "gate": gate_id, "release": release_id, "app": app}
    have = tables(conn)
    if current(conn) != "0001":  # from 0002 on, a lock may belong to no run (an operator's rollback)
        insert(
            conn, "environment_locks", app=app, environment="staging", run_id=None, kind="operator", **lock
        )
    if "transition_steps" in have:
        insert(
            conn,
            "environment_locks",
            app=f"{app}-manual",
            environment="prod",
            run_id=None,
            kind="manual",
            reason="hands off",
            **lock,
        )
        insert(
            conn,
            "transition_steps",
            transition_id=transition_id,
            position=0,
            name="build",
            environment="staging",
            status="done",
            started_at=now,
            finished_at=now,
            changes={"image": "x"},
        )
        insert(conn, "freezes", app=app, actor="ops", reason="incident", since=now)
        insert(conn, "lock_waiters", app=app, environment="prod", run_id=run_id, since=now, expires_at=now)
        insert(
            conn,
            "events",
            at=now,
            app=app,
            environment="prod",
            kind="lock_forced",
            actor="ops",
            message="forced",
            run_id=run_id,
            transition_id=transition_id,
            details={},
        )
    if "approvals" in have:
        # A run a person rejected (a state 0004 does not know) and one approved.
        (rejected_run,) = insert(
            conn, "runs", app=app, sha="c" * 40, state="rejected", actor="ci", created_at=now, updated_at=now
        )
        insert(
            conn,
            "transitions",
            run_id=rejected_run,
            from_state="deploy-staging",
            to_state="deploy",
            actor="ops",
            started_at=now,
            finished_at=now,
            outcome="rejected",
            result_state="rejected",
            reason="rejected by ops: not on a Friday",
        )
        for run, decision in ((rejected_run, "rejected"), (run_id, "approved")):
            insert(conn, "approvals", run_id=run, environment="prod", decision=decision, actor="ops", at=now)
        written["rejected_run"] = rejected_run
    return written


def models_diff(conn: sa.Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(ctx, Base.metadata))


@pytest.fixture
def conn(fresh_db_url: str) -> Iterator[sa.Connection]:
    """A connection made the way orchestrator makes them (SQLite: foreign keys on, WAL)."""
    engine = db.make_engine(fresh_db_url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def test_every_migration_upgrades_and_downgrades_with_history_in_place(conn: sa.Connection) -> None:
    steps = revisions()
    assert steps[-1] == db.HEAD_REVISION

    for revision in steps:
        command.upgrade(alembic(conn), revision)
        conn.commit()
        assert current(conn) == revision
    assert models_diff(conn) == [], "the models and the migrations disagree at head"

    kept: list[dict[str, Any]] = []
    for revision in reversed(steps):
        kept.append(seed(conn, revision))
        conn.commit()
        target = steps[steps.index(revision) - 1] if revision != steps[0] else "base"
        command.downgrade(alembic(conn), target)
        conn.commit()
        if target == "base":
            assert current(conn) is None
            assert tables(conn) == set()
            break
        assert current(conn) == target
        assert set(CORE) <= tables(conn)
        runs, transitions, gates, releases = (
            ids(conn, t) for t in ("runs", "transitions", "gate_results", "releases")
        )
        locks = set(conn.execute(sa.text("SELECT app, environment, run_id FROM environment_locks")))
        for written in kept:
            where = f"after downgrading {revision} -> {target}, rows written at {written['app']}"
            assert written["run"] in runs, f"{where}: the run is gone"
            assert written["transition"] in transitions, f"{where}: the transition is gone"
            assert written["gate"] in gates, f"{where}: the gate result is gone"
            assert written["release"] in releases, f"{where}: the release is gone"
            assert (written["app"], "prod", written["run"]) in locks, f"{where}: the run's lock is gone"
        # Locks a downgraded schema cannot express are dropped, not left to break the older code.
        if target == "0001":
            assert all(run_id is not None for _, _, run_id in locks), locks
        if target == "0002":
            assert not any(app.endswith("-manual") for app, _, _ in locks), locks
        if target == "0004":
            # The older code knows no rejected state: the run is back where it waited, its history kept.
            states = dict(conn.execute(sa.text("SELECT id, state FROM runs")).all())
            assert "rejected" not in states.values(), states
            rejected_runs = [w["rejected_run"] for w in kept if "rejected_run" in w]
            assert rejected_runs and all(states[r] == "deploy-staging" for r in rejected_runs), states

    command.upgrade(alembic(conn), "head")
    conn.commit()
    assert current(conn) == db.HEAD_REVISION
    assert models_diff(conn) == [], "upgrading again does not give the models' schema"


def test_models_match_migrations_on_this_backend(fresh_db_url: str, db_backend: str) -> None:
    """tests/unit/test_store.py compares on SQLite; PostgreSQL has real types and server defaults, where
    a model and its migration can disagree in ways SQLite never shows."""
    store = db.make_engine(fresh_db_url)
    try:
        db.upgrade(store)
        with store.connect() as conn:
            assert conn.dialect.name == db_backend
            assert models_diff(conn) == []
    finally:
        store.dispose()
