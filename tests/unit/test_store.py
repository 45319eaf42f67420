"""Schema and store: models match migrations, upgrades are idempotent and automatic, the store's
compare-and-set refuses stale moves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from orchestrator.errors import BadInput, Conflict
from orchestrator.holder import Holder
from orchestrator.store import db
from orchestrator.store.models import Base
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace


def live(target: str) -> dict[str, Any]:
    """begin_transition's holder arguments for a live holder: this very process."""
    return {"target_environment": target, "holder": Holder.me(), "lease_s": 30.0}


def head_revision() -> str:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(db.migrations_dir()))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def diff_against_models(engine: sa.Engine, metadata: sa.MetaData) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, metadata))


# --------------------------------------------------------------------------------------------------
# migrations


def test_models_match_migrations(tmp_path: Path) -> None:
    """A model change without a migration works in tests (fresh tables) and breaks every existing
    database; autogenerate against a migrated database must find nothing to do."""
    store = Store(sqlite_url(tmp_path / "orch.db"))
    try:
        assert diff_against_models(store.engine, Base.metadata) == []
    finally:
        store.close()


def test_model_comparison_would_notice_a_missing_migration(tmp_path: Path) -> None:
    """Guards the guard: the comparison above must be able to fail."""
    store = Store(sqlite_url(tmp_path / "orch.db"))
    try:
        drifted = sa.MetaData()
        for table in Base.metadata.tables.values():
            table.to_metadata(drifted)
        sa.Table("runs", drifted, sa.Column("note", sa.Text(), nullable=True), extend_existing=True)
        diff = diff_against_models(store.engine, drifted)
        assert [d[0] for d in diff if isinstance(d, tuple)] == ["add_column"]
    finally:
        store.close()


def test_store_upgrades_a_fresh_database_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / ".orchestrator" / "orch.db"
    store = Store(sqlite_url(path))
    try:
        with store.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
            tables = set(sa.inspect(conn).get_table_names())
        assert {"runs", "transitions", "gate_results", "releases", "environment_locks"} <= tables
        assert store.list_runs() == []
    finally:
        store.close()


def test_store_without_upgrade_leaves_the_database_alone(tmp_path: Path) -> None:
    store = Store(sqlite_url(tmp_path / "orch.db"), upgrade=False)
    try:
        with store.engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        store.close()


def test_db_upgrade_twice_is_idempotent(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = workspace.path / "fresh.db"
    monkeypatch.setenv("ORCH_DATABASE_URL", sqlite_url(fresh))
    head = head_revision()

    first = cli("db", "upgrade", as_json=True).ok()
    assert first == {"database": sqlite_url(fresh), "from_revision": None, "to_revision": head}
    second = cli("db", "upgrade", as_json=True).ok()
    assert second == {"database": sqlite_url(fresh), "from_revision": head, "to_revision": head}

    human = cli("db", "upgrade")
    human.ok()
    assert human.stdout == f"{sqlite_url(fresh)} is at {head}: nothing to do\n"
    store = Store(sqlite_url(fresh), upgrade=False)
    try:
        assert diff_against_models(store.engine, Base.metadata) == []
    finally:
        store.close()


def test_db_upgrade_human_output_on_a_fresh_database(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = workspace.path / "fresh.db"
    monkeypatch.setenv("ORCH_DATABASE_URL", sqlite_url(fresh))
    result = cli("db", "upgrade")
    result.ok()
    assert result.stdout == f"{sqlite_url(fresh)} upgraded from empty to {head_revision()}\n"


def test_invalid_database_url_is_bad_input(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", "not a url")
    message = cli("runs", "list", as_json=True).error(2, "bad_input")
    assert message == "ORCH_DATABASE_URL 'not a url' is not a valid SQLAlchemy URL"


def test_missing_driver_is_bad_input(cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", "nosuchdialect://u@h/db")
    message = cli("runs", "list", as_json=True).error(2, "bad_input")
    assert message.startswith("no driver for nosuchdialect://u@h/db")


# --------------------------------------------------------------------------------------------------
# the store's own guarantees


def test_begin_transition_refuses_a_run_that_moved(store: Store) -> None:
    """Compare-and-set: a runner holding a stale view of the run must not start an edge from it."""
    run = store.create_run("demo", "a" * 40, "ci", "development")
    with pytest.raises(
        Conflict, match=f"run {run.id} is no longer in deploy-staging: another runner moved it"
    ):
        store.begin_transition(run.id, "deploy-staging", "deploy", "ci", ("staging", "prod"), **live("prod"))
    assert store.transitions(run.id) == []


def test_finish_transition_moves_the_run_and_releases_the_locks(store: Store) -> None:
    a = store.create_run("demo", "a" * 40, "ci", "development")
    b = store.create_run("demo", "b" * 40, "ci", "development")
    t = store.begin_transition(a.id, "development", "deploy-staging", "ci", ("staging",), **live("staging"))
    with pytest.raises(Conflict, match=f"locked by run {a.id}"):
        store.begin_transition(b.id, "development", "deploy-staging", "ci", ("staging",), **live("staging"))
    store.finish_transition(t, outcome="succeeded", reason=None, result_state="deploy-staging")
    assert store.get_run(a.id).state == "deploy-staging"
    (record,) = store.transitions(a.id)
    assert (record.outcome, record.result_state) == ("succeeded", "deploy-staging")
    assert record.finished_at is not None and record.finished_at.tzinfo is not None
    store.begin_transition(b.id, "development", "deploy-staging", "ci", ("staging",), **live("staging"))


def test_prod_edge_holds_staging_as_well(store: Store) -> None:
    a = store.create_run("demo", "a" * 40, "ci", "deploy-staging")
    b = store.create_run("demo", "b" * 40, "ci", "development")
    store.begin_transition(a.id, "deploy-staging", "deploy", "ci", ("staging", "prod"), **live("prod"))
    with pytest.raises(Conflict, match=f"demo staging is locked by run {a.id}"):
        store.begin_transition(b.id, "development", "deploy-staging", "ci", ("staging",), **live("staging"))


def test_unknown_run(store: Store) -> None:
    with pytest.raises(BadInput, match="unknown run 12345"):
        store.get_run(12345)
    assert store.transitions(12345) == []


def test_head_revision_constant_matches_the_migrations() -> None:
    """The fast schema check compares against HEAD_REVISION; a new migration must move it too."""
    from orchestrator.store import db

    assert db.script_head() == db.HEAD_REVISION
