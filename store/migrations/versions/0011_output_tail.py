"""The output tail: the last lines a worker's command printed, with the liveness heartbeat.

``threadwork worker`` runs an agent CLI per dispatch attempt and reports, at most every 15 s,
that it is alive along with the last lines of the command's output. The card, ``/task show``
and ``threadwork tasks show --json`` show them. The epoch says which attempt printed them, so
that a new attempt does not show the last one's output. Liveness, not progress: the lease is
untouched.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("output_tail", sa.Text))
        batch.add_column(sa.Column("output_tail_epoch", sa.Integer))


def downgrade() -> None:
    # Not in a batch: on SQLite a batch drop rebuilds ``tasks``, and dropping the old table
    # would delete its events, which their trigger refuses (events are append-only). SQLite
    # drops a plain column in place since 3.35.
    op.drop_column("tasks", "output_tail_epoch")
    op.drop_column("tasks", "output_tail")
