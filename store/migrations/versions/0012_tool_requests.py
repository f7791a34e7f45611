"""Tool requests: agents' keyed tool calls, so that a call sent again is not made twice.

An agent's client may pass an ``idempotency_key`` with ``post_update``, ``add_artifact``,
``update_task_status`` and ``release_task``. The first call with a key records one row per
(agent, key), with the tool, a digest of its arguments and what it produced, in the
transaction of its effect; a repeat of the key (the answer was lost with a broken connection)
returns that outcome and changes nothing. The primary key is what stops two concurrent calls
with one key from both being made. Rows are pruned after a day, by ``created_at``.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from store.types import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tool_requests",
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("tool", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("result", Json),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("agent", "key", name="pk_tool_requests"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_tool_requests_task_id_tasks", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_tool_requests_created_at", "tool_requests", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_tool_requests_created_at", table_name="tool_requests")
    op.drop_table("tool_requests")
