"""history indexes: `runs list` filters, a run's last transition, `metrics`' window and releases, as
bounded index scans over a history of 100,000 runs (benchmarks/scale.py)

Three single-column indexes become the first column of a composite one and are dropped: the composite
serves every query the single one did.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 22:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, name, columns) created here.
NEW = (
    ("runs", "ix_runs_app_id", ["app", "id"]),
    ("runs", "ix_runs_actor_id", ["actor", "id"]),
    ("runs", "ix_runs_sha", ["sha"]),
    ("transitions", "ix_transitions_run_id_id", ["run_id", "id"]),
    ("transitions", "ix_transitions_actor_run_id", ["actor", "run_id"]),
    ("transitions", "ix_transitions_to_state_finished_at", ["to_state", "finished_at"]),
    ("releases", "ix_releases_app_environment_id", ["app", "environment", "id"]),
    ("releases", "ix_releases_transition_id", ["transition_id"]),
    ("releases", "ix_releases_kind_created_at", ["kind", "created_at"]),
)
# (table, name, columns) the composites above replace.
REPLACED = (
    ("runs", "ix_runs_app", ["app"]),
    ("transitions", "ix_transitions_run_id", ["run_id"]),
    ("releases", "ix_releases_app", ["app"]),
)


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
