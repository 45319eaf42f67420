"""leased locks with live holders, recorded promotion steps, freezes, lock waiters, events, the compose
file each release ran with

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HOLDER = ("holder_host", "holder_pid", "holder_start", "lease_expires_at")


def _holder_columns() -> list[sa.Column]:
    return [
        sa.Column("holder_host", sa.String(length=255), nullable=True),
        sa.Column("holder_pid", sa.Integer(), nullable=True),
        sa.Column("holder_start", sa.String(length=32), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        for column in _holder_columns():
            batch_op.add_column(column)
    with op.batch_alter_table("environment_locks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="run"))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        for column in _holder_columns():
            batch_op.add_column(column)
    with op.batch_alter_table("environment_locks", schema=None) as batch_op:
        batch_op.alter_column("kind", server_default=None)

    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compose_sha256", sa.String(length=80), nullable=True))

    op.create_table(
        "transition_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transition_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("environment", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["transition_id"],
            ["transitions.id"],
            name=op.f("fk_transition_steps_transition_id_transitions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transition_steps")),
    )
    with op.batch_alter_table("transition_steps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_transition_steps_transition_id"), ["transition_id"], unique=False
        )

    op.create_table(
        "freezes",
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("app", name=op.f("pk_freezes")),
    )
    op.create_table(
        "lock_waiters",
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("environment", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_lock_waiters_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("app", "environment", "run_id", name=op.f("pk_lock_waiters")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=True),
        sa.Column("environment", sa.String(length=32), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("transition_id", sa.Integer(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_events_run_id_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["transition_id"],
            ["transitions.id"],
            name=op.f("fk_events_transition_id_transitions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_app"), ["app"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_at"))
        batch_op.drop_index(batch_op.f("ix_events_app"))
    op.drop_table("events")
    op.drop_table("lock_waiters")
    op.drop_table("freezes")
    with op.batch_alter_table("transition_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transition_steps_transition_id"))
    op.drop_table("transition_steps")
    with op.batch_alter_table("releases", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("compose_sha256")
    # Hand-held and operator locks did not exist before this revision.
    op.execute("DELETE FROM environment_locks WHERE kind <> 'run'")
    with op.batch_alter_table("environment_locks", schema=None) as batch_op:
        for name in (*_HOLDER, "reason", "kind"):
            batch_op.drop_column(name)
    # Not a copy-and-swap on SQLite: dropping the old `transitions` there, with foreign keys on as
    # orchestrator connects, deletes every gate result and lock that points at it (and unlinks its
    # releases). Plain columns can be dropped in place (SQLite >= 3.35), which keeps the history.
    with op.batch_alter_table("transitions", schema=None, recreate="never") as batch_op:
        for name in _HOLDER:
            batch_op.drop_column(name)
