"""The outbox: what a transaction queues, what admins read and move, and delivery's
claim-then-settle side."""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.outbox import OutboxMessage, OutboxRow, OutboxState
from bot.session import SessionStatus
from bot.signal import Queued
from bot.task import NewEvent


class OutboxReads(Protocol):
    """What admins read about the outbox: what is dead, and what still waits to be sent."""

    async def get_outbox_row(self, row_id: int) -> OutboxRow | None: ...

    async def list_dead_outbox(self, limit: int) -> list[OutboxRow]:
        """Dead rows, oldest first."""
        ...

    async def list_open_outbox(
        self, limit: int, task_ids: Collection[int] | None = None
    ) -> list[OutboxRow]:
        """Rows still to be sent (pending or in flight), oldest first; only those of
        ``task_ids`` when given."""
        ...

    async def count_outbox(self, task_ids: Collection[int] | None = None) -> dict[OutboxState, int]:
        """How many rows are pending, in flight and dead; only those of ``task_ids`` when
        given."""
        ...


class OutboxWrites(Protocol):
    """The side effects a transaction queues for delivery."""

    #: What this transaction enqueued (outbox rows, agent wake-ups): work for outbox delivery
    #: or the runner to pick up once it commits.
    queued: set[Queued]

    async def enqueue(self, messages: Sequence[OutboxMessage], at: datetime) -> None: ...


class OutboxReviewWrites(Protocol):
    """An admin's moves of one outbox row, each a guarded UPDATE; None when the row was not
    in a state the move starts from."""

    async def retry_outbox_row(self, row_id: int, at: datetime) -> OutboxRow | None:
        """A dead row back to pending, due at ``at``."""
        ...

    async def drop_outbox_row(self, row_id: int) -> OutboxRow | None:
        """A dead or pending row to dropped: never sent."""
        ...


@dataclass(frozen=True)
class Recorded:
    """A delivery recorded: whether the worker still held the row, and its thread's next row
    when that was claimed in the same transaction."""

    settled: bool
    next_row: OutboxRow | None = None


class OutboxQueue(Protocol):
    """Delivery's side of the outbox: claim, then settle, each its own transaction."""

    async def claim_outbox(
        self,
        worker: str,
        now: datetime,
        limit: int,
        per_lane: int | None = None,
        held: Mapping[tuple[str, bool], int] | None = None,
    ) -> list[OutboxRow]:
        """Claims up to ``limit`` rows, each at the head of its thread's sequence: a thread's
        card comes first, then its posts and its card updates each go in order, neither
        waiting for the other. Never two rows of one sequence at once.

        A lane is ``(channel_id, updates)``: a channel's new posts, or its card updates. No
        lane ends up holding more than ``per_lane`` rows, counting those ``held`` already. A
        claimed card update settles the later pending card updates of its card with it
        (``OutboxRow.coalesced``)."""
        ...

    async def release_claims(self, worker: str, uncertain_ids: Collection[int]) -> int:
        """Hands every row ``worker`` holds back as pending (a clean stop); the rows in
        ``uncertain_ids``, whose call was under way, are marked uncertain. Returns how many."""
        ...

    async def mark_delivered(
        self,
        row_id: int,
        worker: str,
        result: dict[str, object],
        at: datetime,
        card: tuple[int, str] | None = None,
    ) -> bool: ...

    async def mark_delivered_and_claim_next(
        self,
        row_id: int,
        worker: str,
        result: dict[str, object],
        at: datetime,
        card: tuple[int, str] | None,
        per_lane: int,
        held: Mapping[tuple[str, bool], int],
        session: tuple[int, SessionStatus] | None = None,
    ) -> Recorded:
        """Settles a delivered row as ``mark_delivered`` does and, in the same transaction,
        records the agent session status it set (``session``: task id and status) and claims
        its thread's next row when that is due and its lane holds fewer than ``per_lane`` of
        ``held`` (which no longer counts the settled row)."""
        ...

    async def release_for_retry(
        self,
        row_id: int,
        worker: str,
        available_at: datetime,
        error: str,
        uncertain: bool = False,
        shortened: bool = False,
    ) -> bool:
        """Back to pending at ``available_at``; ``shortened``: later attempts send less."""
        ...

    async def mark_dead(self, row_id: int, worker: str, error: str, event: NewEvent) -> bool:
        """Parks the row as dead with ``error`` and appends ``event``, in one transaction,
        only while ``worker`` holds the claim."""
        ...
