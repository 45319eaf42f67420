"""Engine creation and schema upgrades.

The schema is upgraded on first use so a newcomer never has to remember `db upgrade`, and under a
PostgreSQL advisory lock so that many CI runners starting at once do not race to create tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from orchestrator.errors import BadInput, InfraUnavailable

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

_MIGRATION_LOCK_KEY = 0x6F726368  # "orch": an arbitrary, fixed pg_advisory_lock key

# The newest migration. Checking the stored revision against it is one query and no Alembic import,
# which keeps every CLI call fast; tests/unit/test_store.py fails if a migration is added without it.
HEAD_REVISION = "0003"


def migrations_dir() -> Path:
    """The source checkout's migrations/ when running from one, else the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("migrations are missing from this installation of orchestrator")


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable url>"


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadInput(f"ORCH_DATABASE_URL {url!r} is not a valid SQLAlchemy URL") from None
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Wait for a concurrent writer instead of failing at once with "database is locked".
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise BadInput(
            f"no driver for {safe_url(url)}: {exc} (for PostgreSQL: pip install 'orchestrator[postgres]')"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _alembic_config(connection: Connection) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except OperationalError as exc:
        raise InfraUnavailable(
            f"database {safe_url(str(engine.url))} is unreachable: {str(exc.orig).strip().splitlines()[0]} "
            f"(check ORCH_DATABASE_URL and that the server is running)"
        ) from None


def script_head() -> str | None:
    """The head revision as Alembic computes it from migrations/ (slow: imports and parses scripts)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(connection: Connection) -> str | None:
    try:
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.DBAPIError:
        connection.rollback()  # no table yet: an empty database
        return None


def schema_is_current(connection: Connection) -> bool:
    return current_revision(connection) == HEAD_REVISION


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to head; returns (revision before, revision after)."""
    from alembic import command

    with connect(engine) as conn:
        is_pg = conn.dialect.name == "postgresql"
        if is_pg:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()
        try:
            before = current_revision(conn)
            command.upgrade(_alembic_config(conn), "head")
            conn.commit()
            after = current_revision(conn)
        finally:
            if is_pg:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()
    return before, after


def ensure_schema(engine: Engine) -> None:
    with connect(engine) as conn:
        current = schema_is_current(conn)
    if not current:
        upgrade(engine)
