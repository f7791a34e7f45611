"""Inbound event ids: the dedupe table of Slack events gets its own name.

``inbound_deliveries`` becomes ``inbound_event_ids`` keyed by the bare event id (the old keys were ``event:<id>``), so "delivery"
means only outbox delivery. The rows (a day's worth of event ids) are copied over, so a Slack
retry that arrives during the upgrade is still recognised.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_event_ids",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_inbound_event_ids"),
    )
    op.create_index("ix_inbound_event_ids_received_at", "inbound_event_ids", ["received_at"])
    op.execute(
        "INSERT INTO inbound_event_ids (event_id, received_at) "
        "SELECT substr(key, 7), received_at FROM inbound_deliveries WHERE key LIKE 'event:%'"
    )
    op.drop_index("ix_inbound_deliveries_received_at", table_name="inbound_deliveries")
    op.drop_table("inbound_deliveries")


def downgrade() -> None:
    op.create_table(
        "inbound_deliveries",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_inbound_deliveries"),
    )
    op.create_index("ix_inbound_deliveries_received_at", "inbound_deliveries", ["received_at"])
    op.execute(
        "INSERT INTO inbound_deliveries (key, received_at) "
        "SELECT 'event:' || event_id, received_at FROM inbound_event_ids"
    )
    op.drop_index("ix_inbound_event_ids_received_at", table_name="inbound_event_ids")
    op.drop_table("inbound_event_ids")
