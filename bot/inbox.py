"""Thread posts acknowledged to the chat platform first and stored just after, in batches.

Storing a post is idempotent (unique on channel and ts), and a post lost to a crash before it
was stored is found again by the reconcile's thread probe before any lease is judged. So the
event can be acknowledged at once, and the posts that arrive while one transaction runs are
stored together by the next (up to ``MAX_BATCH``): under load the cost of a transaction is
shared by the batch.

The thread probe reads only the threads of stale tasks: a post acknowledged but never stored
(the process killed, or shut down with posts still queued past its drain time) in a task whose
lease does not lapse is not found again. So the inbox retries, rather than drops, while the
database is unavailable.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import structlog

from bot.supervisor import Supervisor
from bot.task import IncomingReply

logger = structlog.get_logger(__name__)

#: Posts stored per transaction, at most. As many as may wait: under load the writer gets the
#: event loop only between requests, so a transaction lasts many requests long, and a smaller
#: batch would let the posts arriving meanwhile outgrow what it stores (and the acks then wait).
MAX_BATCH = 1000
#: Posts waiting to be stored, at most; past this, ``put`` waits (so the ack waits too).
MAX_PENDING = 1000

#: Waits between attempts while the database is unavailable: doubling up to the cap.
FIRST_RETRY_S = 0.1
MAX_RETRY_S = 5.0

StoreReplies = Callable[[Sequence[IncomingReply]], Awaitable[object]]


class ReplyInbox:
    """A bounded queue of posts with one writer at a time, which takes all that are waiting."""

    def __init__(
        self,
        store: StoreReplies,
        supervisor: Supervisor,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
        is_transient: Callable[[BaseException], bool] = lambda _error: False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._supervisor = supervisor
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._is_transient = is_transient
        self._sleep = sleep
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
        """Stores ``batch`` in one transaction.

        While the database is unavailable (a transient error), the same batch is tried again,
        waiting longer each time; meanwhile new posts queue up to the limit, and then the acks
        wait too. Any other error is the posts' own: the batch is then stored post by post, so
        one bad post cannot hold the others back, and a post that fails alone is logged and
        dropped.
        """
        delay = FIRST_RETRY_S
        while True:
            try:
                await self._store(batch)
                return
            except Exception as error:
                if not self._is_transient(error):
                    break
                logger.warning(
                    "thread_replies.retrying", size=len(batch), wait_s=delay, exc_info=True
                )
                await self._sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
        if len(batch) == 1:
            logger.exception("thread_reply.store_failed", ts=batch[0].ts)
            return
        logger.warning("thread_replies.batch_failed", size=len(batch), exc_info=True)
        for reply in batch:
            await self._write([reply])
