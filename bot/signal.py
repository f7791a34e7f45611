"""A process-local "something changed" signal: waiters wake at once instead of polling."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from enum import StrEnum

import structlog

logger = structlog.get_logger(__name__)


class Queued(StrEnum):
    """What a commit queued, and so whom it concerns."""

    #: Outbox rows: outbox delivery's work.
    OUTBOX = "outbox"
    #: Agent wake-ups: the runner's work, and that of MCP clients waiting for work.
    WAKEUPS = "wakeups"
    #: Agents or channel policies changed: what outbox delivery renders every row with, and
    #: keeps between rows (``TaskQueries.delivery_context``).
    DIRECTORY = "directory"


EVERYTHING = frozenset(Queued)
#: Told after a commit what it queued (possibly nothing).
Notify = Callable[[frozenset[Queued]], None]


def ignore(_queued: frozenset[Queued]) -> None:
    """A ``Notify`` for use cases run without a signal (the CLI, tests)."""


class ChangeSignal:
    """Notified after commits: each subscriber is called when the commit queued what it
    subscribed to (or always, when it subscribed to everything), and every waiter wakes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._subscribers: list[tuple[Queued | None, Callable[[], None]]] = []
        self._closed = False

    def subscribe(self, callback: Callable[[], None], to: Queued | None = None) -> None:
        self._subscribers.append((to, callback))

    def notify(self, queued: frozenset[Queued] = EVERYTHING) -> None:
        for to, callback in self._subscribers:
            if to is None or to in queued:
                callback()
        self._event.set()
        if not self._closed:
            self._event = asyncio.Event()

    async def changed(self) -> None:
        """Returns at the next change, or at once after ``close``; callers bound the wait with
        ``asyncio.timeout``."""
        await self._event.wait()

    def close(self) -> None:
        """Wakes every waiter, now and from now on: the process is shutting down, so long waits
        (an agent's ``wait_for_work``) end instead of holding the shutdown up."""
        self._closed = True
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._closed


async def work_loop(
    once: Callable[[], Awaitable[int]], wake: asyncio.Event, idle_s: float, failed: str
) -> None:
    """Runs ``once`` until cancelled: again at once while it finds work, else after ``wake`` is
    set or ``idle_s`` seconds pass (work written by another process is found by polling). A
    failure is logged as ``failed`` and counts as finding nothing."""
    while True:
        wake.clear()
        try:
            found = await once()
        except Exception:
            logger.exception(failed)
            found = 0
        if found == 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_s):
                    await wake.wait()
