"""Fills a migrated database with a board of tasks in bulk SQL, and arms its stale set.

Rows are computed from their id, so loading is one ``INSERT ... SELECT`` over a recursive CTE
(SQLite) or ``generate_series`` (PostgreSQL), and arming the stale set again before each run is
one ``UPDATE``. The board is shaped like a real one: by ``id % 97``, 55% done, 10% in review
(still claimed, progress long past: the status half of the stale predicate must exclude them),
5% canceled, 3% blocked, 12% unclaimed todo and 15% claimed with fresh progress. The stale set
(see ``StaleRows``) is claimed, todo or in progress, with progress 1 to 61 minutes past the
lease TTL; one in ten of them is on its last attempt, so the tick blocks it instead.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.outbox import OutboxState
from bot.task import LeasePolicy
from store.reader import SqlReader
from store.schema import agent_wakeups, outbox

#: The fixed instant every tick runs at.
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POLICY = LeasePolicy(lease_ttl=timedelta(seconds=600), max_dispatch_attempts=2)

PLACEMENTS = ("recent", "spread")
RECENT_STRIDE = 4

#: Tasks waiting for a person's answer, at every size.
AWAITING_INPUT = 100

_TTL_S = int(POLICY.lease_ttl.total_seconds())
_AGENT = "'agent-' || (id % 20)"
_ASSIGNER = "'U' || (id % 40)"
_UNCLAIMED = "b BETWEEN 73 AND 84"
_CLAIMED = "(b BETWEEN 55 AND 64 OR b >= 85)"
_CREATED_S = "((:n - id) * 60 + 86400)"
_FRESH_S = f"(id % {_TTL_S - 60})"
_OLD_PROGRESS_S = f"({_CREATED_S} - 3600)"
_STALE_S = f"({_TTL_S} + 60 + id % 3600)"


@dataclass(frozen=True)
class StaleRows:
    """Which tasks a measurement arms stale: every ``stride``-th id above ``after``."""

    after: int
    stride: int

    @classmethod
    def place(cls, tasks: int, count: int, placement: str) -> "StaleRows":
        """``count`` stale tasks among ``tasks``, placed as ``placement`` says.

        ``recent``: every 4th of the newest tasks, as when the agents working the current tasks
        stop; the stale set has the same page locality at every table size. ``spread``: evenly
        over the whole table, one per page on a big table, the worst case for locality.
        """
        if placement == "spread":
            return cls(0, tasks // count)
        return cls(max(tasks - count * RECENT_STRIDE, 0), RECENT_STRIDE)


@dataclass(frozen=True)
class StaleSet:
    """The tasks a tick must act on: ``redispatch`` are on attempt 1, ``block`` on their last."""

    redispatch: int
    block: int

    @property
    def size(self) -> int:
        return self.redispatch + self.block


def _ago(dialect: str, seconds: str) -> str:
    """SQL for ``NOW - seconds``, stored the way ``UTCDateTime`` stores it on ``dialect``."""
    if dialect == "sqlite":
        epoch = int(NOW.timestamp())
        return f"strftime('%Y-%m-%d %H:%M:%S', {epoch} - {seconds}, 'unixepoch') || '.000000'"
    return f"(TIMESTAMPTZ '{NOW.isoformat()}' - ({seconds}) * INTERVAL '1 second')"


def _ids(dialect: str) -> str:
    if dialect == "sqlite":
        return "WITH RECURSIVE g(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM g WHERE id < :n)"
    return "WITH g(id) AS (SELECT generate_series(1, CAST(:n AS INTEGER)))"


def _load_sql(dialect: str) -> str:
    progress = (
        f"CASE WHEN {_UNCLAIMED} THEN NULL WHEN b >= 85 THEN {_ago(dialect, _FRESH_S)} "
        f"ELSE {_ago(dialect, _OLD_PROGRESS_S)} END"
    )
    return f"""
    {_ids(dialect)}
    INSERT INTO tasks (id, channel_id, number, title, description, thread_ts, card_ts, status,
        assignee, assigned_by, claimed_by, attempts, lease_epoch, last_progress_at, created_by,
        created_at, updated_at)
    SELECT id, 'C' || (id % 50), id / 50 + 1, 'Task ' || id, 'Benchmark task ' || id,
        CAST(1700000000 + id AS TEXT) || '.000100', CAST(1700000000 + id AS TEXT) || '.000100',
        CASE WHEN b < 55 THEN 'done' WHEN b < 65 THEN 'in_review' WHEN b < 70 THEN 'canceled'
            WHEN b < 73 THEN 'blocked' WHEN b < 85 THEN 'todo'
            WHEN b % 2 = 0 THEN 'todo' ELSE 'in_progress' END,
        CASE WHEN {_UNCLAIMED} THEN NULL ELSE {_AGENT} END,
        CASE WHEN {_UNCLAIMED} THEN NULL ELSE {_ASSIGNER} END,
        CASE WHEN {_CLAIMED} THEN {_AGENT} END,
        CASE WHEN {_UNCLAIMED} THEN 0 ELSE 1 END,
        CASE WHEN {_UNCLAIMED} THEN 0 ELSE 1 END,
        {progress},
        {_ASSIGNER},
        {_ago(dialect, _CREATED_S)},
        COALESCE({progress}, {_ago(dialect, _CREATED_S)})
    FROM (SELECT id, id % 97 AS b FROM g) AS r
    """  # noqa: S608 - SQL from constant fragments; values go in as binds


def _arm_sql(dialect: str) -> str:
    attempts = "CASE WHEN (id / :stride) % 10 = 0 THEN 2 ELSE 1 END"
    return f"""
    UPDATE tasks SET
        status = CASE WHEN (id / :stride) % 2 = 0 THEN 'in_progress' ELSE 'todo' END,
        assignee = {_AGENT}, assigned_by = {_ASSIGNER}, claimed_by = {_AGENT},
        attempts = {attempts}, lease_epoch = {attempts},
        last_progress_at = {_ago(dialect, _STALE_S)}, updated_at = {_ago(dialect, _STALE_S)}
    WHERE id > :after AND id % :stride = 0
    """  # noqa: S608 - SQL from constant fragments; values go in as binds


def _awaiting_sql(dialect: str) -> str:
    return f"""
    UPDATE tasks SET status = 'in_progress', assignee = {_AGENT}, assigned_by = {_ASSIGNER},
        claimed_by = {_AGENT}, attempts = 1, lease_epoch = 1,
        last_progress_at = {_ago(dialect, "7200")}, awaiting_input_since = {_ago(dialect, "300")}
    WHERE id % :every = 7
    """  # noqa: S608 - SQL from constant fragments; values go in as binds


async def load_tasks(engine: AsyncEngine, count: int) -> None:
    """Inserts tasks 1..``count`` and their channels' counters into an empty, migrated database.

    A hundred of them, at any size, have waited five minutes (less than the TTL) for a person's
    answer, with progress long past the TTL: their lease is paused and their wait has not run
    out, so the tick must leave them alone although the stale index range holds them.
    """
    async with engine.begin() as connection:
        await connection.execute(text(_load_sql(engine.dialect.name)), {"n": count})
        every = max(count // AWAITING_INPUT, 1)
        await connection.execute(text(_awaiting_sql(engine.dialect.name)), {"every": every})
        await connection.execute(
            text(
                "INSERT INTO channel_counters (channel_id, last_number) "
                "SELECT channel_id, max(number) FROM tasks GROUP BY channel_id"
            )
        )


async def arm_stale(engine: AsyncEngine, rows: StaleRows) -> StaleSet:
    """Makes ``rows`` stale again and marks the previous tick's effects handled.

    The outbox rows and agent wake-ups the last tick wrote are marked delivered and done, as
    the workers would have by the next tick, so every run inserts into the same state.

    Returns the stale set as the database now holds it, counted with the store's own stale
    query, so a tick that acts on fewer (or more) tasks is caught.
    """
    async with engine.begin() as connection:
        await connection.execute(
            update(outbox)
            .where(outbox.c.state != OutboxState.DELIVERED.value)
            .values(state=OutboxState.DELIVERED.value, delivered_at=NOW)
        )
        await connection.execute(
            update(agent_wakeups).where(agent_wakeups.c.done_at.is_(None)).values(done_at=NOW)
        )
        await connection.execute(
            text(_arm_sql(engine.dialect.name)), {"after": rows.after, "stride": rows.stride}
        )
        return await count_stale(connection)


async def count_stale(connection: AsyncConnection) -> StaleSet:
    """Counts the tasks stale at ``NOW`` by attempt, with the store's own stale query."""
    stale = await SqlReader(connection).get_stale_tasks(NOW - POLICY.lease_ttl, 10**9)
    block = sum(1 for task in stale if task.attempts >= POLICY.max_dispatch_attempts)
    return StaleSet(redispatch=len(stale) - block, block=block)
