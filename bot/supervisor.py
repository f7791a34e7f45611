"""A tracked home for background work: every task is awaited or cancelled at shutdown."""

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

logger = structlog.get_logger(__name__)


class Supervisor:
    """Runs coroutines in the background, logs their failures, and closes them cleanly."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Starts ``work``; a failure is logged once, here, with its name."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("supervisor.task_failed", task=task.get_name(), exc_info=task.exception())

    async def drain(self) -> None:
        """Waits until every task spawned so far, and any they spawn, has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close_within(self, seconds: float) -> None:
        """Lets the work finish for up to ``seconds``, then cancels what is left."""
        try:
            async with asyncio.timeout(seconds):
                await self.drain()
        except TimeoutError:
            logger.warning("supervisor.drain_timed_out", seconds=seconds)
        await self.close()

    async def close(self) -> None:
        """Cancels what is still running and waits for it to stop."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
