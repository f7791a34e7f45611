"""Agent sessions: what each task thread's session was last told.

A task thread is an agent session in Slack once its task is assigned. The outbox syncs the
session's status with the task's (``bot.session``) and records here what the platform was last
told, so a call is made only when the status changes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_sessions",
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_agent_sessions"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_agent_sessions_task_id_tasks", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("agent_sessions")
