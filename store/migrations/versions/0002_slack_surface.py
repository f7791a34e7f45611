"""Slack surface: card ts, per-channel policies, and inbound delivery de-duplication.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("card_ts", sa.String(32)))
    op.create_index("ix_tasks_assigned_by", "tasks", ["assigned_by"])
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(
            sa.Column("uncertain", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_index("ix_agents_slack_user_id", "agents", ["slack_user_id"])
    op.create_index("ix_agents_slack_bot_id", "agents", ["slack_bot_id"])

    op.create_table(
        "channel_policies",
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("lease_ttl_s", sa.Float),
        sa.Column("max_dispatch_attempts", sa.Integer),
        sa.Column("updated_by", sa.String(32), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name="pk_channel_policies"),
    )

    op.create_table(
        "inbound_deliveries",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_inbound_deliveries"),
    )
    op.create_index("ix_inbound_deliveries_received_at", "inbound_deliveries", ["received_at"])


def downgrade() -> None:
    op.drop_table("inbound_deliveries")
    op.drop_table("channel_policies")
    op.drop_index("ix_agents_slack_bot_id", "agents")
    op.drop_index("ix_agents_slack_user_id", "agents")
    op.drop_index("ix_tasks_assigned_by", "tasks")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("uncertain")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("card_ts")
