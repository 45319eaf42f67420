"""The store's DB-API layer (orchestrator/store/sql.py) against the schema SQLAlchemy owns.

The CLI's store writes without SQLAlchemy, and history.py, metrics, the dashboard and Alembic's data
migrations read with it: every kind of row the store writes must read back through the ORM models with
the same values, and rows SQLAlchemy wrote (every existing database) must read back through the store.
Run on both databases (``--db=postgresql``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.errors import BadInput
from orchestrator.holder import Holder
from orchestrator.store import models, sql
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
)
from orchestrator.store.repository import Store
from orchestrator.verdict import GateResult, GateStatus

ME = Holder("host-a", 4242, "777")
CI = "https://ci.example/job/1"


@pytest.fixture
def ci_store(fresh_db_url: str) -> Iterator[Store]:
    s = Store(fresh_db_url, ci_url=CI)
    yield s
    s.close()


def test_the_column_lists_name_every_timestamp_and_json_column_of_the_models() -> None:
    """sql.py converts SQLite's text by column name: a DateTime or JSON column added to models.py and
    not listed there would reach the service as a string."""
    times, jsons = set(), set()
    for table in models.Base.metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, sa.DateTime):
                times.add(column.name)
            elif isinstance(column.type, sa.JSON):
                jsons.add(column.name)
            else:
                assert column.name not in sql.TIME_COLUMNS | sql.JSON_COLUMNS, (table.name, column.name)
    assert times == set(sql.TIME_COLUMNS)
    assert jsons == set(sql.JSON_COLUMNS)


def _orm(store: Store, model: type[Any], **where: Any) -> list[Any]:
    with store._session() as s:
        q = sa.select(model).filter_by(**where)
        return list(s.scalars(q))


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def test_every_row_the_store_writes_reads_back_through_the_orm(ci_store: Store) -> None:
    store = ci_store
    committed = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    run = store.create_run("shop", "a" * 40, "alice", "development", committed_at=committed)
    tid = store.begin_transition(
        run.id,
        "development",
        "deploy-staging",
        "alice",
        ("staging",),
        target_environment="staging",
        holder=ME,
        lease_s=60,
    )
    started = datetime.now(UTC)
    gate = GateResult("tests", GateStatus.PASS, "ok", {"n": 1, "nested": {"é": [1, 2]}}, 0.25, started)
    store.record_gate_result(tid, 0, gate)
    step = store.begin_step(tid, 0, "build", "staging")
    store.finish_step(step, status="done", changes={"image_id": "sha256:abc"}, error=None)
    store.record_release(
        app="shop",
        environment="staging",
        image_id="sha256:abc",
        revision="a" * 40,
        run_id=run.id,
        transition_id=tid,
        compose_sha256="c" * 64,
        engine="local",
    )
    store.wait_for("shop", "prod", run.id, 30)
    store.freeze("shop", "bob", "incident")
    store.acquire_locks("other", ["prod"], holder="bob", kind="manual", reason="maintenance")
    store.record_event("note", "bob", "hello", app="shop", details={"k": "v"})

    [orm_run] = _orm(store, Run, id=run.id)
    assert (orm_run.app, orm_run.sha, orm_run.state, orm_run.actor, orm_run.ci_url) == (
        "shop",
        "a" * 40,
        "development",
        "alice",
        CI,
    )
    assert _aware(orm_run.committed_at) == committed
    assert _aware(orm_run.created_at) == run.created_at
    [orm_t] = _orm(store, Transition, id=tid)
    assert orm_t.outcome == "in_progress" and orm_t.holder_pid == 4242 and orm_t.holder_start == "777"
    assert orm_t.ci_url == CI and _aware(orm_t.lease_expires_at) > started
    [orm_g] = _orm(store, GateResultRow, transition_id=tid)
    assert (orm_g.name, orm_g.status, orm_g.details, orm_g.duration_s) == (
        "tests",
        "pass",
        {"n": 1, "nested": {"é": [1, 2]}},
        0.25,
    )
    assert _aware(orm_g.started_at) == started
    [orm_s] = _orm(store, StepRow, id=step)
    assert orm_s.changes == {"image_id": "sha256:abc"} and orm_s.status == "done" and orm_s.finished_at
    [orm_r] = _orm(store, Release, transition_id=tid)
    assert (orm_r.kind, orm_r.engine, orm_r.compose_sha256, orm_r.ci_url) == ("deploy", "local", "c" * 64, CI)
    [orm_w] = _orm(store, LockWaiter, run_id=run.id)
    assert _aware(orm_w.expires_at) > _aware(orm_w.since)  # type: ignore[operator]
    [orm_f] = _orm(store, Freeze, app="shop")
    assert (orm_f.actor, orm_f.reason, orm_f.ci_url) == ("bob", "incident", CI)
    locks = {(lk.app, lk.environment): lk for lk in _orm(store, EnvironmentLock)}
    assert locks["shop", "staging"].transition_id == tid and locks["shop", "staging"].kind == "run"
    assert locks["other", "prod"].kind == "manual" and locks["other", "prod"].lease_expires_at is None
    events = {e.kind: e for e in _orm(store, Event)}
    assert events["note"].details == {"k": "v"} and events["note"].ci_url == CI
    assert events["freeze"].details == {}

    # ... and what the ORM reads is what the store itself reads back.
    [record] = store.transitions(run.id)
    assert record.checks == (gate,)
    assert record.steps[0].changes == {"image_id": "sha256:abc"}
    assert store.get_run(run.id).created_at == run.created_at

    store.finish_transition(tid, outcome="succeeded", reason=None, result_state="deploy-staging")
    store.approve(run.id, "deploy-staging", "prod", "carol", "looks good")
    [orm_a] = _orm(store, Approval, run_id=run.id)
    assert (orm_a.decision, orm_a.actor, orm_a.reason) == ("approved", "carol", "looks good")
    [orm_t] = _orm(store, Transition, id=tid)
    assert orm_t.outcome == "succeeded" and _aware(orm_t.finished_at) >= _aware(orm_t.started_at)  # type: ignore[operator]


def test_rows_sqlalchemy_wrote_read_back_through_the_store(ci_store: Store) -> None:
    """Every database written before the store left SQLAlchemy."""
    store = ci_store
    at = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    with store._session() as s:
        run = Run(app="shop", sha="b" * 40, state="deploy", actor="alice", created_at=at, updated_at=at)
        s.add(run)
        s.flush()
        t = Transition(
            run_id=run.id,
            from_state="deploy-staging",
            to_state="deploy",
            actor="alice",
            started_at=at,
            finished_at=at + timedelta(seconds=3),
            outcome="succeeded",
            result_state="deploy",
        )
        s.add(t)
        s.flush()
        s.add(
            GateResultRow(
                transition_id=t.id,
                position=0,
                name="health",
                status="fail",
                reason="r",
                details={"a": [1, "x"]},
                duration_s=1.5,
                started_at=at,
            )
        )
        s.add(
            StepRow(
                transition_id=t.id, position=0, name="swap", status="done", started_at=at, changes={"x": 1}
            )
        )
        s.add(Release(app="shop", environment="prod", image_id="sha256:1", revision="b" * 40, run_id=run.id))
        s.add(Event(app="shop", kind="k", actor="a", message="m", run_id=run.id, details={"d": None}, at=at))
        s.add(Freeze(app="*", actor="a", reason="r", since=at))
        s.add(Approval(run_id=run.id, environment="prod", decision="approved", actor="c", at=at))
        s.add(
            EnvironmentLock(app="shop", environment="prod", holder="h", acquired_at=at, lease_expires_at=at)
        )
        run_id, tid = run.id, t.id
    got = store.get_run(run_id)
    assert (got.created_at, got.ci_url, got.state) == (at, CI, "deploy")
    [tr] = store.transitions(run_id)
    assert (tr.id, tr.started_at, tr.finished_at) == (tid, at, at + timedelta(seconds=3))
    assert tr.checks[0].details == {"a": [1, "x"]} and tr.checks[0].status == GateStatus.FAIL
    assert tr.checks[0].started_at == at and tr.steps[0].changes == {"x": 1}
    [release] = store.releases("shop", "prod")
    assert release.kind == "deploy" and release.created_at.tzinfo is not None
    [event] = store.events(app="shop")
    assert event.details == {"d": None} and event.at == at
    frozen = store.frozen("anything")
    assert frozen is not None and frozen.since == at
    [approval] = store.approvals(run_id)
    assert approval.at == at
    [lock] = store.locks("shop")
    assert lock.acquired_at == at and lock.lease_expires_at == at


def test_sqlite_text_is_exactly_what_sqlalchemy_writes(ci_store: Store) -> None:
    """On SQLite the timestamp text is compared as text (leases, windows): the store's must be the
    ORM's, byte for byte, or a comparison between old and new rows would be wrong."""
    if ci_store._db.backend != sql.SQLITE:
        pytest.skip("SQLite stores timestamps and JSON as text; PostgreSQL as typed values")
    at = datetime(2026, 5, 6, 7, 8, 9, 10, tzinfo=UTC)
    run = ci_store.create_run("shop", "c" * 40, "a", "development", committed_at=at)
    with ci_store._session() as s:
        s.add(Run(app="shop", sha="d" * 40, state="development", actor="a", committed_at=at))
    ci_store.record_event("k", "a", "m", details={"é": [1, None], "b": "x"})
    with ci_store._session() as s:
        s.add(Event(kind="k", actor="a", message="m", details={"é": [1, None], "b": "x"}))
    path = ci_store._db.target.database
    with sqlite3.connect(path) as conn:
        texts = [r[0] for r in conn.execute("SELECT committed_at FROM runs ORDER BY id")]
        details = [r[0] for r in conn.execute("SELECT details FROM events ORDER BY id")]
    assert texts == ["2026-05-06 07:08:09.000010"] * 2, texts
    assert details[0] == details[1], details
    assert run.created_at.tzinfo is UTC


def test_a_non_utc_time_is_stored_as_utc(ci_store: Store) -> None:
    plus2 = datetime(2026, 5, 6, 9, 0, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    run = ci_store.create_run("shop", "e" * 40, "a", "development", committed_at=plus2)
    [orm_run] = _orm(ci_store, Run, id=run.id)
    assert _aware(orm_run.committed_at) == plus2  # the same instant


# -- URLs ------------------------------------------------------------------------------------------


def test_postgresql_urls_are_read_like_sqlalchemy_reads_them() -> None:
    target = sql.parse_url("postgresql+psycopg://us%40er:p%3Ass%40w@db.example:6543/or%20ch?sslmode=require")
    assert target.backend == sql.POSTGRESQL
    assert dict(target.connect_args) == {
        "host": "db.example",
        "port": 6543,
        "user": "us@er",
        "password": "p:ss@w",
        "dbname": "or ch",
        "sslmode": "require",
        "connect_timeout": 10,
    }
    assert target.masked == "postgresql+psycopg://us%40er:***@db.example:6543/or%20ch?sslmode=require"
    socket = sql.parse_url("postgresql://orch@/orch?host=/var/run/postgresql&connect_timeout=3")
    assert dict(socket.connect_args) == {
        "user": "orch",
        "dbname": "orch",
        "host": "/var/run/postgresql",
        "connect_timeout": "3",
    }


def test_sqlite_urls_are_read_like_sqlalchemy_reads_them(tmp_path: Any) -> None:
    assert sql.parse_url(f"sqlite:///{tmp_path}/a%20b.db?timeout=5").database == f"{tmp_path}/a b.db"
    assert sql.parse_url("sqlite:///rel/o.db").database == "rel/o.db"
    assert sql.parse_url("sqlite:////srv/a:b@c/o.db").database == "/srv/a:b@c/o.db"
    uri = sql.parse_url("sqlite:///file:x.db?mode=ro&uri=true")
    assert (uri.database, uri.uri) == ("file:x.db?mode=ro", True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:secret@h/db", "no driver for mysql://u:***@h/db"),
        ("postgresql+psycopg2://u:secret@h/db", "no driver for postgresql+psycopg2://u:***@h/db"),
        ("sqlite://", "is an in-memory database"),
        ("sqlite:///:memory:", "is an in-memory database"),
        ("sqlite://host/x.db", "is not a valid SQLite URL"),
        ("no url", "is not a valid SQLAlchemy URL"),
    ],
)
def test_urls_the_store_cannot_use_are_bad_input(url: str, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)) as caught:
        sql.parse_url(url)
    assert "secret" not in str(caught.value)


def test_named_placeholders_are_rewritten_once_for_psycopg() -> None:
    database = sql.Database.__new__(sql.Database)
    database.backend = sql.POSTGRESQL
    database._statements = {}
    text = "SELECT '100%' FROM t WHERE a = :a AND b IN (:b0, :b1) AND c::text = :c"
    assert database.statement(text) == (
        "SELECT '100%%' FROM t WHERE a = %(a)s AND b IN (%(b0)s, %(b1)s) AND c::text = %(c)s"
    )
    assert database.statement(text) is database.statement(text)


def test_a_postgresql_connection_cut_while_idle_is_replaced(
    ci_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restart or a proxy's idle timeout cuts a long-lived process's connection (``serve``,
    a deploy waiting for a lock): the next call reconnects instead of failing, as SQLAlchemy's
    pre-ping did."""
    if ci_store._db.backend != sql.POSTGRESQL:
        pytest.skip("SQLite has no server to lose")
    run = ci_store.create_run("shop", "f" * 40, "a", "development")
    with ci_store.reading() as tx:
        pid = tx.scalar("SELECT pg_backend_pid()")
    with ci_store.engine.connect() as other:
        other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    monkeypatch.setattr(sql, "_PG_IDLE_CHECK_S", 0.0)
    assert ci_store.get_run(run.id).id == run.id
