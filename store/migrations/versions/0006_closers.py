"""Closing rights per channel: who may cancel, mark done, or reassign a task away.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("channel_policies") as batch:
        batch.add_column(sa.Column("closers", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("channel_policies") as batch:
        batch.drop_column("closers")
