"""metrics indexes: `metrics`' window read from one index, and /metrics' runs per app and state

`metrics` (store/aggregates.py) reads each prod-edge transition of its window for its outcome and run:
with those in the window's index, that is an index-only scan (PostgreSQL: when the table is vacuumed)
instead of a row fetch per promotion. The outcome comes before the time so that both conditions bound
the scan (PostgreSQL otherwise combined it with the index on outcome, every transition's). The index
replaces (to_state, finished_at): its queries (Store.prod_history) read it the same way. /metrics
counts runs per app and state over the whole history: from (app, state) that is a scan of the index,
not of every run.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 02:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, name, columns) created here.
NEW = (
    (
        "transitions",
        "ix_transitions_to_state_outcome_finished_at",
        ["to_state", "outcome", "finished_at", "run_id", "id"],
    ),
    ("runs", "ix_runs_app_state", ["app", "state"]),
)
# (table, name, columns) the indexes above replace.
REPLACED = (("transitions", "ix_transitions_to_state_finished_at", ["to_state", "finished_at"]),)


def upgrade() -> None:
    for table, name, columns in NEW:
        op.create_index(op.f(name), table, columns, unique=False)
    for table, name, _ in REPLACED:
        op.drop_index(op.f(name), table_name=table)


def downgrade() -> None:
    for table, name, columns in REPLACED:
        op.create_index(op.f(name), table, columns, unique=False)
    for table, name, _ in reversed(NEW):
        op.drop_index(op.f(name), table_name=table)
