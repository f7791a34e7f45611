"""A process-local "something changed" signal: waiters wake at once instead of polling."""

import asyncio


class ChangeSignal:
    """Set after every commit; any number of waiters wake, then wait for the next change."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def changed(self) -> None:
        """Returns at the next change; callers bound the wait with ``asyncio.timeout``."""
        await self._event.wait()
