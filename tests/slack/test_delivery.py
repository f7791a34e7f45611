"""Outbox delivery against Slack's weather: rate limits, errors, lost answers, crashes, restarts."""

from collections.abc import AsyncIterator

import pytest

from bot.delivery import POSTING_KINDS
from bot.outbox import OutboxKind, OutboxState
from channels.slack.delivery import SlackDeliverer
from tests.conftest import FakeClock
from tests.slack.conftest import CHANNEL, Harness, start_service
from tests.slack.standin import DROP, SlackStandIn

CARD = "threadwork_card"
DIRECTIVE = "threadwork_directive"


def posted(standin: SlackStandIn, event_type: str) -> list[dict[str, object]]:
    return [
        m
        for m in standin.posts(CHANNEL)
        if (m.get("metadata") or {}).get("event_type") == event_type
    ]


async def outbox_states(service: Harness) -> list[tuple[OutboxKind, OutboxState]]:
    return [(r.kind, r.state) for r in await service.core.store.list_outbox()]


async def test_a_429_waits_retry_after_then_posts_exactly_once(service: Harness) -> None:
    service.standin.fail("chat.postMessage", 429, retry_after=3)
    await service.command("new Rate limited")
    await service.deliver()
    assert posted(service.standin, CARD) == []
    [row] = await service.core.store.list_outbox()
    assert (row.state, row.last_error, row.uncertain) == (OutboxState.PENDING, "ratelimited", False)

    service.clock.advance(2)
    await service.deliver()
    assert posted(service.standin, CARD) == []
    service.clock.advance(1)
    await service.deliver()
    assert len(posted(service.standin, CARD)) == 1
    assert len(service.standin.calls_to("chat.postMessage")) == 2
    assert service.standin.calls_to("conversations.history") == []


@pytest.mark.parametrize("failure", [500, 503, DROP], ids=["500", "503", "dropped-connection"])
async def test_a_server_error_or_dropped_connection_backs_off_and_never_doubles_a_post(
    service: Harness, failure: int
) -> None:
    service.standin.fail("chat.postMessage", failure, times=2)
    await service.command("new Flaky upstream")
    await service.deliver()
    await service.deliver()
    [row] = await service.core.store.list_outbox()
    assert (row.state, row.uncertain, row.attempts) == (OutboxState.PENDING, True, 1)
    for _ in range(3):
        service.clock.advance(10)
        await service.deliver()
    assert len(posted(service.standin, CARD)) == 1
    assert await outbox_states(service) == [(OutboxKind.CARD_POST, OutboxState.DELIVERED)]
    assert len(service.standin.calls_to("conversations.history")) == 2


@pytest.mark.parametrize("failure", [500, DROP], ids=["500", "dropped-connection"])
async def test_a_post_slack_made_but_whose_answer_was_lost_is_found_not_reposted(
    service: Harness, failure: int
) -> None:
    await service.command("new Lost answers")
    await service.deliver()
    await service.command("assign 1 coder")
    service.standin.fail("chat.postMessage", failure, after_effect=True)
    await service.deliver()
    assert len(posted(service.standin, DIRECTIVE)) == 1
    service.clock.advance(10)
    await service.deliver()
    assert len(posted(service.standin, DIRECTIVE)) == 1
    rows = await service.core.store.list_outbox()
    directive = next(r for r in rows if r.kind == OutboxKind.DIRECTIVE)
    assert directive.state == OutboxState.DELIVERED
    assert directive.result == {
        "ts": posted(service.standin, DIRECTIVE)[0]["ts"],
        "recovered": True,
    }
    assert rows[-1].kind == OutboxKind.CARD_UPDATE
    assert rows[-1].state == OutboxState.DELIVERED


async def test_rows_of_one_thread_are_delivered_in_order_through_a_rate_limit(
    service: Harness,
) -> None:
    await service.command("new Ordered")
    await service.command("assign 1 coder")
    await service.command("status 1 in_progress")
    service.standin.fail("chat.postMessage", 429, retry_after=1, times=2)
    for _ in range(6):
        await service.deliver()
        service.clock.advance(1)
    methods = [
        (c.method, (c.args.get("metadata") or {}).get("event_type"))
        for c in service.standin.calls
        if c.method in ("chat.postMessage", "chat.update")
    ]
    delivered = [m for i, m in enumerate(methods) if i >= 2]
    assert delivered == [
        ("chat.postMessage", CARD),
        ("chat.postMessage", DIRECTIVE),
        ("chat.update", None),
        ("chat.update", None),
    ]


@pytest.fixture
async def second_life(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    """Another process of the service, on the same database, as after a restart."""
    async for harness in start_service(sqlite_url, standin, clock):
        yield harness


async def test_a_crash_between_slacks_answer_and_our_record_does_not_post_twice(
    service: Harness, second_life: Harness
) -> None:
    await service.command("new Crashy")
    now = service.clock.now
    [row] = await service.core.store.claim_outbox("crashed-worker", now, now.replace(second=59), 1)
    deliverer = SlackDeliverer(
        service.slack.client, service.core.queries, service.core.board, service.clock
    )
    await deliverer.deliver(row)  # Slack posted the card; the worker died before recording it.
    assert len(posted(service.standin, CARD)) == 1

    service.clock.advance(120)
    await second_life.deliver()
    assert len(posted(service.standin, CARD)) == 1
    [settled] = await second_life.core.store.list_outbox()
    assert (settled.state, settled.uncertain) == (OutboxState.DELIVERED, False)
    task = await second_life.task(1)
    assert task.card_ts == posted(service.standin, CARD)[0]["ts"]


async def test_a_restart_keeps_tasks_agents_and_the_undelivered_outbox(
    service: Harness, second_life: Harness
) -> None:
    await service.command("new Survives restarts")
    await service.command("assign 1 coder")
    await service.close()

    reply = await second_life.command("show 1")
    assert "Survives restarts" in reply
    assert "`coder`" in reply or "<@UCODER01>" in reply
    await second_life.deliver()
    kinds = [
        (m.get("metadata") or {}).get("event_type") for m in second_life.standin.posts(CHANNEL)
    ]
    assert kinds == [CARD, DIRECTIVE]
    assert [a.name for a in await second_life.core.registry.list_agents()] == ["coder"]
    assert all(
        kind not in POSTING_KINDS or state == OutboxState.DELIVERED
        for kind, state in await outbox_states(second_life)
    )
