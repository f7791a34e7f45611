"""The core opened on a database: the use cases, ready to call from the service or the CLI.

Deliberately light: no Slack, model or MCP imports, so the CLI starts fast.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.agent_work import AgentWork
from bot.board import Board
from bot.clock import Clock, utc_now
from bot.reconcile import Reconciler
from bot.registry import AgentRegistry
from bot.secrets import SecretBox
from bot.settings import Settings
from bot.signal import ChangeSignal
from store.database import create_engine
from store.repository import SqlStore


@dataclass(frozen=True)
class Core:
    """The use cases over one store, ready to call."""

    settings: Settings
    engine: AsyncEngine
    store: SqlStore
    board: Board
    reconciler: Reconciler
    registry: AgentRegistry
    work: AgentWork
    signal: ChangeSignal

    @property
    def clock(self) -> Clock:
        return self.board.clock


@asynccontextmanager
async def open_core(settings: Settings, clock: Clock = utc_now) -> AsyncIterator[Core]:
    """Opens the database and builds the use cases; disposes of the engine on exit."""
    engine = create_engine(settings.database_url)
    try:
        store = SqlStore(engine)
        secret_key = settings.secret_key.get_secret_value() if settings.secret_key else ""
        secrets = SecretBox(secret_key) if secret_key else None
        signal = ChangeSignal()
        policy = settings.lease_policy
        yield Core(
            settings=settings,
            engine=engine,
            store=store,
            board=Board(store, clock, policy, notify=signal.notify),
            reconciler=Reconciler(store, clock, policy, notify=signal.notify),
            registry=AgentRegistry(store, clock, secrets),
            work=AgentWork(store, clock, notify=signal.notify),
            signal=signal,
        )
    finally:
        await engine.dispose()
