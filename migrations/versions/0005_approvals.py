"""approvals: who approved or rejected a run's edge into an environment that requires approval; the
commit time of each run's sha (DORA lead time)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("environment", sa.String(length=32), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_approvals_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint("run_id", "environment", "decision", name=op.f("uq_approvals_run_id")),
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approvals_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    # A rejected run is in a state the older code does not know: put it back where it waited
    # (deploy-staging for prod), so the older code can read it; the decision itself is lost with the
    # table, and the rejection stays readable in its transition's reason.
    op.execute(
        "UPDATE runs SET state = (SELECT t.from_state FROM transitions t WHERE t.run_id = runs.id "
        "AND t.outcome = 'rejected' ORDER BY t.id DESC LIMIT 1) WHERE state = 'rejected'"
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approvals_run_id"))
    op.drop_table("approvals")
    # Not a batch (copy-and-move) on SQLite: recreating ``runs`` with foreign keys on would cascade
    # the drop to every transition. SQLite drops a plain column in place since 3.35.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE runs DROP COLUMN committed_at")
    else:
        op.drop_column("runs", "committed_at")
