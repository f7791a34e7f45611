"""Workers and shared rate budgets: takeover by liveness, and thread reads paced across replicas.

``workers`` holds one row per running process, kept fresh by its heartbeat; claims held by a
worker whose heartbeat is too old are taken over by a live one. ``rate_budgets`` holds token
buckets every replica draws from (Slack's thread reads), so the budget is one per workspace.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"])
    op.create_table(
        "rate_budgets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_rate_budgets"),
    )
    # Claims are looked up by holder when a worker is taken over or shuts down.
    op.create_index(
        "ix_agent_wakeups_claimed_by",
        "agent_wakeups",
        ["claimed_by"],
        sqlite_where=sa.text("done_at IS NULL AND claimed_by IS NOT NULL"),
        postgresql_where=sa.text("done_at IS NULL AND claimed_by IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_agent_wakeups_claimed_by", "agent_wakeups")
    op.drop_table("rate_budgets")
    op.drop_index("ix_workers_heartbeat_at", "workers")
    op.drop_table("workers")
