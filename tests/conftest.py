"""Fixtures shared by the suite: a fixed clock, and a migrated database on each backend.

Store-facing tests take ``database_url``, which runs them once on SQLite and once on
PostgreSQL (THREADWORK_TEST_PG_URL, default the machine's server). Where no PostgreSQL answers,
the PostgreSQL half skips with the reason; with THREADWORK_REQUIRE_PG=1 (CI) it fails instead.
"""

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.board import Board
from bot.channel_policies import ChannelPolicies
from bot.reconcile import ProgressProbe, Reconciler
from bot.registry import AgentRegistry
from bot.root import Core, Overrides, build_reconciler, open_core
from bot.settings import Settings
from bot.task import LeasePolicy
from bot.thread_posts import ThreadPosts
from store.database import create_engine
from store.migrate import upgrade
from store.repository import SqlStore

PG_URL = os.environ.get("THREADWORK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLES = (
    "agent_secrets, agents, outbox, task_messages, task_events, tasks, channel_counters, "
    "channel_policies, inbound_event_ids, agent_tokens, artifacts, agent_wakeups, agent_cursors, "
    "task_usage, workers, rate_budgets, agent_sessions"
)
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
#: THREADWORK_SECRET_KEY for tests: 32 random bytes in URL-safe base64, as the setting requires.
TEST_SECRET_KEY = "aEyMcDUJyAbKTdVXEtavsAChfs1W2ZXAUAoKt60fwCM="


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class SequentialKeys:
    """Deterministic outbox keys: k1, k2, ..."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"k{self.count}"


async def _create_pg_database() -> str:
    """Creates and migrates a scratch database beside PG_URL's; returns its URL."""
    admin = make_url(PG_URL)
    name = f"threadwork_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(
        host=admin.host, port=admin.port, user=admin.username, database=admin.database, timeout=5
    )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return url


async def _drop_pg_database(url: str) -> None:
    admin = make_url(PG_URL)
    conn = await asyncpg.connect(
        host=admin.host, port=admin.port, user=admin.username, database=admin.database, timeout=5
    )
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    """A migrated scratch PostgreSQL database for the session, or None when none answers."""
    try:
        url = asyncio.run(_create_pg_database())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        if os.environ.get("THREADWORK_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL is required but {PG_URL} did not answer: {exc}")
        yield None
        return
    yield url
    asyncio.run(_drop_pg_database(url))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies, so migrations run once."""
    path = tmp_path_factory.mktemp("template") / "threadwork.db"

    async def migrate() -> None:
        engine = create_engine(f"sqlite:///{path}")
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, pg_url: str | None
) -> str:
    """A migrated, empty database on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "threadwork.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    if pg_url is None:
        pytest.skip(f"PostgreSQL at {PG_URL} did not answer")
    engine = create_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
            await conn.execute(text("UPDATE fencing_tokens SET last = 0"))
    finally:
        await engine.dispose()
    return pg_url


def core_settings(database_url: str) -> Settings:
    """The settings the core tests run with: a 600 s TTL and two attempts (the defaults)."""
    return Settings(DATABASE_URL=database_url, THREADWORK_SECRET_KEY=TEST_SECRET_KEY)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> SequentialKeys:
    return SequentialKeys()


@pytest.fixture
async def core(database_url: str, clock: FakeClock, keys: SequentialKeys) -> AsyncIterator[Core]:
    """The core as the composition root builds it, on a fixed clock with numbered keys."""
    async with open_core(core_settings(database_url), Overrides(clock=clock, new_key=keys)) as c:
        yield c


def reconciler_with(
    core: Core, probe: ProgressProbe, clock: FakeClock, keys: SequentialKeys, batch: int = 1000
) -> Reconciler:
    """The root's reconciler on ``core``'s store, with ``probe`` looking for missed progress."""
    overrides = Overrides(clock=clock, new_key=keys, reconcile_batch=batch)
    return build_reconciler(core.store, core.settings, core.signal, overrides, probe)


@pytest.fixture
def engine(core: Core) -> AsyncEngine:
    return core.engine


@pytest.fixture
def store(core: Core) -> SqlStore:
    return core.store


@pytest.fixture
def policy() -> LeasePolicy:
    return LeasePolicy(lease_ttl=timedelta(seconds=600), max_dispatch_attempts=2)


@pytest.fixture
def board(core: Core) -> Board:
    return core.board


@pytest.fixture
def thread_posts(core: Core) -> ThreadPosts:
    return core.thread_posts


@pytest.fixture
def channel_policies(core: Core) -> ChannelPolicies:
    return core.channel_policies


@pytest.fixture
def reconciler(core: Core) -> Reconciler:
    return core.reconciler


@pytest.fixture
def registry(core: Core) -> AgentRegistry:
    return core.registry
