"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 17:58:42.555030
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("sha", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_app"), ["app"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_state"), ["state"], unique=False)

    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=False),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("result_state", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_transitions_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transitions")),
    )
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transitions_outcome"), ["outcome"], unique=False)
        batch_op.create_index(batch_op.f("ix_transitions_run_id"), ["run_id"], unique=False)

    op.create_table(
        "environment_locks",
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("environment", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("transition_id", sa.Integer(), nullable=True),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_environment_locks_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["transition_id"],
            ["transitions.id"],
            name=op.f("fk_environment_locks_transition_id_transitions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("app", "environment", name=op.f("pk_environment_locks")),
    )
    op.create_table(
        "gate_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transition_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["transition_id"],
            ["transitions.id"],
            name=op.f("fk_gate_results_transition_id_transitions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gate_results")),
    )
    with op.batch_alter_table("gate_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gate_results_transition_id"), ["transition_id"], unique=False)

    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("environment", sa.String(length=32), nullable=False),
        sa.Column("image_id", sa.String(length=100), nullable=False),
        sa.Column("digest", sa.String(length=300), nullable=True),
        sa.Column("revision", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("transition_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_releases_run_id_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["transition_id"],
            ["transitions.id"],
            name=op.f("fk_releases_transition_id_transitions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_releases")),
    )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_releases_app"), ["app"], unique=False)
        batch_op.create_index(batch_op.f("ix_releases_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_releases_run_id"))
        batch_op.drop_index(batch_op.f("ix_releases_app"))

    op.drop_table("releases")
    with op.batch_alter_table("gate_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gate_results_transition_id"))

    op.drop_table("gate_results")
    op.drop_table("environment_locks")
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transitions_run_id"))
        batch_op.drop_index(batch_op.f("ix_transitions_outcome"))

    op.drop_table("transitions")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_state"))
        batch_op.drop_index(batch_op.f("ix_runs_app"))

    op.drop_table("runs")
