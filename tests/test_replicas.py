"""Three ``serve`` replicas on one PostgreSQL database and one Slack stand-in, killed and
restarted while thirty silent tasks lapse, are re-dispatched and blocked: every decision is
made once and every message posted once.

People's commands are spread over the replicas as signed slash commands. The agent never
answers, so each 2 s lease lapses twice: one re-dispatch, then blocked. Three times, once
directives are out, once tasks are re-dispatched and once tasks are blocked, the replica holding
the most outbox rows is killed with SIGKILL (never the last one running, so the live ones take
its rows over after the 3 s worker timeout) and started again. The test then waits until every
task is blocked and no post is left to send, and counts the database's events and what Slack
received; then until the last card update (they go at the workspace's pace) is in Slack, and
checks every card shows its task blocked.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from channels.sandbox.slack_api import Json
from tests.conftest import PG_URL, _create_pg_database, _drop_pg_database
from tests.processes import (
    ADMIN,
    AGENT,
    AGENT_USER,
    ALICE,
    CARD,
    DIRECTIVE,
    Database,
    HeldRow,
    Post,
    Replica,
    Replicas,
    created_ref,
    expected_posts,
    open_database,
    open_replicas,
    post_counts,
    posts,
    scrape,
    settled,
    total,
)
from tests.slack.standin import SlackStandIn

pytestmark = pytest.mark.postgres

REPLICAS = 3
CHANNELS = [f"C{n:02d}" for n in range(1, 11)]
TASKS = 30
SETTINGS = {
    "THREADWORK_WORKER_TIMEOUT": "3",
    "THREADWORK_LEASE_TTL": "2",
    "THREADWORK_RECONCILE_INTERVAL": "1",
    "THREADWORK_MAX_DISPATCH_ATTEMPTS": "2",
}
#: How long the run may take to reach the next kill's moment.
PHASE_TIMEOUT_S = 40.0
#: From the last kill until every task is blocked and every post is in Slack.
SETTLE_TIMEOUT_S = 75.0
#: From then until the last card update is in Slack (30 cards at about 50 edits a minute).
DRAIN_TIMEOUT_S = 150.0


@pytest.fixture
async def database_url(pg_url: str | None) -> AsyncIterator[str]:
    """A migrated scratch PostgreSQL database of the test's own, dropped afterwards, so the
    connections of killed replicas touch no other test's database. ``pg_url`` says whether a
    server answers (and fails the test where one must, THREADWORK_REQUIRE_PG=1)."""
    if pg_url is None:
        pytest.skip(f"PostgreSQL at {PG_URL} did not answer")
    url = await _create_pg_database()
    yield url
    await _drop_pg_database(url)


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn(
        users={ADMIN: {"is_admin": False}, ALICE: {"is_admin": False}},
        members={channel: {ADMIN, ALICE} for channel in CHANNELS},
    )
    await standin.start()
    yield standin
    await standin.close()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with open_database(database_url) as db:
        yield db


async def assign_silent_tasks(replicas: Replicas) -> list[str]:
    """Registers the agent, then creates the tasks and assigns them, all at once and each
    command through the next replica in turn; returns the tasks' refs."""
    add = f"agent add <@{AGENT_USER}> name={AGENT}"
    reply = await replicas.command(0, add, CHANNELS[0], ADMIN, "/task-admin")
    assert AGENT in reply, reply
    new = [
        replicas.command(n % REPLICAS, f"new Silent task {n}", CHANNELS[n % len(CHANNELS)])
        for n in range(TASKS)
    ]
    refs = [created_ref(reply) for reply in await asyncio.gather(*new)]
    assign = [
        replicas.command((n + 1) % REPLICAS, f"assign {ref} <@{AGENT_USER}>", ref.split("#")[0])
        for n, ref in enumerate(refs)
    ]
    replies = await asyncio.gather(*assign)
    assert all(reply.startswith("Assigned") for reply in replies), replies
    return refs


@dataclass(frozen=True)
class Kill:
    """A replica killed with SIGKILL: when, and the outbox rows it held then."""

    replica: str
    at: float
    held: list[HeldRow]

    def sent_after(self, received: list[Post]) -> list[tuple[str, float]]:
        """(kind, seconds from the kill to Slack) of each post it held, for failure messages."""
        at = {p.key: p.at for p in received}
        return [(row.kind, round(at[row.key] - self.at, 2)) for row in self.held if row.key in at]


async def kill_a_holder(
    replicas: Replicas, database: Database, ready: Callable[[], Awaitable[bool]], what: str
) -> tuple[Kill, "asyncio.Task[Replica]"]:
    """Once ``ready``, kills with SIGKILL the replica holding the most outbox rows, never the
    last one running, and starts it again in the background; returns the kill and the
    restart."""

    async def holder() -> tuple[int, str] | None:
        if not await ready():
            return None
        live = {}
        for index, slot in enumerate(replicas.slots):
            worker = await database.worker_of(slot.pid) if slot.running else None
            if worker is not None:
                live[index] = worker
        held = Counter(row.claimed_by for row in await database.in_flight())
        index, worker = max(live.items(), key=lambda item: held[item[1]], default=(0, ""))
        return (index, worker) if len(live) > 1 and held[worker] else None

    index, worker = await replicas.wait_for(
        holder, PHASE_TIMEOUT_S, f"{what}, and a live replica holding rows"
    )
    await replicas.kill(index)
    killed = time.time()
    held = [row for row in await database.in_flight() if row.claimed_by == worker]
    restart = asyncio.create_task(replicas.start(index), name=f"restart {replicas[index].name}")
    return Kill(replicas[index].name, killed, held), restart


def card_messages(slack: SlackStandIn) -> list[Json]:
    """The task cards in Slack as they read now, after every edit."""
    return [
        message
        for message in slack.posts()
        if (message.get("metadata") or {}).get("event_type") == CARD
    ]


async def test_replicas_killed_and_restarted_redispatch_block_and_post_each_task_exactly_once(
    tmp_path: Path, database_url: str, slack: SlackStandIn, database: Database
) -> None:
    async with open_replicas(slack, database_url, tmp_path, SETTINGS) as replicas:
        await replicas.start_all(REPLICAS)
        refs = await assign_silent_tasks(replicas)
        slack.delay = 0.2  # from now on, a kill finds calls to Slack under way

        async def directives_posted() -> bool:
            return sum(p.kind == DIRECTIVE for p in posts(slack)) >= TASKS // 3

        async def some_redispatched() -> bool:
            return len(await database.events("redispatched")) >= TASKS // 3

        async def some_blocked() -> bool:
            return len(await database.events("blocked")) >= TASKS // 3

        kills, restarts = [], []
        for ready, what in [
            (directives_posted, "directives posted"),
            (some_redispatched, "tasks re-dispatched"),
            (some_blocked, "tasks blocked"),
        ]:
            kill, restart = await kill_a_holder(replicas, database, ready, what)
            kills.append(kill)
            restarts.append(restart)

        received = await settled(replicas, database, refs, SETTLE_TIMEOUT_S)
        await asyncio.gather(*restarts)

        async def drained() -> bool | None:
            return True if await database.open_rows() == 0 else None

        # Card updates go at the workspace's pace (about 50 a minute): wait for the last.
        await replicas.wait_for(drained, DRAIN_TIMEOUT_S, "every card updated")
        cards = {str(p["text"]).split(" · ")[0]: str(p["text"]) for p in card_messages(slack)}
        coalesced = await database.coalesced_updates()
        scraped = [await scrape(replicas[i].url) for i in range(3)]
        redispatched = await database.events("redispatched")
        blocked = await database.events("blocked")

    assert redispatched == dict.fromkeys(refs, 1)
    assert blocked == dict.fromkeys(refs, 1)
    assert post_counts(received) == expected_posts(refs, directives=2, escalations=1)
    attempts = Counter((p.task, p.attempt) for p in received if p.kind == DIRECTIVE)
    assert attempts == Counter({(ref, attempt): 1 for ref in refs for attempt in (1, 2)})
    # Every card ends as the board does, and a card's pending updates went as one edit.
    assert sorted(cards) == sorted(refs)
    assert [text for text in cards.values() if not text.endswith("— blocked")] == []
    assert coalesced > 0
    # The database's gauges read the same on every replica: nothing left, three live workers.
    for metrics in scraped:
        waiting = {
            labels: value
            for (name, labels), value in metrics.items()
            if name == "threadwork_outbox_pending"
        }
        assert set(waiting.values()) == {0.0}, waiting
        assert total(metrics, "threadwork_outbox_dead") == 0
        assert total(metrics, "threadwork_workers_alive") == 3
        assert metrics[("threadwork_leases", (("state", "stale"),))] == 0
    # The counters moved: rows were delivered, and ticks re-dispatched and blocked tasks (a
    # killed replica's counts went with it, so the live ones show part of the work).
    assert sum(total(m, "threadwork_outbox_delivered_total") for m in scraped) > 0
    assert sum(total(m, "threadwork_reconcile_duration_seconds_count") for m in scraped) > 0
    keys = Counter(p.key for p in received)
    assert [key for key, n in keys.items() if n > 1] == []
    held_posts = [row for kill in kills for row in kill.held if row.kind != "card_update"]
    assert held_posts, "the killed replicas held no posts"
    assert [keys[row.key] for row in held_posts] == [1] * len(held_posts), [
        (kill.replica, kill.sent_after(received)) for kill in kills
    ]
