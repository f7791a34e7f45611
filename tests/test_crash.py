"""Crashes on SQLite: ``serve`` killed with SIGKILL during delivery while Slack's answers are
slow, and stopped with SIGTERM while it holds outbox rows and an agent's wake-up.

Real processes on the real clock against the Slack stand-in, with a 3 s worker timeout and 2 s
leases; every wait polls against a deadline and fails with the servers' logs. The tests know
nothing of how delivery paces or claims: they read from the database what a process held when
it died, and from the stand-in what Slack received afterwards, and when.

One kill and restart is run once for the module (``crash``) and read by several tests. "The
restart" is the moment the new process answers /healthz: how long an interpreter takes to start
on a loaded machine is not the product's to bound.
"""

import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot.agents import AgentKind, AgentSettings
from bot.root import migrate, open_core
from bot.task import Actor
from tests.agents.standins import AnthropicStandIn, Hang
from tests.processes import (
    ALICE,
    DIRECTIVE,
    Backlog,
    Database,
    HeldRow,
    Post,
    Replicas,
    core_settings,
    expected_posts,
    open_database,
    open_replicas,
    post_counts,
    posts,
    scrape,
    settled,
    total,
    write_backlog,
)
from tests.slack.standin import SlackStandIn

WORKER_TIMEOUT_S = 3
#: The issue's bound: what a dead worker held reaches Slack this long after the restart.
TAKEOVER_BOUND_S = WORKER_TIMEOUT_S + 5
#: Slack's pace for one channel (about a post a second), less a margin for a loaded machine.
MIN_POSTS_PER_S = 0.9
SETTINGS = {
    "THREADWORK_WORKER_TIMEOUT": str(WORKER_TIMEOUT_S),
    "THREADWORK_LEASE_TTL": "2",
    "THREADWORK_RECONCILE_INTERVAL": "1",
    "THREADWORK_MAX_DISPATCH_ATTEMPTS": "2",
}
#: Channels with two tasks each, whose 2 s leases lapse twice: each task gets its card, two
#: directives and an escalation.
SPREAD = ["C1", "C2", "C3", "C4"]
#: One channel with a backlog: nine tasks on 600 s leases (the channel's policy), 18 posts.
BACKLOG, BACKLOG_TASKS = "C9", 9
#: Seconds every Slack answer is held back after its call took effect.
SLACK_DELAY_S = 0.5
#: From the restart until every post is in Slack: the backlog alone takes about 15 s.
SETTLE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CrashRun:
    """What one SIGKILL during delivery and one restart left behind."""

    #: The killed process's worker, and the outbox rows in flight right after the kill.
    dead: str
    held: list[HeldRow]
    #: Outbox keys Slack had received by the kill (their answers never came back).
    landed: set[str]
    #: Wall-clock times: the kill, and the new process answering /healthz.
    killed: float
    restarted: float
    #: Every post Slack received, once nothing was left to send.
    received: list[Post]
    spread: list[str]
    backlog: list[str]
    #: The restarted process's /metrics once everything was sent.
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def first_post(self, key: str) -> Post | None:
        return next((p for p in self.received if p.key == key), None)


async def kill_during_delivery(
    replicas: Replicas, database: Database, channels: int
) -> tuple[str, list[HeldRow], set[str], float]:
    """Kills replica 0 once a post reached Slack in each channel, their answers still held
    back; returns its worker, the rows it held, the keys Slack had then, and the kill's time."""
    slack = replicas.slack

    async def every_channel() -> bool | None:
        return True if len({m["channel"] for m in slack.posts()}) >= channels else None

    worker = await database.worker_of(replicas[0].pid)
    assert worker is not None, replicas.output()
    await replicas.wait_for(every_channel, 30, "a post in every channel")
    await replicas.kill(0)
    killed = time.time()
    landed = {p.key for p in posts(slack)}
    return worker, await database.in_flight(), landed, killed


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def crash(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CrashRun]:
    """serve delivers a backlog to a slow Slack, is killed mid-way and started again."""
    directory = tmp_path_factory.mktemp("crash")
    database_url = f"sqlite:///{directory / 'crash.db'}"
    *spread_refs, backlog = await write_backlog(
        database_url,
        SETTINGS,
        [Backlog(channel, 2) for channel in SPREAD] + [Backlog(BACKLOG, BACKLOG_TASKS, 600)],
    )
    spread = [ref for refs in spread_refs for ref in refs]
    slack = SlackStandIn(delay=SLACK_DELAY_S)
    await slack.start()
    try:
        async with (
            open_database(database_url) as database,
            open_replicas(slack, database_url, directory, SETTINGS) as replicas,
        ):
            await replicas.start(0)
            dead, held, landed, killed = await kill_during_delivery(
                replicas, database, len(SPREAD) + 1
            )
            restarted = (await replicas.start(0)).ready_at
            received = await settled(replicas, database, spread, SETTLE_TIMEOUT_S)
            metrics = await scrape(replicas[0].url)
        yield CrashRun(dead, held, landed, killed, restarted, received, spread, backlog, metrics)
    finally:
        await slack.close()


def test_the_killed_worker_held_rows_some_already_posted_and_some_not(crash: CrashRun) -> None:
    assert crash.held, "the killed worker held no rows"
    assert {row.claimed_by for row in crash.held} == {crash.dead}
    keys = {row.key for row in crash.held}
    assert keys & crash.landed, "no held row had reached Slack (its answer lost with the process)"
    assert keys - crash.landed, "every held row had reached Slack already (nothing left to send)"


def test_every_post_the_killed_worker_held_reaches_slack_once_within_the_worker_timeout_plus_5s(
    crash: CrashRun,
) -> None:
    held = [row for row in crash.held if row.kind != "card_update"]  # edits: no message
    assert held, "the killed worker held no posts"
    sent = Counter(p.key for p in crash.received)
    assert {row.key: sent[row.key] for row in held} == {row.key: 1 for row in held}
    after = {
        f"{row.kind} {post.task}": round(post.at - crash.restarted, 2)
        for row in held
        if (post := crash.first_post(row.key)) is not None
    }
    late = {row: s for row, s in after.items() if s > TAKEOVER_BOUND_S}
    assert late == {}, f"seconds from the restart to Slack, bound {TAKEOVER_BOUND_S}: {after}"


def test_a_backlog_in_one_channel_drains_at_slack_s_pace_after_the_restart(
    crash: CrashRun,
) -> None:
    drained = sorted(p.at for p in crash.received if p.channel == BACKLOG and p.at > crash.killed)
    assert len(drained) >= 15, f"only {len(drained)} posts after the restart to measure a rate"
    rate = (len(drained) - 1) / (drained[-1] - drained[0])
    assert rate >= MIN_POSTS_PER_S, f"{len(drained)} posts drained at {rate:.2f}/s"


def test_the_restarted_process_s_metrics_show_the_takeover_and_the_delivery(
    crash: CrashRun,
) -> None:
    metrics = crash.metrics
    assert total(metrics, "threadwork_workers_alive") == 1, "the dead worker is forgotten"
    posts_waiting = [
        value
        for (name, labels), value in metrics.items()
        if name == "threadwork_outbox_pending" and labels != (("kind", "card_update"),)
    ]
    assert posts_waiting
    assert set(posts_waiting) == {0.0}
    assert total(metrics, "threadwork_outbox_delivered_total") >= len(crash.held)
    assert total(metrics, "threadwork_outbox_dead") == 0


def test_nothing_is_doubled_or_lost_across_the_crash(crash: CrashRun) -> None:
    """One card per task, one directive per attempt, one escalation per blocked task."""
    expected = expected_posts(crash.spread, directives=2, escalations=1)
    assert post_counts(crash.received) == expected + expected_posts(crash.backlog, 1, 0)
    attempts = Counter((p.task, p.attempt) for p in crash.received if p.kind == DIRECTIVE)
    assert [n for n in attempts.values() if n != 1] == []


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sigterm.db'}"


@pytest.fixture
async def anthropic() -> AsyncIterator[AnthropicStandIn]:
    """A model API whose every request hangs: a run, once started, holds its wake-up."""
    standin = AnthropicStandIn(responder=lambda _request: Hang())
    await standin.start()
    yield standin
    await standin.close()


async def assign_to_a_builtin_agent(database_url: str, settings: Mapping[str, str]) -> None:
    async with open_core(core_settings(database_url, settings)) as core:
        await migrate(core)
        model = AgentSettings(model="claude-standin-1")
        await core.registry.add_agent("claude-1", AgentKind.CLAUDE, settings=model)
        for channel in ("C1", "C2"):
            task = await core.board.create_task(channel, "Work it", Actor.user(ALICE))
            await core.board.assign_task(task.ref, "claude-1", ALICE)


async def test_sigterm_hands_back_every_row_and_wakeup_and_deregisters_before_exiting_0(
    tmp_path: Path, database_url: str, anthropic: AnthropicStandIn
) -> None:
    settings = SETTINGS | {
        "THREADWORK_LEASE_TTL": "600",
        "ANTHROPIC_API_KEY": "sk-ant-crash-test",
        "ANTHROPIC_BASE_URL": anthropic.url,
    }
    await assign_to_a_builtin_agent(database_url, settings)
    slack = SlackStandIn(delay=3.0)  # the rows' calls are still under way at the SIGTERM
    await slack.start()
    try:
        async with (
            open_database(database_url) as database,
            open_replicas(slack, database_url, tmp_path, settings) as replicas,
        ):
            worker = await database.worker_of((await replicas.start(0)).pid)

            async def holding() -> bool | None:
                rows = [r for r in await database.in_flight() if r.claimed_by == worker]
                wakeups = [w for _, w in await database.held_wakeups() if w == worker]
                return True if rows and wakeups and anthropic.hung else None

            await replicas.wait_for(holding, 30, "rows in flight and a run waiting on its model")
            assert await replicas.stop(0) == 0, replicas.output()

            assert await database.in_flight() == []
            assert await database.held_wakeups() == []
            assert await database.workers() == []
            assert await database.open_rows() > 0, "the rows handed back wait to be sent"
    finally:
        await slack.close()
