"""Outbox dead letters, for admins: what the platform refused or still waits, and one row sent
again or dropped.

Each move is one transaction: the row's guarded UPDATE and an event in its task's history, by
the admin who asked. Who is an admin is the front door's check (``/task-admin``).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from bot.clock import Clock
from bot.errors import Conflict, InvalidInput, NotFound
from bot.outbox import (
    OPEN_STATES,
    OutboxRow,
    OutboxState,
    check_outbox_drop,
    check_outbox_retry,
)
from bot.ports import Reader, Store, Unit
from bot.signal import Notify, ignore
from bot.task import Actor, EventKind, NewEvent

#: Rows of each kind a review lists, at most.
REVIEW_LIMIT = 20

#: Raises unless a row in this state may make the move; then the move itself, a guarded UPDATE.
Check = Callable[[int, OutboxState], None]
Move = Callable[[Unit, int, datetime], Awaitable[OutboxRow | None]]


@dataclass(frozen=True)
class OutboxReview:
    """Dead rows and the oldest rows still to be sent, with how many there are of each."""

    dead: list[OutboxRow]
    waiting: list[OutboxRow]
    dead_total: int
    waiting_total: int
    now: datetime


def parse_outbox_id(text: str) -> int:
    """Reads an outbox row id (``12``, or ``#12``); raises InvalidInput saying how to find one."""
    digits = text.strip().removeprefix("#")
    if not digits.isdigit() or not 1 <= int(digits) <= 2**63 - 1:
        raise InvalidInput(
            f"`{text[:40]}` is not an outbox row id; `/task-admin outbox` lists them."
        )
    return int(digits)


class DeadLetters:
    """Reviews the outbox, and retries or drops one row, on an injected clock."""

    def __init__(self, store: Store, clock: Clock, notify: Notify = ignore) -> None:
        self._store = store
        self._clock = clock
        self._notify = notify

    async def review_outbox(self, limit: int = REVIEW_LIMIT) -> OutboxReview:
        """Dead rows and the rows still waiting to be sent, oldest first."""
        async with self._store.read() as reader:
            counts = await reader.count_outbox()
            return OutboxReview(
                dead=await reader.list_dead_outbox(limit),
                waiting=await reader.list_open_outbox(limit),
                dead_total=counts[OutboxState.DEAD],
                waiting_total=sum(counts[state] for state in OPEN_STATES),
                now=self._clock(),
            )

    async def retry_outbox_row(self, row_id: int, by: Actor) -> OutboxRow:
        """Sends dead row ``row_id`` again, now, in its thread's order; records who asked."""
        return await self._move(
            row_id, by, check_outbox_retry, EventKind.OUTBOX_RETRIED, _retry_now
        )

    async def drop_outbox_row(self, row_id: int, by: Actor) -> OutboxRow:
        """Drops dead or pending row ``row_id``: it is never sent, and the rows behind it in
        its thread go on; records who asked."""
        return await self._move(row_id, by, check_outbox_drop, EventKind.OUTBOX_DROPPED, _drop)

    async def _move(
        self, row_id: int, by: Actor, check: Check, kind: EventKind, move: Move
    ) -> OutboxRow:
        """Checks the row's state, moves it with a guarded UPDATE and records ``kind``, in one
        transaction; then wakes delivery."""
        now = self._clock()
        async with self._store.transaction() as unit:
            row = await _require_row(unit, row_id)
            check(row_id, row.state)
            moved = await move(unit, row_id, now)
            if moved is None:
                raise Conflict(f"Outbox row {row_id} changed meanwhile; look again.")
            await unit.append_events([_event(kind, row, by, now)])
            queued = frozenset(unit.queued)
        self._notify(queued)
        return moved


async def _retry_now(unit: Unit, row_id: int, now: datetime) -> OutboxRow | None:
    return await unit.retry_outbox_row(row_id, now)


async def _drop(unit: Unit, row_id: int, _now: datetime) -> OutboxRow | None:
    return await unit.drop_outbox_row(row_id)


async def _require_row(reader: Reader, row_id: int) -> OutboxRow:
    row = await reader.get_outbox_row(row_id)
    if row is None:
        raise NotFound(f"There is no outbox row {row_id}; `/task-admin outbox` lists them.")
    return row


def _event(kind: EventKind, row: OutboxRow, by: Actor, at: datetime) -> NewEvent:
    data = {
        "outbox_id": row.id,
        "kind": row.kind.value,
        "state": row.state.value,
        "error": (row.last_error or "")[:200],
    }
    return NewEvent(row.task_id, kind, by, at, data)
