"""Table definitions for queries. Alembic migrations, not this module, create the schema."""

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from store.types import UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Integer primary keys: 64-bit on PostgreSQL, SQLite's rowid alias on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")

#: The stale predicate's fixed half, spelled with literals so that SQLite's planner can prove a
#: query implies it and use the partial index (it cannot with bound parameters).
LEASED_SQL = "claimed_by IS NOT NULL AND status IN ('todo', 'in_progress')"

tasks = Table(
    "tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel_id", String(32), nullable=False),
    Column("number", Integer, nullable=False),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("thread_ts", String(32)),
    Column("card_ts", String(32)),
    Column("status", String(16), nullable=False),
    Column("assignee", String(64)),
    Column("assigned_by", String(32)),
    Column("claimed_by", String(64)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("lease_epoch", Integer, nullable=False, server_default="0"),
    Column("last_progress_at", UTCDateTime()),
    #: Set while a built-in agent waits for a person's answer; the lease is paused meanwhile.
    Column("awaiting_input_since", UTCDateTime()),
    #: The last liveness heartbeat of a generating agent; not progress.
    Column("alive_at", UTCDateTime()),
    #: The last lines of output a worker's command printed, reported with its liveness, and
    #: the epoch of the attempt that printed them (``threadwork worker``); not progress.
    Column("output_tail", Text),
    Column("output_tail_epoch", Integer),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("channel_id", "number"),
    Index(
        "ix_tasks_leased_progress",
        "last_progress_at",
        sqlite_where=text(LEASED_SQL),
        postgresql_where=text(LEASED_SQL),
    ),
    Index("ix_tasks_status", "status"),
    Index("ix_tasks_channel_thread", "channel_id", "thread_ts"),
    Index("ix_tasks_assigned_by", "assigned_by"),
    Index(
        "ix_tasks_awaiting_input",
        "awaiting_input_since",
        sqlite_where=text("awaiting_input_since IS NOT NULL"),
        postgresql_where=text("awaiting_input_since IS NOT NULL"),
    ),
)

channel_counters = Table(
    "channel_counters",
    metadata,
    Column("channel_id", String(32), primary_key=True),
    Column("last_number", Integer, nullable=False),
)

task_events = Table(
    "task_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("data", Json, nullable=False),
    Index("ix_task_events_task_id_id", "task_id", "id"),
)

task_messages = Table(
    "task_messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("channel_id", String(32), nullable=False),
    Column("ts", String(32), nullable=False),
    Column("author", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    UniqueConstraint("channel_id", "ts"),
    Index("ix_task_messages_task_id_ts", "task_id", "ts"),
)

#: Outbox rows still to be sent (``bot.outbox.OPEN_STATES``), and rows parked as dead; spelled
#: with literals, like LEASED_SQL, so that queries can use the partial indexes on SQLite.
OPEN_OUTBOX_SQL = "state IN ('pending', 'in_flight')"
DEAD_OUTBOX_SQL = "state = 'dead'"

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("payload", Json, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("available_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(64)),
    Column("claim_expires_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    Column("result", Json),
    Column("last_error", Text),
    #: The last attempt may have reached the platform: look for it before sending again.
    Column("uncertain", Boolean, nullable=False, server_default=false()),
    #: The platform said the message was too long: the next attempt sends a shortened text.
    Column("shortened", Boolean, nullable=False, server_default=false()),
    #: The rows that hold up the later rows of their thread: the head-of-thread claim's index.
    Index(
        "ix_outbox_open_task",
        "task_id",
        "id",
        sqlite_where=text(OPEN_OUTBOX_SQL),
        postgresql_where=text(OPEN_OUTBOX_SQL),
    ),
    Index(
        "ix_outbox_dead",
        "id",
        sqlite_where=text(DEAD_OUTBOX_SQL),
        postgresql_where=text(DEAD_OUTBOX_SQL),
    ),
)

agents = Table(
    "agents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("display_name", String(128), nullable=False),
    Column("slack_user_id", String(32), index=True),
    Column("slack_bot_id", String(32), index=True),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("settings", Json, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

agent_secrets = Table(
    "agent_secrets",
    metadata,
    Column("agent_id", Id, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: The MCP tool servers of built-in agents (``bot.tool_servers``); header values are secrets,
#: kept in ``agent_secrets`` as ``tool:<label>``.
agent_tool_servers = Table(
    "agent_tool_servers",
    metadata,
    Column("agent_id", Id, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(32), primary_key=True),
    Column("transport", String(8), nullable=False),
    Column("command", Json),
    Column("url", Text),
    Column("allow", Json),
    Column("header_names", Json),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

channel_policies = Table(
    "channel_policies",
    metadata,
    Column("channel_id", String(32), primary_key=True),
    Column("lease_ttl_s", Float),
    Column("max_dispatch_attempts", Integer),
    Column("agents_may_close", Boolean),
    Column("closers", String(16)),
    Column("updated_by", String(32), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: The last lease epoch handed out: epochs come from this one counter, so they are unique across
#: tasks and a fencing token from one task never matches another's.
fencing_tokens = Table(
    "fencing_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last", BigInteger, nullable=False),
)

#: Ids of inbound Slack events already processed, so a redelivery is not processed twice.
inbound_event_ids = Table(
    "inbound_event_ids",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("received_at", UTCDateTime(), nullable=False, index=True),
)

#: One row per running process, kept fresh by its heartbeat. The claims of a worker whose
#: heartbeat is older than the worker timeout are taken over by a live one.
workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False, index=True),
)

#: What each task thread's agent session was last told (``bot.session``): the outbox calls the
#: platform only when the status to show differs.
agent_sessions = Table(
    "agent_sessions",
    metadata,
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: Token buckets every replica draws from (Slack's thread reads), so a budget is one per
#: workspace rather than one per process.
rate_budgets = Table(
    "rate_budgets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

agent_tokens = Table(
    "agent_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("agent_id", Id, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(50), nullable=False),
    Column("uri", Text),
    Column("content", Text),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

OPEN_WAKEUP_SQL = "done_at IS NULL"
HELD_WAKEUP_SQL = "done_at IS NULL AND claimed_by IS NOT NULL"

agent_wakeups = Table(
    "agent_wakeups",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("agent", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(64)),
    Column("claim_expires_at", UTCDateTime()),
    Column("done_at", UTCDateTime()),
    Index(
        "ix_agent_wakeups_open_agent",
        "agent",
        "id",
        sqlite_where=text(OPEN_WAKEUP_SQL),
        postgresql_where=text(OPEN_WAKEUP_SQL),
    ),
    Index(
        "ix_agent_wakeups_claimed_by",
        "claimed_by",
        sqlite_where=text(HELD_WAKEUP_SQL),
        postgresql_where=text(HELD_WAKEUP_SQL),
    ),
)

agent_cursors = Table(
    "agent_cursors",
    metadata,
    Column("agent", String(64), primary_key=True),
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("last_ts", String(32), nullable=False),
)

task_usage = Table(
    "task_usage",
    metadata,
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("steps", Integer, nullable=False, server_default="0"),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_read_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_creation_tokens", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: Agents' keyed tool calls (``bot.tool_requests``): one row per agent and idempotency key,
#: written in the transaction of the call's effect, so a call sent again is not made twice.
#: Kept a day, then pruned.
tool_requests = Table(
    "tool_requests",
    metadata,
    Column("agent", String(64), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("tool", String(32), nullable=False),
    #: SHA-256 of the call's arguments, in hex.
    Column("digest", String(64), nullable=False),
    Column("task_id", Id, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    #: What the call produced; written before its transaction commits.
    Column("result", Json),
    Column("created_at", UTCDateTime(), nullable=False, index=True),
)
