"""Workers' registrations and the claims they hold."""

from datetime import datetime
from typing import Protocol

from bot.claims import Released


class WorkerWrites(Protocol):
    """Workers' registrations and the claims they hold (``bot.workers``)."""

    async def register_worker(self, worker: str, now: datetime) -> None: ...

    async def heartbeat_worker(self, worker: str, now: datetime) -> bool:
        """False when the worker's row is gone: it was presumed dead and taken over."""
        ...

    async def release_worker(self, worker: str) -> Released:
        """Hands back everything ``worker`` holds and deregisters it."""
        ...

    async def take_over_dead_workers(self, cutoff: datetime, me: str) -> tuple[list[str], Released]:
        """Forgets workers not heard from since ``cutoff`` (never ``me``); reopens the claims
        no live worker holds."""
        ...

    async def oldest_heartbeat(self, me: str) -> datetime | None:
        """The oldest heartbeat among the workers other than ``me``."""
        ...
