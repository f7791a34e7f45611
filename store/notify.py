"""Commits heard across processes: NOTIFY inside a write transaction, LISTEN on one connection.

PostgreSQL only. A write transaction that queued work sends ``pg_notify('threadwork', ...)``
before it commits; PostgreSQL delivers the notice at commit, and never for a rollback. Each
process keeps one connection of its own LISTENing, outside the engine's pool, and tells its
``ChangeSignal`` what another process queued, so outbox delivery, the agent runner and agents'
``wait_for_work`` wake at once rather than at their next poll. A process ignores its own notices:
it told itself when it committed. A lost connection is reopened with back-off (logged once per
outage); once it is back the signal is told about everything, as notices sent meanwhile are lost.
"""

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.signal import EVERYTHING, Notify, Queued

logger = structlog.get_logger(__name__)

#: The one channel every threadwork process NOTIFYs and LISTENs on.
CHANNEL = "threadwork"
#: What a failed connection attempt or a failed liveness check raises.
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
#: Opens a raw asyncpg connection.
Connect = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Notice:
    """One notification: which process committed, and what its transaction queued."""

    sender: str
    queued: frozenset[Queued]

    def payload(self) -> str:
        return json.dumps({"sender": self.sender, "queued": sorted(self.queued)})

    @classmethod
    def parse(cls, payload: str) -> "Notice":
        """Reads a payload; one it cannot read (another version's) stands for everything, from
        no process, so that it wakes everyone rather than no one."""
        try:
            data = json.loads(payload)
            return cls(str(data["sender"]), frozenset(Queued(name) for name in data["queued"]))
        except (ValueError, TypeError, KeyError):
            return cls("", EVERYTHING)


async def send(connection: AsyncConnection, sender: str, queued: Collection[Queued]) -> None:
    """Tells the other processes, when this transaction commits, what it queued (on PostgreSQL;
    elsewhere, and when nothing was queued, does nothing)."""
    if not queued or connection.dialect.name != "postgresql":
        return
    payload = Notice(sender, frozenset(queued)).payload()
    await connection.execute(select(func.pg_notify(CHANNEL, payload)))


def connector(engine: AsyncEngine) -> Connect:
    """Opens raw asyncpg connections to ``engine``'s database, as the engine reads its URL,
    outside its pool."""
    _args, options = engine.dialect.create_connect_args(engine.url)
    for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        options.pop(adapter_only, None)
    return functools.partial(asyncpg.connect, **options)


@dataclass(frozen=True)
class ListenerSettings:
    """Seconds throughout."""

    #: The first wait before reconnecting; it doubles on each failed attempt, up to ``max_retry``.
    first_retry: float = 0.2
    max_retry: float = 10.0
    #: How often an idle connection is asked ``SELECT 1``, so a silently dead one is noticed.
    check_every: float = 30.0
    #: The bound on connecting, on LISTEN, on a liveness check and on closing.
    timeout: float = 10.0


@dataclass
class _Listening:
    """One live connection and the event its termination sets."""

    connection: Any
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class ChangeListener:
    """LISTENs on :data:`CHANNEL` on a connection of its own; ``notify`` hears what other
    processes queued. The composition root starts it and closes it."""

    def __init__(
        self,
        connect: Connect,
        worker: str,
        notify: Notify,
        settings: ListenerSettings | None = None,
    ) -> None:
        self._connect = connect
        self._worker = worker
        self._notify = notify
        self._settings = settings or ListenerSettings()
        self._live: _Listening | None = None
        self._task: asyncio.Task[None] | None = None
        self._outage_since: float | None = None
        self._listening = asyncio.Event()

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection (None while disconnected)."""
        return None if self._live is None else int(self._live.connection.get_server_pid())

    async def start(self) -> None:
        """Connects and LISTENs (or, failing that, logs the outage and keeps trying in the
        background); from now on the connection is kept open until ``close``."""
        self._live = await self._open()
        self._task = asyncio.create_task(self._keep(), name="notify-listener")

    async def listening(self) -> int:
        """Waits until a connection is LISTENing (bound it); returns its server process."""
        await self._listening.wait()
        pid = self.backend_pid
        assert pid is not None
        return pid

    async def close(self) -> None:
        """Stops reconnecting and closes the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._live is not None:
            await self._close(self._live)
            self._live = None

    async def _keep(self) -> None:
        """Waits for the connection to be lost, then reopens it, until cancelled."""
        while True:
            if self._live is not None:
                await self._until_lost(self._live)
                self._lose(self._live)
            self._live = await self._reopen()
            self._notify(EVERYTHING)  # what was committed while no one listened

    async def _until_lost(self, live: _Listening) -> None:
        """Returns once the connection closed, or did not answer a liveness check."""
        while True:
            try:
                async with asyncio.timeout(self._settings.check_every):
                    await live.lost.wait()
                return
            except TimeoutError:
                if not await self._answers(live.connection):
                    return

    async def _answers(self, connection: Any) -> bool:
        try:
            async with asyncio.timeout(self._settings.timeout):
                await connection.execute("SELECT 1")
        except _CONNECTION_ERRORS:
            return False
        return True

    def _lose(self, live: _Listening) -> None:
        self._listening.clear()
        self._live = None
        live.connection.terminate()
        self._begin_outage("connection lost")

    async def _reopen(self) -> _Listening:
        """Connects again after a growing wait, until it succeeds."""
        delay = self._settings.first_retry
        while True:
            await asyncio.sleep(delay)  # back-off between attempts, not synchronisation
            live = await self._open()
            if live is not None:
                return live
            delay = min(delay * 2, self._settings.max_retry)

    async def _open(self) -> _Listening | None:
        """One attempt to connect and LISTEN; None (the outage logged, once) if it failed."""
        connection = None
        try:
            async with asyncio.timeout(self._settings.timeout):
                connection = await self._connect()
                await connection.add_listener(CHANNEL, self._received)
        except _CONNECTION_ERRORS as exc:
            _terminate(connection)
            self._begin_outage(type(exc).__name__)
            return None
        except BaseException:  # cancelled by close: no half-open connection is left behind
            _terminate(connection)
            raise
        live = _Listening(connection)
        connection.add_termination_listener(lambda _connection: live.lost.set())
        self._end_outage()
        self._listening.set()
        return live

    def _received(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        notice = Notice.parse(payload)
        if notice.sender != self._worker:
            self._notify(notice.queued)

    def _begin_outage(self, reason: str) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning("notify.listen_lost", reason=reason, channel=CHANNEL)

    def _end_outage(self) -> None:
        if self._outage_since is not None:
            down_s = round(time.monotonic() - self._outage_since, 3)
            self._outage_since = None
            logger.info("notify.listen_restored", down_s=down_s, channel=CHANNEL)

    async def _close(self, live: _Listening) -> None:
        if live.connection.is_closed():
            return
        try:
            await live.connection.close(timeout=self._settings.timeout)
        except _CONNECTION_ERRORS as exc:  # asyncpg has aborted the connection by then
            logger.warning("notify.close_failed", error=type(exc).__name__)


def _terminate(connection: Any) -> None:
    if connection is not None:
        connection.terminate()


def listener_for(
    engine: AsyncEngine, worker: str, notify: Notify, settings: ListenerSettings | None = None
) -> ChangeListener | None:
    """The listener for ``engine``'s database on PostgreSQL; None elsewhere (SQLite is one
    machine's file: its processes find each other's work by polling)."""
    if engine.dialect.name != "postgresql":
        return None
    return ChangeListener(connector(engine), worker, notify, settings)
