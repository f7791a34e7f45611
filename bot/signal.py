"""A process-local "something changed" signal: waiters wake at once instead of polling."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

logger = structlog.get_logger(__name__)


class ChangeSignal:
    """Notified after a commit that queued work (outbox rows, agent wake-ups) and after agent
    work and reconcile commits: subscribers are called, and any number of waiters wake."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def notify(self) -> None:
        for callback in self._subscribers:
            callback()
        self._event.set()
        self._event = asyncio.Event()

    async def changed(self) -> None:
        """Returns at the next change; callers bound the wait with ``asyncio.timeout``."""
        await self._event.wait()


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
