"""Agent tool servers: the MCP servers a built-in agent's runs connect to.

Each row is one server, named by its label within the agent: a stdio command (an argument list)
or a streamable-HTTP URL, optionally limited to some of its tools. Only the names of its HTTP
headers are kept here: their values are secrets, stored encrypted in ``agent_secrets`` (as
``tool:<label>``) like an agent's API key, so that key rotation covers them too.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from store.types import UTCDateTime

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "agent_tool_servers",
        sa.Column("agent_id", Id, nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("command", Json),
        sa.Column("url", sa.Text),
        sa.Column("allow", Json),
        sa.Column("header_names", Json),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "label", name="pk_agent_tool_servers"),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name="fk_agent_tool_servers_agent_id_agents",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("agent_tool_servers")
