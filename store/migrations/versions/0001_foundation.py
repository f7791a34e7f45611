"""Foundation: tasks, events, thread messages, outbox, agents and their secrets.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from store.types import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
LEASED = "claimed_by IS NOT NULL AND status IN ('todo', 'in_progress')"
UNDELIVERED = "state != 'delivered'"


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("thread_ts", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("assignee", sa.String(64)),
        sa.Column("assigned_by", sa.String(32)),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_progress_at", UTCDateTime()),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.UniqueConstraint("channel_id", "number", name="uq_tasks_channel_id_number"),
    )
    op.create_index(
        "ix_tasks_leased_progress",
        "tasks",
        ["last_progress_at"],
        sqlite_where=sa.text(LEASED),
        postgresql_where=sa.text(LEASED),
    )
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.create_index("ix_tasks_channel_thread", "tasks", ["channel_id", "thread_ts"])

    op.create_table(
        "channel_counters",
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("last_number", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name="pk_channel_counters"),
    )

    op.create_table(
        "task_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("data", Json, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_task_events"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_task_events_task_id_tasks", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_task_events_task_id_id", "task_events", ["task_id", "id"])
    _forbid_event_rewrites()

    op.create_table(
        "task_messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_task_messages"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_task_messages_task_id_tasks", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("channel_id", "ts", name="uq_task_messages_channel_id_ts"),
    )
    op.create_index("ix_task_messages_task_id_ts", "task_messages", ["task_id", "ts"])

    op.create_table(
        "outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("available_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claim_expires_at", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime()),
        sa.Column("result", Json),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_outbox_task_id_tasks", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("key", name="uq_outbox_key"),
    )
    op.create_index(
        "ix_outbox_undelivered_task",
        "outbox",
        ["task_id", "id"],
        sqlite_where=sa.text(UNDELIVERED),
        postgresql_where=sa.text(UNDELIVERED),
    )

    op.create_table(
        "agents",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=False),
        sa.Column("slack_user_id", sa.String(32)),
        sa.Column("slack_bot_id", sa.String(32)),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("settings", Json, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.UniqueConstraint("name", name="uq_agents_name"),
    )

    op.create_table(
        "agent_secrets",
        sa.Column("agent_id", Id, nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "name", name="pk_agent_secrets"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_secrets_agent_id_agents", ondelete="CASCADE"
        ),
    )


def _forbid_event_rewrites() -> None:
    """Makes the database itself refuse any UPDATE or DELETE of a task event."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION task_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'task events are append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER task_events_append_only BEFORE UPDATE OR DELETE ON task_events "
            "FOR EACH ROW EXECUTE FUNCTION task_events_append_only()"
        )
        return
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER task_events_no_{action.lower()} BEFORE {action} ON task_events "
            "BEGIN SELECT RAISE(ABORT, 'task events are append-only'); END"
        )


def downgrade() -> None:
    for table in ("agent_secrets", "agents", "outbox", "task_messages", "task_events"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION task_events_append_only()")
    op.drop_table("channel_counters")
    op.drop_table("tasks")
