"""Outbox delivery against Slack's weather: rate limits, errors, lost answers, crashes, restarts,
and errors that will never pass (parked as dead) or messages too long (sent once shortened)."""

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from bot.delivery import POSTING_KINDS
from bot.outbox import OutboxKind, OutboxRow, OutboxState
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
        ("chat.update", None),  # the card's two updates, pending together, go as one
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
    [row] = await service.core.store.claim_outbox("crashed-worker", now, 1)
    deliverer = SlackDeliverer(
        service.slack.client, service.core.queries, service.core.thread_posts, service.clock
    )
    await deliverer.deliver(row)  # Slack posted the card; the worker died before recording it.
    assert len(posted(service.standin, CARD)) == 1

    service.clock.advance(120)
    await second_life.service.liveness.take_over()  # the crashed worker was never alive here
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


def outbox_row(rows: list[OutboxRow], kind: OutboxKind) -> OutboxRow:
    [row] = [r for r in rows if r.kind == kind]
    return row


async def test_a_directive_slack_refuses_for_good_is_parked_and_the_card_update_after_it_lands(
    service: Harness,
) -> None:
    await service.command("new Refused directive")
    await service.deliver()
    service.standin.fail("chat.postMessage", error="not_in_channel")
    await service.command("assign 1 coder")
    with capture_logs() as logs:
        await service.deliver()
    rows = await service.core.store.list_outbox()
    directive = outbox_row(rows, OutboxKind.DIRECTIVE)
    assert (directive.state, directive.last_error, directive.attempts) == (
        OutboxState.DEAD,
        "not_in_channel",
        1,
    )
    assert outbox_row(rows, OutboxKind.CARD_UPDATE).state == OutboxState.DELIVERED
    assert "`todo`" in str(service.standin.calls_to("chat.update")[-1].args["blocks"])
    assert posted(service.standin, DIRECTIVE) == []
    dead = [e for e in logs if e["event"] == "outbox.dead"]
    assert [(e["reason"], e["kind"], e["ref"]) for e in dead] == [
        ("not_in_channel", "directive", "C1#1")
    ]

    service.clock.advance(3600)  # a dead row is not retried, however long one waits
    await service.deliver()
    assert len(service.standin.calls_to("chat.postMessage")) == 2  # the card, the refused one
    assert "Slack refused its directive for good (`not_in_channel`)" in await service.command(
        "log 1"
    )


@pytest.mark.parametrize(
    "error", ["is_archived", "channel_not_found", "invalid_blocks", "restricted_action"]
)
async def test_a_permanent_slack_error_parks_the_row_with_slacks_error(
    service: Harness, error: str
) -> None:
    service.standin.fail("chat.postMessage", error=error)
    await service.command("new Refused card")
    await service.deliver()
    [row] = await service.core.store.list_outbox()
    assert (row.state, row.last_error, row.uncertain) == (OutboxState.DEAD, error, False)


async def test_rows_of_a_task_whose_card_is_dead_never_post_outside_its_thread(
    service: Harness,
) -> None:
    service.standin.fail("chat.postMessage", error="invalid_blocks")
    await service.command("new Card never posted")
    await service.deliver()
    await service.command("assign 1 coder")
    await service.deliver()
    assert service.standin.posts(CHANNEL) == []
    assert [(r.kind, r.state, r.last_error) for r in await service.core.store.list_outbox()] == [
        (OutboxKind.CARD_POST, OutboxState.DEAD, "invalid_blocks"),
        (OutboxKind.DIRECTIVE, OutboxState.DEAD, "card_not_posted"),
        (OutboxKind.CARD_UPDATE, OutboxState.DELIVERED, None),  # nothing to update: settled
    ]


@pytest.mark.parametrize(
    ("error", "uncertain"),
    [("internal_error", True), ("fatal_error", True), ("invalid_auth", False)],
)
async def test_slacks_own_trouble_and_auth_errors_are_still_retried(
    service: Harness, error: str, uncertain: bool
) -> None:
    service.standin.fail("chat.postMessage", error=error)
    await service.command("new Transient trouble")
    await service.deliver()
    [row] = await service.core.store.list_outbox()
    assert (row.state, row.last_error, row.uncertain) == (OutboxState.PENDING, error, uncertain)
    service.clock.advance(10)
    await service.deliver()
    assert len(posted(service.standin, CARD)) == 1
    assert await outbox_states(service) == [(OutboxKind.CARD_POST, OutboxState.DELIVERED)]


async def assigned_with_a_long_post(service: Harness, text: str) -> None:
    await service.command("new Long winded")
    await service.command("assign 1 coder")
    await service.deliver()
    task = await service.task(1)
    await service.core.work.post_update(task.ref, "coder", text, task.lease_epoch)


async def test_a_message_slack_finds_too_long_is_sent_once_more_shortened(
    service: Harness,
) -> None:
    service.standin.max_text = 3200
    long = "word " * 700  # 3,500 characters, the most an agent may post
    await assigned_with_a_long_post(service, long)
    await service.deliver()
    [post] = [
        m
        for m in service.standin.posts(CHANNEL)
        if (m.get("metadata") or {}).get("event_type") == "threadwork_agent_post"
    ]
    assert len(post["text"]) <= 3000 + 60
    assert post["text"].startswith("word word")
    assert post["text"].endswith("… (truncated; `/task show C1#1` has the rest)")
    row = outbox_row(await service.core.store.list_outbox(), OutboxKind.AGENT_POST)
    assert (row.state, row.shortened, row.attempts) == (OutboxState.DELIVERED, True, 2)
    async with service.core.store.read() as reader:
        stored = await reader.list_messages(1)
    assert stored[-1].text == long.strip()  # the board keeps every word


async def test_a_message_still_too_long_when_shortened_is_parked(service: Harness) -> None:
    await assigned_with_a_long_post(service, "x" * 3500)
    service.standin.fail("chat.postMessage", error="msg_too_long", times=2)
    await service.deliver()
    row = outbox_row(await service.core.store.list_outbox(), OutboxKind.AGENT_POST)
    assert (row.state, row.last_error, row.attempts) == (OutboxState.DEAD, "msg_too_long", 2)
    calls = service.standin.calls_to("chat.postMessage")[-2:]
    assert len(calls[0].args["text"]) == 3500
    assert calls[1].args["text"].endswith("has the rest)")


async def test_a_413_sends_the_card_once_more_with_its_title_shortened(service: Harness) -> None:
    service.standin.fail("chat.postMessage", 413)
    await service.command("new " + "A very long title " * 11)  # 198 characters
    await service.deliver()
    [card] = posted(service.standin, CARD)
    assert "… (truncated; `/task show C1#1` has the rest)" in str(card["text"])
    assert "has the rest)" in str(card["blocks"])
    [row] = await service.core.store.list_outbox()
    assert (row.state, row.shortened, row.last_error) == (OutboxState.DELIVERED, True, "http_413")


async def test_the_shortened_retry_survives_a_restart(
    service: Harness, second_life: Harness
) -> None:
    await assigned_with_a_long_post(service, "y" * 3500)
    service.standin.fail("chat.postMessage", error="msg_too_long")
    # One round: the refusal is recorded, and the shortened retry has not run yet.
    await service.slack.delivery.run_once()
    await service.close()

    await second_life.deliver()
    refused, sent = service.standin.calls_to("chat.postMessage")[-2:]
    assert len(refused.args["text"]) == 3500
    assert sent.args["text"].endswith("has the rest)")
    assert len(sent.args["text"]) < 3100


async def test_delivery_renders_with_an_agent_change_at_once_though_it_keeps_agents_between_rows(
    service: Harness,
) -> None:
    await service.command("new Rename the agent")
    await service.command("assign 1 coder")
    await service.deliver()
    await service.core.registry.add_agent("coder", display_name="Coder Prime")
    await service.command("status 1 in_progress")
    await service.deliver()
    card = service.standin.calls_to("chat.update")[-1].args["blocks"]
    menu = next(e for b in card if b["type"] == "actions" for e in b["elements"] if "options" in e)
    assert [o["text"]["text"] for o in menu["options"]] == ["Coder Prime"]
