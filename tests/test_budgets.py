"""Rate budgets in the database: token buckets every replica draws from, refilled by the clock
given, taken exactly once under racing replicas (on SQLite and on PostgreSQL)."""

import asyncio
from datetime import timedelta

from bot.budget import SLACK_HISTORY, Rate, SharedBudget
from store.database import create_engine
from store.repository import SqlStore
from tests.conftest import FakeClock

ONE_A_MINUTE = Rate.per_minute_bursting(1)


async def test_a_new_bucket_starts_full_and_then_says_how_long_until_the_next_token(
    store: SqlStore, clock: FakeClock
) -> None:
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.now) is None
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.now) == 60.0
    clock.advance(45)
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.now) == 15.0


async def test_the_next_token_is_there_at_the_exact_instant_it_is_due_and_not_before(
    store: SqlStore, clock: FakeClock
) -> None:
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.now) is None
    before = clock.now + timedelta(seconds=60) - timedelta(microseconds=1)
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, before) == 0.000001
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.advance(60)) is None


async def test_a_long_idle_bucket_refills_only_up_to_its_burst(
    store: SqlStore, clock: FakeClock
) -> None:
    rate = Rate(per_minute=6, burst=2)
    takes = [await store.take_token("b", rate, clock.now) for _ in range(3)]
    assert takes == [None, None, 10.0]
    clock.advance(3600)
    takes = [await store.take_token("b", rate, clock.now) for _ in range(3)]
    assert takes == [None, None, 10.0]


async def test_each_name_is_a_bucket_of_its_own(store: SqlStore, clock: FakeClock) -> None:
    assert await store.take_token("one", ONE_A_MINUTE, clock.now) is None
    assert await store.take_token("two", ONE_A_MINUTE, clock.now) is None
    assert await store.take_token("one", ONE_A_MINUTE, clock.now) == 60.0


async def test_a_replica_whose_clock_is_behind_gets_no_refill_and_moves_nothing_back(
    store: SqlStore, clock: FakeClock
) -> None:
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.now) is None
    behind = clock.now - timedelta(seconds=30)
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, behind) == 60.0
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.advance(59)) == 1.0
    assert await store.take_token(SLACK_HISTORY, ONE_A_MINUTE, clock.advance(1)) is None


async def test_racing_replicas_take_the_last_tokens_exactly_once(
    database_url: str, clock: FakeClock
) -> None:
    rate = Rate(per_minute=3, burst=3)
    engines = [create_engine(database_url) for _ in range(2)]
    replicas = [SqlStore(engine) for engine in engines]
    try:
        async with asyncio.timeout(30):
            takes = await asyncio.gather(
                *(replicas[n % 2].take_token(SLACK_HISTORY, rate, clock.now) for n in range(12))
            )
    finally:
        for engine in engines:
            await engine.dispose()
    assert takes.count(None) == 3
    assert sorted(t for t in takes if t is not None) == [20.0] * 9


async def test_a_shared_budget_takes_at_its_clocks_time(store: SqlStore, clock: FakeClock) -> None:
    budget = SharedBudget(store, SLACK_HISTORY, ONE_A_MINUTE, clock)
    assert await budget.take() is None
    assert await budget.take() == 60.0
    clock.advance(60)
    assert await budget.take() is None
