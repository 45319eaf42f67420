"""Engine creation and schema upgrades.

The schema is upgraded on first use so a newcomer never has to remember `db upgrade`, and under a
PostgreSQL advisory lock so that many CI runners starting at once do not race to create tables.

SQLite is set up for many CLI processes on one machine (WAL, a busy timeout) and as a private file: run
history names commits, images and operators, which other local users have no business reading.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import DEFAULT_DB_PATH
from orchestrator.errors import BadInput, InfraUnavailable
from orchestrator.logging import get_logger

# SQLAlchemy and Alembic are imported inside the functions that need them: the CLI's store
# (store/sql.py) opens the database without them, and only an upgrade or a report query pays for them.
if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.exc import DBAPIError

_MIGRATION_LOCK_KEY = 0x6F726368  # "orch": an arbitrary, fixed pg_advisory_lock key

# The newest migration. Checking the stored revision against it is one query and no Alembic import,
# which keeps every CLI call fast; tests/unit/test_store.py fails if a migration is added without it.
HEAD_REVISION = "0008"


def migrations_dir() -> Path:
    """The source checkout's migrations/ when running from one, else the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise InfraUnavailable(
        f"the database migrations are missing from this installation of orchestrator ({here}): "
        "reinstall it ('pip install --force-reinstall orchestrator')"
    )


_QUERY_SECRET = r"(?i)([?&](?:password|passwd|sslpassword)=)[^&]*"


def safe_url(url: str) -> str:
    """``url`` with its password masked, for messages and output.

    Worked out from the raw text, never from SQLAlchemy's parse: a URL it cannot parse (a port that is
    not a number) or parses wrongly (an unescaped '@' in the password) must not show the password
    either. Everything between the first ':' after the user name and the last '@' is masked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if not scheme.startswith("sqlite"):  # a file path may hold ':' and '@'; there is no password
        userinfo, at, hostpart = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:***@{hostpart}"
    return re.sub(_QUERY_SECRET, r"\1***", scheme + sep + rest)


SQLITE_TIMEOUT_S = 30


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine for what needs one: Alembic upgrades and the report queries (history,
    metrics, the dashboard). The CLI's own reads and writes go through store/sql.py instead."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    masked = safe_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadInput(f"ORCH_DATABASE_URL {masked!r} is not a valid SQLAlchemy URL") from None
    except ValueError:  # SQLAlchemy's int(port)
        raise BadInput(
            f"ORCH_DATABASE_URL {masked!r} is not a valid SQLAlchemy URL: its port is not a number"
        ) from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    if backend == "sqlite":
        prepare_sqlite_file(parsed.database, masked)
        # Wait for a concurrent writer instead of failing at once with "database is locked".
        kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        refuse_ambiguous_at(url, masked)
        kwargs["pool_pre_ping"] = True
        if backend == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise BadInput(
            f"no driver for {masked}: {exc} (for PostgreSQL: pip install 'orchestrator[postgres]')"
        ) from None
    except (ArgumentError, ValueError, TypeError) as exc:  # a query argument the dialect rejects
        raise BadInput(f"ORCH_DATABASE_URL {masked!r} is not usable: {exc}") from None
    if backend == "sqlite":
        sa.event.listen(engine, "connect", sqlite_pragmas)
    return engine


def refuse_ambiguous_at(url: str, masked: str) -> None:
    """An unescaped '@' in a password makes SQLAlchemy read the rest as the host name, which the
    driver's error would then print: refuse before connecting."""
    rest = url.partition("://")[2] or url
    if rest.split("?", 1)[0].count("@") > 1:
        raise BadInput(
            f"ORCH_DATABASE_URL {masked!r} has more than one '@': write '@' in the user name or password "
            "as %40"
        )


def _is_default_location(path: Path) -> bool:
    """The one SQLite location orchestrator creates a directory for: ``.orchestrator/`` beside the config
    file (config's DEFAULT_DB_PATH). Anywhere else a missing directory is a typo or an unmounted volume,
    and creating it would scatter history where nobody will look for it."""
    return path.parent.name == DEFAULT_DB_PATH.parent.name


# Written into the default database's folder when orchestrator creates it: the config often sits at the
# root of the app's own repository, and the history must not show up in (or be committed by) its git.
SELF_IGNORE = (
    "# generated by orchestrator: it created this folder for its run history and keeps git from "
    "seeing it\n*\n"
)
# What earlier versions left in the folder they created: the database and SQLite's side files.
_DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _ignore_in_git(folder: Path, database: Path) -> None:
    """Write the self-ignoring ``.gitignore`` into the database's folder if orchestrator owns it.

    Only a folder orchestrator created (issue 10's rule: a ``*`` in someone's folder would hide their
    new files from every ``git add -A``). That is this call's fresh ``.orchestrator/``, or one earlier
    versions created without the file, recognised by holding nothing but this database's files: it can
    hide nobody's work."""
    try:
        names = {p.name for p in folder.iterdir()}
        ours = {database.name + suffix for suffix in _DATABASE_SUFFIXES}
        if ".gitignore" in names or not names <= ours:
            return
        fd = os.open(folder / ".gitignore", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(SELF_IGNORE)
    except FileExistsError:
        return
    except OSError as exc:  # a read-only checkout: git noise is not worth refusing to run for
        get_logger().warning("gitignore_not_written", path=str(folder / ".gitignore"), error=exc.strerror)


def prepare_sqlite_file(database: str | None, masked: str) -> None:
    """Create the database file 0600 (and the default directory 0700) before SQLite opens it: SQLite
    would create it with the process umask, usually world-readable. An existing file keeps its mode
    (a group-shared database is a choice; its -wal and -shm files follow it), except that no other user
    may read it (see _close_to_others)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    parent = path.parent
    try:
        if not parent.is_dir():
            if parent.exists():
                raise BadInput(f"database {masked}: {parent} is not a directory")
            if not _is_default_location(path):
                raise BadInput(
                    f"database directory {parent} does not exist (ORCH_DATABASE_URL {masked}): create it "
                    f"('mkdir -p -m 700 {parent}'), or point ORCH_DATABASE_URL at a file in an existing "
                    "directory"
                )
            parent.mkdir(mode=0o700, exist_ok=True)
        if _is_default_location(path) and path.name == DEFAULT_DB_PATH.name:
            _ignore_in_git(parent, path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        _close_to_others(path, masked)
    except OSError as exc:
        raise BadInput(
            f"cannot create database {masked}: {exc.strerror} ({exc.filename}); fix the permissions or "
            "point ORCH_DATABASE_URL elsewhere"
        ) from None


def _close_to_others(path: Path, masked: str) -> None:
    """Databases created by orchestrator before 0600 was the rule (and their -wal/-shm files, which
    SQLite created with the database's mode) are usually world-readable: take the bits for other users
    away, keeping the owner's and the group's (sharing with a group is a choice; with everyone is not)."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            current = stat.S_IMODE(file.stat().st_mode)
            if current & 0o007:
                file.chmod(current & ~0o007)
                get_logger().warning(
                    "database_permissions_tightened",
                    path=str(file),
                    mode_before=oct(current),
                    mode=oct(current & ~0o007),
                    why="run history was readable by every local user",
                )
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BadInput(
                f"database {masked}: {file} is readable by every local user and cannot be changed "
                f"({exc.strerror}): 'chmod o-rwx {file}'"
            ) from None


def sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    # The connect timeout already installs a busy handler; say it explicitly so that a pragma below, or
    # a later change of driver arguments, cannot lose it.
    cur.execute(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_S * 1000}")
    # WAL: readers never block the writer and the writer never blocks readers, so concurrent CLI
    # processes wait on each other only writer against writer (the busy timeout above). SQLite gives
    # the -wal and -shm files the database file's mode (whatever the umask), so they are 0600 too.
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL instead of FULL: in WAL mode a commit then appends to the WAL without an fsync of its own;
    # the WAL is fsynced at each checkpoint. A deploy commits about 70 times (every step's intent before
    # its side effect, then its outcome), and an fsync each cost ~2 ms on the benchmark's disk.
    # What it keeps: a process that dies (SIGKILL, the CI runner cancelling the job, the crashes
    # test_faults.py injects) loses nothing it committed, since the WAL is already in the OS page cache,
    # so recovery reads every step as before; and the database is never corrupted. What it gives up:
    # after a power loss or kernel crash, the last commits before it may be missing (SQLite rolls the
    # database back to its last checkpoint, whole transactions only). The same machine's Docker engine
    # restarts then too, and recovery compares what is recorded with what runs, as after any restart.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _alembic_config(connection: Connection) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def connect(engine: Engine) -> Connection:
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        return engine.connect()
    except OperationalError as exc:
        raise InfraUnavailable(
            f"database {safe_url(str(engine.url))} is unreachable: {_first_line(exc)} "
            f"(check ORCH_DATABASE_URL and that the server is running)"
        ) from None
    except DBAPIError as exc:  # the driver refused the URL itself (an unknown connection option)
        raise BadInput(
            f"ORCH_DATABASE_URL {safe_url(str(engine.url))!r} is not usable: {_first_line(exc)}"
        ) from None


def _first_line(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines()
    return lines[0] if lines else type(exc.orig).__name__


def _scripts() -> ScriptDirectory:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(cfg)


def script_head() -> str | None:
    """The head revision as Alembic computes it from migrations/ (slow: imports and parses scripts)."""
    return _scripts().get_current_head()


def known_revisions() -> set[str]:
    """Every revision in migrations/ (slow like ``script_head``: only on the way to an upgrade)."""
    return {script.revision for script in _scripts().walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    import sqlalchemy as sa

    try:
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.DBAPIError:
        connection.rollback()  # no table yet: an empty database
        return None


def schema_is_current(connection: Connection) -> bool:
    return current_revision(connection) == HEAD_REVISION


def _refuse_unknown_revision(engine: Engine, current: str | None) -> None:
    """A database migrated by a newer orchestrator: Alembic would fail with a traceback, and anything
    we wrote to it could contradict the newer schema. Refuse before touching it."""
    if current is None or current in known_revisions():
        return
    where = f"database {safe_url(str(engine.url))} is at schema revision {current}"
    if current.isdigit() and HEAD_REVISION.isdigit() and int(current) > int(HEAD_REVISION):
        raise InfraUnavailable(
            f"{where}, newer than this orchestrator knows ({HEAD_REVISION}): upgrade orchestrator"
        )
    raise InfraUnavailable(
        f"{where}, which this orchestrator does not know (its newest is {HEAD_REVISION}): upgrade "
        "orchestrator, or check that ORCH_DATABASE_URL names orchestrator's database"
    )


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to head; returns (revision before, revision after).

    One process migrates at a time, and the others then find the schema at head: on PostgreSQL under an
    advisory lock, on SQLite inside one write transaction (BEGIN IMMEDIATE waits out the busy timeout).
    Without that, twenty CI jobs starting on a fresh database race to create the same tables.
    """
    import sqlalchemy as sa
    from alembic import command

    with connect(engine) as conn:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()
        elif dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            before = _revision_under_lock(conn)
            if before == HEAD_REVISION:
                # Another process migrated while this one queued for the lock: let the queue move on.
                # Loading Alembic's scripts here (tenths of a second each) made the last of twenty jobs
                # on a fresh database wait for all of them, past SQLite's busy timeout under load.
                return before, before
            _refuse_unknown_revision(engine, before)
            command.upgrade(_alembic_config(conn), "head")
            conn.commit()
            after = current_revision(conn)
        finally:
            conn.rollback()  # a refused or failed upgrade must not keep its transaction (or SQLite's lock)
            if dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()
    return before, after


def _revision_under_lock(connection: Connection) -> str | None:
    """Like ``current_revision``, but without a failing query, whose rollback would end SQLite's write
    transaction and with it the lock that keeps other processes out."""
    import sqlalchemy as sa

    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def ensure_schema(engine: Engine) -> None:
    with connect(engine) as conn:
        current = schema_is_current(conn)
    if not current:
        upgrade(engine)
