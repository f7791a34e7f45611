"""Slack's thread reads under the shared history budget (THREADWORK_SLACK_HISTORY_PER_MINUTE):
at 1 a minute, as Slack allows apps distributed outside the Marketplace, the reconcile's probe
and the outbox's lookups wait for their turn and never act on a guess; pages of 15 are read
to the end before anything is concluded."""

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bot.outbox import OutboxKind, OutboxState
from bot.task import EventKind
from tests.conftest import FakeClock
from tests.slack.conftest import ALICE, CHANNEL, Harness, start_service
from tests.slack.standin import SlackStandIn

BUILDER_BOT = "BBUILD01"
BUILDER_USER = "UBUILD01"
CARD = "threadwork_card"
DIRECTIVE = "threadwork_directive"


@pytest.fixture
async def tier1(sqlite_url: str, standin: SlackStandIn, clock: FakeClock) -> AsyncIterator[Harness]:
    """The service with one thread read a minute, and an agent that is a Slack bot."""
    standin.clock = clock
    async for harness in start_service(sqlite_url, standin, clock, slack_history_per_minute=1):
        await harness.core.registry.add_agent(
            "builder", display_name="Builder", slack_user_id=BUILDER_USER, slack_bot_id=BUILDER_BOT
        )
        await harness.core.registry.add_agent("coder", slack_user_id="UCODER01")
        yield harness


def posted(standin: SlackStandIn, event_type: str, task: str | None = None) -> list[str]:
    """The ts of the bot's posts of one kind (for one task), in order."""
    return [
        m["ts"]
        for m in standin.posts(CHANNEL)
        if (meta := m.get("metadata") or {}).get("event_type") == event_type
        and (task is None or meta["event_payload"]["task"] == task)
    ]


async def assigned_tasks(service: Harness, count: int, agent: str = "builder") -> list[str]:
    """``count`` tasks assigned to ``agent``, cards and directives delivered; their threads."""
    for n in range(1, count + 1):
        await service.command(f"new Task {n}")
        await service.command(f"assign {n} {agent}")
    await service.deliver()
    threads = [(await service.task(n)).thread_ts for n in range(1, count + 1)]
    assert all(threads)
    return [str(ts) for ts in threads]


async def redispatches(service: Harness, number: int) -> int:
    task = await service.task(number)
    async with service.core.store.read() as reader:
        events = await reader.list_events(task.id)
    return sum(e.kind == EventKind.REDISPATCHED for e in events)


async def test_at_one_read_a_minute_a_tick_reads_one_thread_and_defers_the_others(
    tier1: Harness,
) -> None:
    threads = await assigned_tasks(tier1, 3)
    tier1.clock.advance(300)
    # The builder did answer in task 2's thread; the event never reached threadwork.
    tier1.standin.add_message(CHANNEL, BUILDER_USER, "on it", threads[1], bot_id=BUILDER_BOT)
    tier1.clock.advance(301)

    report = await tier1.core.reconciler.reconcile_stale_tasks()
    [read] = tier1.standin.calls_to("conversations.replies")
    assert read.args["ts"] == threads[0]
    assert ([str(r) for r in report.redispatched], report.deferred) == (["C1#1"], 2)
    for number in (2, 3):
        task = await tier1.task(number)
        assert (task.attempts, await redispatches(tier1, number)) == (1, 0)
    await tier1.deliver()
    assert [len(posted(tier1.standin, DIRECTIVE, f"C1#{n}")) for n in (1, 2, 3)] == [2, 1, 1]

    tier1.clock.advance(59)
    report = await tier1.core.reconciler.reconcile_stale_tasks()
    reads = tier1.standin.calls_to("conversations.replies")
    assert (report.deferred, report.acted, len(reads)) == (2, 0, 1)

    tier1.clock.advance(1)
    report = await tier1.core.reconciler.reconcile_stale_tasks()
    assert [c.args["ts"] for c in tier1.standin.calls_to("conversations.replies")] == threads[:2]
    assert ([str(r) for r in report.renewed], report.deferred, report.acted) == (["C1#2"], 1, 0)
    assert await redispatches(tier1, 2) == 0


async def test_a_thread_longer_than_a_page_is_read_a_page_a_minute_and_never_taken_for_silence(
    tier1: Harness,
) -> None:
    [thread] = await assigned_tasks(tier1, 1)
    tier1.clock.advance(60)
    for n in range(20):  # people talking, their events lost
        tier1.standin.add_message(CHANNEL, ALICE, f"note {n}", thread)
    tier1.clock.advance(240)
    tier1.standin.add_message(CHANNEL, BUILDER_USER, "done soon", thread, bot_id=BUILDER_BOT)
    tier1.clock.advance(301)

    report = await tier1.core.reconciler.reconcile_stale_tasks()
    [first] = tier1.standin.calls_to("conversations.replies")
    assert (report.deferred, report.acted) == (1, 0)
    tier1.clock.advance(60)
    report = await tier1.core.reconciler.reconcile_stale_tasks()
    assert ([str(r) for r in report.renewed], report.deferred, report.acted) == (["C1#1"], 0, 0)

    calls = tier1.standin.calls_to("conversations.replies")
    assert len(calls) == 2
    assert int(first.args["limit"]) == 15
    assert float(calls[1].args["oldest"]) > float(first.args["oldest"])  # resumed, not restarted
    task = await tier1.task(1)
    assert (task.attempts, await redispatches(tier1, 1)) == (1, 0)
    async with tier1.core.store.read() as reader:
        authors = [m.author for m in await reader.list_messages(task.id)]
    assert authors.count(ALICE) == 20


async def test_slack_giving_fewer_messages_than_asked_still_reads_the_thread_to_its_end(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock
) -> None:
    standin.clock, standin.page_limit = clock, 3
    async for service in start_service(sqlite_url, standin, clock):
        await service.core.registry.add_agent("builder", slack_bot_id=BUILDER_BOT)
        [thread] = await assigned_tasks(service, 1)
        clock.advance(500)
        for n in range(7):
            standin.add_message(CHANNEL, ALICE, f"note {n}", thread)
        standin.add_message(CHANNEL, "UBUILDX1", "pushed", thread, bot_id=BUILDER_BOT)
        clock.advance(101)
        report = await service.core.reconciler.reconcile_stale_tasks()
        assert ([str(r) for r in report.renewed], report.acted) == (["C1#1"], 0)
        # The directive, seven notes and the post, two a page after the thread's first message.
        assert len(standin.calls_to("conversations.replies")) == 5


async def test_an_uncertain_row_with_no_read_left_waits_and_is_never_posted_blind(
    tier1: Harness,
) -> None:
    tier1.standin.fail("chat.postMessage", 500)  # card 1: not posted, answer lost
    tier1.standin.fail("chat.postMessage", 500, after_effect=True)  # card 2: posted, lost
    await tier1.command("new First")
    await tier1.command("new Second")
    await tier1.deliver()
    assert len(posted(tier1.standin, CARD)) == 1
    tier1.clock.advance(10)

    await tier1.deliver()  # card 1 takes the minute's read, finds nothing, is posted
    assert len(tier1.standin.calls_to("conversations.history")) == 1
    assert len(posted(tier1.standin, CARD, "C1#1")) == 1
    second = next(r for r in await tier1.core.store.list_outbox() if r.task_id == 2)
    assert (second.state, second.uncertain, second.last_error) == (
        OutboxState.PENDING,
        True,
        "history_budget",
    )
    assert second.available_at == tier1.clock.now + timedelta(seconds=60)

    tier1.clock.advance(59)
    await tier1.deliver()
    assert len(tier1.standin.calls_to("conversations.history")) == 1
    tier1.clock.advance(1)
    await tier1.deliver()
    assert len(tier1.standin.calls_to("conversations.history")) == 2
    assert len(posted(tier1.standin, CARD, "C1#2")) == 1
    second = next(r for r in await tier1.core.store.list_outbox() if r.task_id == 2)
    assert second.state == OutboxState.DELIVERED
    assert second.result == {"ts": posted(tier1.standin, CARD, "C1#2")[0], "recovered": True}


async def test_a_lookup_longer_than_a_page_resumes_where_it_stopped_and_finds_the_post(
    tier1: Harness,
) -> None:
    await tier1.command("new Busy thread")
    await tier1.deliver()
    thread = (await tier1.task(1)).thread_ts
    assert thread is not None
    await tier1.command("assign 1 coder")
    for n in range(20):
        tier1.standin.add_message(CHANNEL, ALICE, f"note {n}", thread)
    tier1.standin.fail("chat.postMessage", 500, after_effect=True)
    await tier1.deliver()
    tier1.clock.advance(10)

    await tier1.deliver()  # page 1 of the thread has no directive; page 2 must wait
    [first] = tier1.standin.calls_to("conversations.replies")
    assert len(posted(tier1.standin, DIRECTIVE)) == 1
    directive = next(
        r for r in await tier1.core.store.list_outbox() if r.kind == OutboxKind.DIRECTIVE
    )
    assert (directive.state, directive.uncertain) == (OutboxState.PENDING, True)

    tier1.clock.advance(60)
    await tier1.deliver()
    calls = tier1.standin.calls_to("conversations.replies")
    assert len(calls) == 2
    assert float(calls[1].args["oldest"]) > float(first.args["oldest"])
    assert len(posted(tier1.standin, DIRECTIVE)) == 1
    directive = next(
        r for r in await tier1.core.store.list_outbox() if r.kind == OutboxKind.DIRECTIVE
    )
    assert directive.state == OutboxState.DELIVERED
    assert directive.result == {"ts": posted(tier1.standin, DIRECTIVE)[0], "recovered": True}


async def test_a_mention_with_no_thread_read_left_makes_the_task_under_a_plain_title(
    tier1: Harness,
) -> None:
    """The title read is a thread read too: with the budget spent it is not made, and the
    person gets their task at once rather than waiting a minute for a read."""
    service = tier1
    assert await service.core.history_budget.take() is None  # the minute's one read, spent
    root = service.standin.add_message(CHANNEL, ALICE, "The nightly export is failing")
    reply = service.standin.add_message(
        CHANNEL, ALICE, "<@UBOT> assign this to <@UCODER01>", thread_ts=root["ts"]
    )
    event = {"type": "app_mention", "channel": CHANNEL, "user": ALICE, "text": reply["text"]}
    assert await service.event(event | {"ts": reply["ts"], "thread_ts": root["ts"]}) == 200
    task = await service.task(1)
    assert (task.title, task.thread_ts, task.assignee) == (
        "Task from a thread",
        root["ts"],
        "coder",
    )
    assert service.standin.calls_to("conversations.replies") == []

    service.clock.advance(60)  # a read is due again: the next mention reads its title
    other = service.standin.add_message(CHANNEL, ALICE, "Rotate the keys")
    again = service.standin.add_message(
        CHANNEL, ALICE, "<@UBOT> assign this to <@UCODER01>", thread_ts=other["ts"]
    )
    assert await service.event(event | {"ts": again["ts"], "thread_ts": other["ts"]}) == 200
    assert (await service.task(2)).title == "Rotate the keys"
