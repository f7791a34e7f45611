"""A process-local "something changed" signal: waiters wake at once instead of polling."""

import asyncio
from collections.abc import Callable


class ChangeSignal:
    """Set after every commit: subscribers are called, and any number of waiters wake."""

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
