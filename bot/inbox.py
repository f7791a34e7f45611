"""Thread posts acknowledged to the chat platform first and stored just after, in batches.

Storing a post is idempotent (unique on channel and ts), and a post lost to a crash before it
was stored is found again by the reconcile's thread probe before any lease is judged. So the
event can be acknowledged at once, and the posts that arrive while one transaction runs are
stored together by the next: under load the cost of a transaction is shared by the batch.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import structlog

from bot.supervisor import Supervisor
from bot.task import IncomingReply

logger = structlog.get_logger(__name__)

#: Posts stored per transaction, at most.
MAX_BATCH = 200
#: Posts waiting to be stored, at most; past this, ``put`` waits (so the ack waits too).
MAX_PENDING = 1000

StoreReplies = Callable[[Sequence[IncomingReply]], Awaitable[object]]


class ReplyInbox:
    """A bounded queue of posts with one writer at a time, which takes all that are waiting."""

    def __init__(
        self,
        store: StoreReplies,
        supervisor: Supervisor,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._store = store
        self._supervisor = supervisor
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._waiting: deque[IncomingReply] = deque()
        self._room = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Posts accepted and not yet written."""
        return len(self._waiting)

    async def put(self, reply: IncomingReply) -> None:
        """Accepts ``reply`` for storing; waits while the queue is full (back-pressure)."""
        while len(self._waiting) >= self._max_pending:
            self._room.clear()
            await self._room.wait()
        self._waiting.append(reply)
        if self._writer is None or self._writer.done():
            self._writer = self._supervisor.spawn(self._write_all(), name="thread-replies")

    async def _write_all(self) -> None:
        while self._waiting:
            count = min(len(self._waiting), self._max_batch)
            batch = [self._waiting.popleft() for _ in range(count)]
            self._room.set()
            await self._write(batch)

    async def _write(self, batch: list[IncomingReply]) -> None:
        """Stores ``batch`` in one transaction; if that fails, each post alone, so that one
        bad post cannot hold the others back. A post that fails alone is logged and left to
        the reconcile's thread probe."""
        try:
            await self._store(batch)
            return
        except Exception:
            if len(batch) == 1:
                logger.exception("thread_reply.store_failed", ts=batch[0].ts)
                return
            logger.warning("thread_replies.batch_failed", size=len(batch), exc_info=True)
        for reply in batch:
            await self._write([reply])
