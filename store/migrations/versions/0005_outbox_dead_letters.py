"""Outbox dead letters: rows Slack refuses for good are parked, and no longer hold up a thread.

A row can now be ``dead`` (refused for good, kept with Slack's error until an admin retries or
drops it) or ``dropped`` (never sent). Only ``pending`` and ``in_flight`` rows hold up the later
rows of their thread, so the partial index that serves the head-of-thread claim now covers just
those; a second one finds the dead rows for ``/task-admin outbox``. ``shortened`` says that the
next attempt sends a shortened text, after Slack answered that the message was too long.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "state IN ('pending', 'in_flight')"
DEAD = "state = 'dead'"
UNDELIVERED = "state != 'delivered'"


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(
            sa.Column("shortened", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.drop_index("ix_outbox_undelivered_task", table_name="outbox")
    _partial_index("ix_outbox_open_task", ["task_id", "id"], OPEN)
    _partial_index("ix_outbox_dead", ["id"], DEAD)


def downgrade() -> None:
    # Before dead letters every row was retried until delivered: a parked row goes back to
    # pending, and a dropped one (never to be sent) counts as settled.
    op.execute("UPDATE outbox SET state = 'pending' WHERE state = 'dead'")
    op.execute("UPDATE outbox SET state = 'delivered' WHERE state = 'dropped'")
    op.drop_index("ix_outbox_dead", table_name="outbox")
    op.drop_index("ix_outbox_open_task", table_name="outbox")
    # The column first: SQLite's batch mode rebuilds the table, and the partial index after it.
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("shortened")
    _partial_index("ix_outbox_undelivered_task", ["task_id", "id"], UNDELIVERED)


def _partial_index(name: str, columns: list[str], where: str) -> None:
    op.create_index(
        name,
        "outbox",
        columns,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )
