"""Alembic environment.

The orchestrator hands over an open connection (``config.attributes["connection"]``) so upgrades run
inside its own engine set-up; the ``alembic`` CLI instead uses the database the orchestrator itself
would (ORCH_DATABASE_URL, else the config's, else the default beside orchestrator.toml), resolved by
orchestrator.config alone so the two can never disagree on which file is the history.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from orchestrator.config import load_config
from orchestrator.store.models import Base

target_metadata = Base.metadata


def _url() -> str:
    return load_config().settings.database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # Batch mode lets later migrations alter SQLite tables (which has no real ALTER TABLE).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
