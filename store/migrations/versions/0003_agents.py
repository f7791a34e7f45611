"""Agents at work: MCP tokens, artifacts, wake-ups, read cursors, usage, liveness, waiting.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN_WAKEUP = "done_at IS NULL"
WAITING = "awaiting_input_since IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("awaiting_input_since", UTCDateTime()))
        batch.add_column(sa.Column("alive_at", UTCDateTime()))
    op.create_index(
        "ix_tasks_awaiting_input",
        "tasks",
        ["awaiting_input_since"],
        sqlite_where=sa.text(WAITING),
        postgresql_where=sa.text(WAITING),
    )
    with op.batch_alter_table("channel_policies") as batch:
        batch.add_column(sa.Column("agents_may_close", sa.Boolean))

    op.create_table(
        "agent_tokens",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("agent_id", Id, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_agent_tokens"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_tokens_agent_id_agents", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("token_hash", name="uq_agent_tokens_token_hash"),
    )

    op.create_table(
        "artifacts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("uri", sa.Text),
        sa.Column("content", sa.Text),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_artifacts_task_id_tasks", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_artifacts_task_id", "artifacts", ["task_id"])

    op.create_table(
        "agent_wakeups",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claim_expires_at", UTCDateTime()),
        sa.Column("done_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_agent_wakeups"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_agent_wakeups_task_id_tasks", ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_agent_wakeups_open_agent",
        "agent_wakeups",
        ["agent", "id"],
        sqlite_where=sa.text(OPEN_WAKEUP),
        postgresql_where=sa.text(OPEN_WAKEUP),
    )

    op.create_table(
        "agent_cursors",
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("last_ts", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("agent", "task_id", name="pk_agent_cursors"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_agent_cursors_task_id_tasks", ondelete="CASCADE"
        ),
    )

    op.create_table(
        "task_usage",
        sa.Column("task_id", Id, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cache_read_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cache_creation_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_task_usage"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_task_usage_task_id_tasks", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    for table in ("task_usage", "agent_cursors", "agent_wakeups", "artifacts", "agent_tokens"):
        op.drop_table(table)
    with op.batch_alter_table("channel_policies") as batch:
        batch.drop_column("agents_may_close")
    op.drop_index("ix_tasks_awaiting_input", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("alive_at")
        batch.drop_column("awaiting_input_since")
