"""which Docker engine each release ran on (environments on remote engines, issue 14)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("engine", sa.String(length=300), nullable=True))


def downgrade() -> None:
    # In place on SQLite (>= 3.35): a copy-and-swap of `releases` is not needed for one column.
    with op.batch_alter_table("releases", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("engine")
