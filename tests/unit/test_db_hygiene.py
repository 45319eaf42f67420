"""The database as the operator meets it: concurrent CLI processes, a private SQLite file, and bad input.

Through the real CLI wherever an operator would see the outcome: the exit code, a message that says
what to do, never a traceback, never a password, and nothing created or changed behind a refusal.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from orchestrator.config import DEFAULT_DB_PATH
from orchestrator.store import db
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, CliResult, Workspace

both_outputs = pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.describe()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file created without care is world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --------------------------------------------------------------------------------------------------
# many CLI processes at once


def orchestrator_script() -> str:
    candidate = Path(sys.executable).with_name("orchestrator")
    return str(candidate) if candidate.is_file() else "orchestrator"


def test_twenty_cli_processes_at_once_on_a_fresh_database(workspace: Workspace, fresh_db_url: str) -> None:
    """Twenty CI jobs starting runs at the same moment on a database nobody has used yet: they race to
    migrate it and then to write. None may fail ("database is locked", "table already exists")."""
    env = {**os.environ, "ORCH_DATABASE_URL": fresh_db_url}
    argv = [orchestrator_script(), "run", "start", "--app", "demo", "--sha", workspace.repo.sha, "--json"]
    procs = [
        subprocess.Popen(
            argv, cwd=workspace.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(20)
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    failed = [(code, out[-2000:], err[-2000:]) for code, out, err in outcomes if code != 0]  # --json: stdout
    assert failed == [], f"{len(failed)} of 20 failed; the first: {failed[0]}"
    assert len({json.loads(out)["run_id"] for _, out, _ in outcomes}) == 20
    store = Store(fresh_db_url, upgrade=False)
    try:
        assert len(store.list_runs(limit=100)) == 20
    finally:
        store.close()


def test_a_process_that_finds_the_schema_migrated_lets_go_of_the_lock_at_once(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty jobs on a fresh database all find it empty and queue for the migration lock; the first
    migrates. Each of the others must see head under the lock and let go at once: it used to load
    Alembic's scripts there first (0.1 to 0.6 s each on two cores, measured), so the last in the queue
    waited for the sum of them, which under load ran past SQLite's 30 s busy timeout ("database is
    locked", the test above failing once)."""
    store = Store(fresh_db_url)  # at head, as the first of the racers leaves it
    try:

        def refused(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("Alembic's scripts loaded under the lock for a schema already at head")

        from alembic import command

        monkeypatch.setattr(db, "known_revisions", refused)
        monkeypatch.setattr(command, "upgrade", refused)
        assert db.upgrade(store.engine) == (db.HEAD_REVISION, db.HEAD_REVISION)
    finally:
        store.close()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    """WAL lets readers and the writer proceed together; the busy timeout makes writers wait for each
    other instead of failing at once."""
    store = Store(sqlite_url(tmp_path / "orch.db"))
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            # NORMAL (1): in WAL mode a commit is not fsynced on its own (store/db.py says why that is
            # safe for what orchestrator records).
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    finally:
        store.close()


# --------------------------------------------------------------------------------------------------
# a private SQLite file


def test_default_database_is_created_private(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    """Run history names commits, images and operators: no other local user may read it."""
    monkeypatch.delenv("ORCH_DATABASE_URL")
    cli("runs", "list", as_json=True).ok()
    path = workspace.path / DEFAULT_DB_PATH
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    store = Store(sqlite_url(path))  # holds the -wal and -shm files open while we look
    try:
        store.list_runs()
        sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        assert all(p.exists() for p in sidecars)
        assert {p.name: mode(p) for p in sidecars} == {p.name: 0o600 for p in sidecars}
    finally:
        store.close()


def test_database_in_an_existing_directory_is_created_private_and_the_directory_left_alone(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    directory = workspace.path / "shared"
    directory.mkdir(mode=0o755)
    monkeypatch.setenv("ORCH_DATABASE_URL", sqlite_url(directory / "orch.db"))
    cli("runs", "list", as_json=True).ok()
    assert mode(directory / "orch.db") == 0o600
    assert mode(directory) == 0o755
    assert sorted(p.name for p in directory.iterdir()) == ["orch.db"], "the -wal and -shm files stayed"


@both_outputs
def test_a_database_in_a_missing_directory_is_bad_input_and_creates_nothing(
    cli: Cli, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    """A typo or an unmounted volume must not silently start a second, empty history somewhere else."""
    missing = tmp_path / "nonexistent" / "dir"
    monkeypatch.setenv("ORCH_DATABASE_URL", sqlite_url(missing / "o.db"))
    result = cli("runs", "list", as_json=as_json)
    message = result.error(2, "bad_input")
    no_traceback(result)
    assert message.startswith(f"database directory {missing} does not exist")
    assert f"mkdir -p -m 700 {missing}" in message
    assert not (tmp_path / "nonexistent").exists()


def test_only_the_default_directory_is_created(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.orchestrator/` is made on first use (a newcomer never has to), but not its parents."""
    monkeypatch.setenv("ORCH_DATABASE_URL", sqlite_url(workspace.path / "gone" / ".orchestrator" / "o.db"))
    cli("runs", "list", as_json=True).error(2, "bad_input")
    assert not (workspace.path / "gone").exists()


# --------------------------------------------------------------------------------------------------
# a database from a newer orchestrator


def fingerprint(url: str) -> tuple[object, ...]:
    """What a migration would change: the stamped revision and every table's columns."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            columns = {t: [c["name"] for c in inspector.get_columns(t)] for t in inspector.get_table_names()}
            return db.current_revision(conn), columns
    finally:
        engine.dispose()


def stamp(url: str, revision: str) -> None:
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


@both_outputs
@pytest.mark.parametrize("command", [("runs", "list"), ("db", "upgrade")], ids=["runs-list", "db-upgrade"])
def test_a_database_at_a_newer_revision_is_refused_untouched(
    cli: Cli, workspace: Workspace, as_json: bool, command: tuple[str, ...]
) -> None:
    stamp(workspace.db_url, "0099")
    before = fingerprint(workspace.db_url)
    sqlite_file = sa.make_url(workspace.db_url).database if workspace.db_url.startswith("sqlite") else None
    digest = hashlib.sha256(Path(sqlite_file).read_bytes()).hexdigest() if sqlite_file else None

    result = cli(*command, as_json=as_json)
    message = result.error(4, "infrastructure_unavailable")
    no_traceback(result)
    assert message == (
        f"database {db.safe_url(workspace.db_url)} is at schema revision 0099, newer than this "
        f"orchestrator knows ({db.HEAD_REVISION}): upgrade orchestrator"
    )
    assert fingerprint(workspace.db_url) == before
    if sqlite_file:
        assert hashlib.sha256(Path(sqlite_file).read_bytes()).hexdigest() == digest


def test_a_database_at_a_revision_nobody_knows_is_refused(cli: Cli, workspace: Workspace) -> None:
    stamp(workspace.db_url, "3f2a9c1b7d00")  # another application's Alembic history, say
    message = cli("runs", "list", as_json=True).error(4, "infrastructure_unavailable")
    assert "is at schema revision 3f2a9c1b7d00, which this orchestrator does not know" in message
    assert "check that ORCH_DATABASE_URL names orchestrator's database" in message
    assert fingerprint(workspace.db_url)[0] == "3f2a9c1b7d00"


# --------------------------------------------------------------------------------------------------
# malformed URLs never show their password


SECRET = "hunter2-secret"


def assert_secret_kept(result: CliResult) -> None:
    no_traceback(result)
    assert SECRET not in result.stdout + result.stderr, "the password must never be printed"


@both_outputs
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"postgresql+psycopg://u:{SECRET}@host:abc/db",
            "ORCH_DATABASE_URL 'postgresql+psycopg://u:***@host:abc/db' is not a valid SQLAlchemy URL: "
            "its port is not a number",
        ),
        (  # one slash: SQLAlchemy cannot parse it at all
            f"postgresql+psycopg:/u:{SECRET}@host/db",
            "ORCH_DATABASE_URL 'postgresql+psycopg:***@host/db' is not a valid SQLAlchemy URL",
        ),
        (  # an unescaped '@' would make the rest of the password the host name, printed by the driver
            f"postgresql+psycopg://u:{SECRET}@x@127.0.0.1/db",
            "ORCH_DATABASE_URL 'postgresql+psycopg://u:***@127.0.0.1/db' has more than one '@': write '@' "
            "in the user name or password as %40",
        ),
        (
            f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db?no_such_option=1",
            "ORCH_DATABASE_URL 'postgresql+psycopg://u:***@127.0.0.1:1/db?no_such_option=1' is not "
            'usable: invalid connection option "no_such_option"',
        ),
    ],
    ids=["port-not-a-number", "unparseable", "at-in-password", "unknown-option"],
)
def test_a_malformed_url_is_bad_input_without_its_password(
    cli: Cli,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    as_json: bool,
    url: str,
    expected: str,
) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", url)
    result = cli("runs", "list", as_json=as_json)
    assert result.error(2, "bad_input") == expected
    assert_secret_kept(result)


@both_outputs
def test_a_password_in_the_query_string_is_masked_too(
    cli: Cli,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    free_port: Callable[[], int],
    as_json: bool,
) -> None:
    port = free_port()
    monkeypatch.setenv("ORCH_DATABASE_URL", f"postgresql+psycopg://u@127.0.0.1:{port}/db?password={SECRET}")
    result = cli("runs", "list", as_json=as_json)
    message = result.error(4, "infrastructure_unavailable")
    assert f"database postgresql+psycopg://u@127.0.0.1:{port}/db?password=*** is unreachable" in message
    assert_secret_kept(result)


def test_safe_url_masks_what_it_cannot_parse() -> None:
    assert db.safe_url("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"
    assert db.safe_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert db.safe_url("not a url") == "not a url"
    assert db.safe_url("sqlite:////srv/a:b@c/o.db") == "sqlite:////srv/a:b@c/o.db"


def test_a_world_readable_database_from_an_older_version_is_closed_to_other_users(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    """Earlier versions created the database (and SQLite its -wal/-shm files) with the umask: 0644.
    Upgrading must not leave run history readable by every local user; a group bit is kept."""
    directory = workspace.path / "shared"
    directory.mkdir(mode=0o755)
    path = directory / "orch.db"
    monkeypatch.setenv("ORCH_DATABASE_URL", sqlite_url(path))
    cli("runs", "list", as_json=True).ok()
    sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    for file, old in zip([path, *sidecars], (0o644, 0o664, 0o604), strict=True):
        file.touch()
        file.chmod(old)
    cli("runs", "list", as_json=True).ok()
    assert {p.name: mode(p) for p in [path, *sidecars] if p.exists()} == {
        p.name: m for p, m in zip([path, *sidecars], (0o640, 0o660, 0o600), strict=True) if p.exists()
    }
    assert mode(path) == 0o640
