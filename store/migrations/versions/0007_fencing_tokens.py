"""Fencing tokens unique across tasks: lease epochs come from one counter.

An epoch from one task can then never match another task's, so a call fenced with a stale or
borrowed epoch is always refused. Existing epochs are kept; the counter starts above them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fencing_tokens",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("last", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fencing_tokens"),
    )
    op.execute(
        "INSERT INTO fencing_tokens (id, last) SELECT 1, COALESCE(MAX(lease_epoch), 0) FROM tasks"
    )


def downgrade() -> None:
    op.drop_table("fencing_tokens")
