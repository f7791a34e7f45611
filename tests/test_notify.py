"""Commits heard across processes on PostgreSQL: NOTIFY at commit, one LISTENing connection."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.board import Board
from bot.root import Core, Overrides, open_core
from bot.signal import EVERYTHING, Queued
from bot.task import Actor
from bot.work import WakeReason
from store.notify import (
    CHANNEL,
    ChangeListener,
    Connect,
    ListenerSettings,
    connector,
    listener_for,
)
from tests.conftest import PG_URL, FakeClock, SequentialKeys, core_settings

#: The tests that need PostgreSQL run on it alone (``database_url`` on its postgres half).
on_postgres = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

ALICE = "U_ALICE"
#: Reconnects quickly, so an outage in a test lasts only as long as the test keeps it.
FAST = ListenerSettings(first_retry=0.01, max_retry=0.05)


class Heard:
    """A ``Notify`` that records what it was told, in order."""

    def __init__(self) -> None:
        self.notices: list[frozenset[Queued]] = []
        self._more = asyncio.Event()

    def __call__(self, queued: frozenset[Queued]) -> None:
        self.notices.append(queued)
        self._more.set()

    async def until(self, count: int) -> list[frozenset[Queued]]:
        """Waits (bound it) until ``count`` notices were heard; returns them all."""
        while len(self.notices) < count:
            self._more.clear()
            await self._more.wait()
        return self.notices


@pytest.fixture
async def other(database_url: str, clock: FakeClock, keys: SequentialKeys) -> AsyncIterator[Core]:
    """Another process's core on the same database."""
    overrides = Overrides(clock=clock, new_key=keys, worker="other-process")
    async with open_core(core_settings(database_url), overrides) as core:
        yield core


@pytest.fixture
async def heard(core: Core) -> AsyncIterator[Heard]:
    """What this process's listener hears (it is ``core``'s process)."""
    notices = Heard()
    listener = listener_for(core.engine, core.store.sender, notices)
    assert listener is not None
    await listener.start()
    yield notices
    await listener.close()


@on_postgres
async def test_another_processs_commit_is_heard_with_what_it_queued(
    other: Core, heard: Heard
) -> None:
    await other.registry.add_agent("coder")
    task = await other.board.create_task("C1", "Ship it", Actor.user(ALICE))
    await other.board.assign_task(task.ref, "coder", ALICE)

    async with asyncio.timeout(10):
        notices = await heard.until(3)
    # Registering an agent changed what delivery renders with, so it said so.
    assert notices == [
        frozenset({Queued.DIRECTORY}),
        frozenset({Queued.OUTBOX}),
        frozenset({Queued.OUTBOX, Queued.WAKEUPS}),
    ]


@on_postgres
async def test_a_rolled_back_transaction_is_never_heard(other: Core, heard: Heard) -> None:
    task = await other.board.create_task("C1", "Ship it", Actor.user(ALICE))
    with pytest.raises(RuntimeError, match="changed its mind"):
        await wake_then_fail(other, task.id)
    await other.board.create_task("C1", "Ship it again", Actor.user(ALICE))

    async with asyncio.timeout(10):
        notices = await heard.until(2)
    # Notices come in commit order: a wake-up heard would be the second.
    assert notices == [frozenset({Queued.OUTBOX})] * 2


@on_postgres
async def test_a_process_does_not_hear_its_own_commits(
    board: Board, other: Core, heard: Heard
) -> None:
    await other.registry.add_agent("coder")
    theirs = await other.board.create_task("C1", "Theirs", Actor.user(ALICE))
    await board.create_task("C1", "Mine", Actor.user(ALICE))
    await other.board.assign_task(theirs.ref, "coder", ALICE)

    async with asyncio.timeout(10):
        notices = await heard.until(3)
    # In commit order; had its own card been heard, it would be the third notice.
    assert notices == [
        frozenset({Queued.DIRECTORY}),
        frozenset({Queued.OUTBOX}),
        frozenset({Queued.OUTBOX, Queued.WAKEUPS}),
    ]


@on_postgres
async def test_a_payload_it_cannot_read_wakes_everything(core: Core, heard: Heard) -> None:
    async with core.engine.begin() as connection:
        await connection.execute(
            text("SELECT pg_notify(:channel, 'not json')"), {"channel": CHANNEL}
        )

    async with asyncio.timeout(10):
        assert await heard.until(1) == [EVERYTHING]


@on_postgres
async def test_the_listener_reconnects_with_one_warning_per_outage_then_wakes_everything(
    database_url: str, core: Core, other: Core
) -> None:
    attempts = Attempts(connector(core.engine))
    notices = Heard()
    listener = ChangeListener(attempts, core.store.sender, notices, FAST)
    await listener.start()
    try:
        first = await listener.listening()
        with structlog.testing.capture_logs() as logs:
            async with refused_connections(database_url):
                await terminate(first)
                async with asyncio.timeout(10):
                    await attempts.until_failed(3)
            async with asyncio.timeout(10):
                # Back: told about everything once, since notices sent meanwhile are lost.
                assert await notices.until(1) == [EVERYTHING]
            assert listener.backend_pid not in (None, first)
            await other.board.create_task("C1", "After the outage", Actor.user(ALICE))
            async with asyncio.timeout(10):
                assert await notices.until(2) == [EVERYTHING, frozenset({Queued.OUTBOX})]
    finally:
        await listener.close()

    assert listener.backend_pid is None
    events = [entry["event"] for entry in logs if entry["event"].startswith("notify.")]
    assert events == ["notify.listen_lost", "notify.listen_restored"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_on_sqlite_there_is_no_listener_and_commits_go_on_as_before(
    core: Core, board: Board
) -> None:
    assert listener_for(core.engine, "this-process", Heard()) is None
    await board.create_task("C1", "Still works", Actor.user(ALICE))


async def wake_then_fail(core: Core, task_id: int) -> None:
    """Queues a wake-up in a transaction that then fails, so it rolls back."""
    async with core.store.transaction() as unit:
        await unit.enqueue_wakeups([(task_id, "coder", WakeReason.DIRECTIVE, 1)], core.clock())
        raise RuntimeError("changed its mind")


class Attempts:
    """Connects as ``connect`` does, counting the attempts the server refused."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self.failed = 0
        self._more = asyncio.Event()

    async def __call__(self) -> Any:
        try:
            return await self._connect()
        except asyncpg.PostgresError:
            self.failed += 1
            self._more.set()
            raise

    async def until_failed(self, count: int) -> None:
        """Waits (bound it) until ``count`` attempts were refused."""
        while self.failed < count:
            self._more.clear()
            await self._more.wait()


@asynccontextmanager
async def refused_connections(database_url: str) -> AsyncIterator[None]:
    """While open, the database takes no new connections, not even a superuser's."""
    name = make_url(database_url).database
    await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        yield
    finally:
        await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def terminate(pid: int) -> None:
    """Kills a server process, as an operator or a failover would."""
    await _admin(f"SELECT pg_terminate_backend({int(pid)})")


async def _admin(statement: str) -> None:
    admin = make_url(PG_URL)
    conn = await asyncpg.connect(
        host=admin.host, port=admin.port, user=admin.username, database=admin.database, timeout=5
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
