"""The store's own database access: DB-API (the stdlib ``sqlite3``, or ``psycopg`` 3), no SQLAlchemy.

Why: CI starts the orchestrator in every pipeline of every commit, and importing SQLAlchemy's ORM,
configuring its mappers and compiling its statements cost more than everything else a command does
before it talks to Docker (issue 12). SQLAlchemy stays where it is worth its weight and is off the CLI's
path: the schema (models.py, the source of truth), Alembic migrations, and the report queries
(history.py, metrics, the dashboard).

Rows must read back through the ORM exactly as if SQLAlchemy had written them, and old rows must read
here: timestamps on SQLite are SQLAlchemy's text ('YYYY-MM-DD HH:MM:SS.ffffff', naive UTC), on
PostgreSQL ``timestamptz``; JSON columns are ``json.dumps`` text on SQLite and ``json`` on PostgreSQL.
tests/unit/test_sql.py checks both directions on both databases.

One placeholder style in our SQL, ``:name`` (sqlite3's own); it is rewritten once per statement for
psycopg (``%(name)s``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from orchestrator.errors import BadInput, InfraUnavailable
from orchestrator.store import db

# Every DateTime(timezone=True) and JSON column of models.py, by name (the names mean the same in every
# table). Read values of these are converted on SQLite, where they are stored as text;
# tests/unit/test_sql.py fails if models.py gains a column of either type that is not listed here.
TIME_COLUMNS = frozenset(
    {
        "created_at",
        "updated_at",
        "committed_at",
        "started_at",
        "finished_at",
        "lease_expires_at",
        "acquired_at",
        "since",
        "expires_at",
        "at",
    }
)
JSON_COLUMNS = frozenset({"details", "changes"})

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
_PG_SCHEMES = ("postgresql", "postgresql+psycopg")
SUPPORTED = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
# What SQLAlchemy's pysqlite dialect takes from a sqlite URL's query for the driver; any other argument
# only means something with uri=true (then it is SQLite's own URI parameter).
_SQLITE_DRIVER_ARGS = (
    "uri",
    "timeout",
    "isolation_level",
    "detect_types",
    "check_same_thread",
    "cached_statements",
)
_PG_CONNECT_TIMEOUT_S = 10
# A PostgreSQL connection idle longer than this is tested before use (see Database._alive).
_PG_IDLE_CHECK_S = 30.0


class IntegrityViolation(Exception):
    """A unique, primary-key or foreign-key constraint refused a write: the database, not a
    read-then-write, decided a race (two claims of one lock, two approvals)."""


@dataclass(frozen=True)
class Target:
    """Where a database URL points, parsed once: which driver, and what to hand it."""

    backend: str
    masked: str
    # SQLite: the file (or a file: URI when ``uri``); PostgreSQL: psycopg.connect()'s keywords.
    database: str = ""
    uri: bool = False
    connect_args: Mapping[str, Any] = field(default_factory=dict)


def parse_url(url: str) -> Target:
    """Read ``url`` the way SQLAlchemy's ``make_url`` reads it (the URLs users already have keep
    working), without importing SQLAlchemy; the messages never show the password."""
    masked = db.safe_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][\w+.-]*", scheme):
        raise BadInput(f"ORCH_DATABASE_URL {masked!r} is not a valid SQLAlchemy URL")
    scheme = scheme.lower()
    if scheme in _SQLITE_SCHEMES:
        return _sqlite_target(rest, masked)
    if scheme in _PG_SCHEMES:
        return _pg_target(url, masked)
    raise BadInput(
        f"no driver for {masked}: orchestrator stores its history in SQLite or PostgreSQL ({SUPPORTED})"
    )


def _sqlite_target(rest: str, masked: str) -> Target:
    location, _, query = rest.partition("?")
    if location and not location.startswith("/"):
        raise BadInput(
            f"ORCH_DATABASE_URL {masked!r} is not a valid SQLite URL: write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    database = unquote(location[1:])
    if database in ("", ":memory:"):
        # Each connection would get a database of its own (the migrations one, the queries another),
        # and the history would vanish with the process anyway.
        raise BadInput(
            f"ORCH_DATABASE_URL {masked!r} is an in-memory database, which keeps no history between "
            "commands: point it at a file (sqlite:///path/to/orchestrator.db)"
        )
    args = dict(parse_qsl(query, keep_blank_values=True))
    uri = args.get("uri", "").lower() in ("1", "true", "yes", "on")
    if uri:
        extra = {k: v for k, v in args.items() if k not in _SQLITE_DRIVER_ARGS}
        if extra:
            database += "?" + "&".join(f"{k}={v}" for k, v in sorted(extra.items()))
    return Target(SQLITE, masked, database=database, uri=uri)


def _pg_target(url: str, masked: str) -> Target:
    db.refuse_ambiguous_at(url, masked)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadInput(
            f"ORCH_DATABASE_URL {masked!r} is not a valid SQLAlchemy URL: its port is not a number"
        ) from None
    args: dict[str, Any] = {}
    if parts.hostname:
        # The host as written (urlsplit's .hostname lower-cases it), an IPv6 literal without brackets.
        host = parts.netloc.rpartition("@")[2]
        host = host.rsplit(":", 1)[0] if parts.port is not None else host
        args["host"] = unquote(host.strip("[]"))
    if port is not None:
        args["port"] = port
    if parts.username:
        args["user"] = unquote(parts.username)
    if parts.password is not None:
        args["password"] = unquote(parts.password)
    if parts.path.strip("/"):
        args["dbname"] = unquote(parts.path.lstrip("/"))
    args.update(parse_qsl(parts.query, keep_blank_values=True))
    args.setdefault("connect_timeout", _PG_CONNECT_TIMEOUT_S)
    return Target(POSTGRESQL, masked, connect_args=args)


# -- values ----------------------------------------------------------------------------------------

_SQLITE_TIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def sqlite_time(value: datetime) -> str:
    """A timestamp as SQLAlchemy's SQLite DateTime writes it: naive UTC text with microseconds. The
    text order is the time order, which every comparison in our SQL relies on."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return _SQLITE_TIME % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def read_sqlite_time(value: str) -> datetime:
    """The reverse, also for text SQLAlchemy wrote: UTC, timezone-aware (records.py keeps it so)."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


class Row(SimpleNamespace):
    """A result row read by attribute, like the ORM objects records.py's converters were written for."""


# -- the connection -----------------------------------------------------------------------------------

_NAMED = r"(?<![:\w]):(\w+)"


class Database:
    """One connection, opened on first use and shared by the process's threads (the lease heartbeat
    renews from its own thread), one transaction at a time. Cheap to create: nothing is imported or
    opened until the first query."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.target = parse_url(url)
        self.backend = self.target.backend
        if self.backend == SQLITE:
            if not self.target.uri:
                db.prepare_sqlite_file(self.target.database, self.target.masked)
            self._integrity: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
            self._operational: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
        else:
            psycopg = _psycopg(self.target.masked)
            self._integrity = (psycopg.IntegrityError,)
            self._operational = (psycopg.OperationalError, psycopg.InterfaceError)
        self._conn: Any = None
        self._used = 0.0
        # Called with every statement as sent and its parameters: tests count queries and read plans.
        self.trace: Callable[[str, Mapping[str, Any]], None] | None = None
        self._lock = threading.RLock()
        self._statements: dict[str, str] = {}

    # connecting ---------------------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and self.backend == POSTGRESQL:
            idle = time.monotonic() - self._used
            if conn.closed or conn.broken or (idle > _PG_IDLE_CHECK_S and not self._alive(conn)):
                conn.close()
                conn = None
        if conn is None:
            conn = self._conn = self._connect_sqlite() if self.backend == SQLITE else self._connect_pg()
        self._used = time.monotonic()
        return conn

    def _alive(self, conn: Any) -> bool:
        """A long-lived process (``serve``, a deploy waiting for a lock) may find its connection cut
        by a server restart or a proxy's idle timeout: test it before use, as SQLAlchemy's pool did
        (pool_pre_ping), but only after a while idle instead of a round trip per transaction."""
        try:
            conn.execute("SELECT 1")
            conn.rollback()
        except self._operational:
            return False
        return True

    def _connect_sqlite(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit BEGIN; every transaction is begun explicitly below,
            # a write one with BEGIN IMMEDIATE. check_same_thread: the lock in transaction() serialises.
            conn = sqlite3.connect(
                self.target.database,
                timeout=db.SQLITE_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
                uri=self.target.uri,
            )
            db.sqlite_pragmas(conn, None)
        except sqlite3.Error as exc:
            raise InfraUnavailable(
                f"database {self.target.masked} is unreachable: {_first_line(exc)} "
                "(check ORCH_DATABASE_URL and that the server is running)"
            ) from None
        return conn

    def _connect_pg(self) -> Any:
        psycopg = _psycopg(self.target.masked)
        try:
            return psycopg.connect(**self.target.connect_args)
        except psycopg.OperationalError as exc:
            raise InfraUnavailable(
                f"database {self.target.masked} is unreachable: {_first_line(exc)} "
                "(check ORCH_DATABASE_URL and that the server is running)"
            ) from None
        except psycopg.Error as exc:  # the driver refused the URL itself (an unknown connection option)
            raise BadInput(
                f"ORCH_DATABASE_URL {self.target.masked!r} is not usable: {_first_line(exc)}"
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # transactions -------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises.

        On SQLite a write transaction begins with BEGIN IMMEDIATE: it takes the write lock (waiting out
        the busy timeout) before its first read, so the compare-and-set that follows is never a read
        lock two processes both hold and then both try to upgrade (one would fail with "database is
        locked" at once, whatever the timeout). PostgreSQL's row locks do the same under READ
        COMMITTED, as with SQLAlchemy before."""
        with self._lock:
            try:
                conn = self._connection()
                if self.backend == SQLITE:
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                tx = Transaction(self, conn)
                try:
                    yield tx
                except BaseException:
                    self._rollback(conn)
                    raise
                if self.backend == SQLITE:
                    conn.execute("COMMIT")
                else:
                    conn.commit()
            except self._operational as exc:
                raise InfraUnavailable(f"database {self.target.masked} failed: {_first_line(exc)}") from None

    def _rollback(self, conn: Any) -> None:
        try:
            if self.backend == SQLITE:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            elif not conn.closed:
                conn.rollback()
        except self._operational:
            pass  # the connection is gone: so is its transaction; the next call reconnects

    def statement(self, sql: str) -> str:
        """``sql`` in the driver's placeholder style (``:name`` is sqlite3's own)."""
        if self.backend == SQLITE:
            return sql
        found = self._statements.get(sql)
        if found is None:
            found = self._statements[sql] = re.sub(_NAMED, r"%(\1)s", sql.replace("%", "%%"))
        return found

    def adapt(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {key: self._value(value) for key, value in params.items()}

    def _value(self, value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if self.backend == SQLITE:
            if isinstance(value, datetime):
                return sqlite_time(value)
            if isinstance(value, dict | list):
                return json.dumps(value)
            return value
        if isinstance(value, dict | list):
            from psycopg.types.json import Json

            return Json(value)
        return value

    # the schema ---------------------------------------------------------------------------------

    def revision(self) -> str | None:
        """The schema revision Alembic recorded, None for an empty database: one query, no Alembic."""
        with self._lock:
            try:
                conn = self._connection()
                try:
                    found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                except Exception as exc:
                    self._rollback(conn)
                    if not _no_such_table(exc):
                        raise
                    return None  # an empty database
                if self.backend == POSTGRESQL:
                    conn.commit()
            except self._operational as exc:
                raise InfraUnavailable(f"database {self.target.masked} failed: {_first_line(exc)}") from None
        return found[0] if found else None


class Transaction:
    """Statements inside one ``Database.transaction``."""

    def __init__(self, database: Database, conn: Any) -> None:
        self._db = database
        self._conn = conn
        self.sqlite = database.backend == SQLITE

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        statement, values = self._db.statement(sql), self._db.adapt(params or {})
        if self._db.trace is not None:
            self._db.trace(statement, values)
        try:
            return self._conn.execute(statement, values)
        except self._db._integrity as exc:
            raise IntegrityViolation(_first_line(exc)) from exc

    def update(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """An UPDATE or DELETE; how many rows it changed (the compare-and-sets read this)."""
        return int(self.execute(sql, params).rowcount)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        cursor = self.execute(sql, params)
        names = [d[0] for d in cursor.description]
        found = cursor.fetchall()
        if not self.sqlite:
            return [Row(**dict(zip(names, values, strict=True))) for values in found]
        times = [i for i, n in enumerate(names) if n in TIME_COLUMNS]
        jsons = [i for i, n in enumerate(names) if n in JSON_COLUMNS]
        rows = []
        for values in found:
            if times or jsons:
                values = list(values)
                for i in times:
                    if isinstance(values[i], str):
                        values[i] = read_sqlite_time(values[i])
                for i in jsons:
                    if isinstance(values[i], str):
                        values[i] = json.loads(values[i])
            rows.append(Row(**dict(zip(names, values, strict=True))))
        return rows

    def one(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        row = self.execute(sql, params).fetchone()
        return row[0] if row else None

    def insert(self, table: str, values: Mapping[str, Any], *, returning_id: bool = True) -> int | None:
        """INSERT one row; its new id for tables that have one."""
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
        if not returning_id:
            self.execute(sql, values)
            return None
        return int(self.execute(sql + " RETURNING id", values).fetchone()[0])


def in_list(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``(:p0, :p1, ...)`` and its parameters, for an IN (both drivers bind scalars only). Callers keep
    lists short (SQLite limits the parameters of one statement)."""
    params = {f"{prefix}{i}": value for i, value in enumerate(values)}
    return "(" + ", ".join(f":{name}" for name in params) + ")", params


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _no_such_table(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc).startswith("no such table")
    return type(exc).__name__ == "UndefinedTable"  # psycopg.errors.UndefinedTable


def _psycopg(masked: str) -> Any:
    try:
        import psycopg
    except ModuleNotFoundError as exc:
        raise BadInput(
            f"no driver for {masked}: {exc} (for PostgreSQL: pip install 'orchestrator[postgres]')"
        ) from None
    return psycopg
