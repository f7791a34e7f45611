"""``/task-admin outbox``: dead letters and the backlog listed, retried and dropped, through
signed requests against the Slack stand-in."""

import pytest

from bot.outbox import OutboxKind, OutboxRow, OutboxState
from bot.task import Actor, EventKind, TaskEvent
from channels.slack.outbox_command import USAGE
from tests.slack.conftest import ADMIN, ALICE, CHANNEL, Harness

DIRECTIVE = "threadwork_directive"


async def task_admin(service: Harness, text: str, user: str = ADMIN) -> str:
    return await service.command(text, command="/task-admin", user=user)


async def rows(service: Harness) -> dict[OutboxKind, OutboxRow]:
    return {r.kind: r for r in await service.core.store.list_outbox()}


def directives(service: Harness) -> list[dict[str, object]]:
    return [
        m
        for m in service.standin.posts(CHANNEL)
        if (m.get("metadata") or {}).get("event_type") == DIRECTIVE
    ]


@pytest.fixture
async def dead(service: Harness) -> OutboxRow:
    """Task 1, its card delivered, its directive refused by Slack for good (the bot was not
    in the channel), and a card update still waiting (Slack failed it once; it backs off)."""
    await service.command("new Needs the bot")
    await service.deliver()
    service.standin.fail("chat.postMessage", error="not_in_channel")
    service.standin.fail("chat.update", status=500)
    await service.command("assign 1 coder")
    await service.slack.delivery.run_once()  # the directive is parked; the card update waits
    directive = (await rows(service))[OutboxKind.DIRECTIVE]
    assert directive.state == OutboxState.DEAD
    return directive


async def test_the_listing_shows_dead_rows_with_slacks_error_and_the_oldest_waiting(
    service: Harness, dead: OutboxRow
) -> None:
    service.clock.advance(125)
    update = (await rows(service))[OutboxKind.CARD_UPDATE]
    reply = await task_admin(service, "outbox")
    assert reply.splitlines() == [
        "*Dead* (1): refused by Slack, not retried",
        f"• `{dead.id}` directive *C1#1* · `not_in_channel` · 2m ago, 1 attempt(s)",
        "*Waiting* (1): oldest first",
        f"• `{update.id}` card_update *C1#1* · `http_500` · 2m ago, 1 attempt(s)",
        "`/task-admin outbox retry <id>` sends one again; `drop <id>` never sends it.",
    ]
    assert "*Outbox backlog*: 1 undelivered, 1 dead (`/task-admin outbox`)" in await task_admin(
        service, "stats"
    )


async def test_an_empty_outbox_lists_nothing(service: Harness) -> None:
    assert await task_admin(service, "outbox") == (
        "*Dead* (0): refused by Slack, not retried\n• none\n*Waiting* (0): oldest first\n• none"
    )


async def test_retry_sends_a_dead_row_again_and_records_who_asked(
    service: Harness, dead: OutboxRow
) -> None:
    reply = await task_admin(service, f"outbox retry {dead.id}")
    assert reply == f"Outbox row {dead.id} (directive, *C1#1*) is sent again now."
    await service.deliver()
    assert len(directives(service)) == 1
    assert (await rows(service))[OutboxKind.DIRECTIVE].state == OutboxState.DELIVERED
    events = [e for e in await _events(service) if e.kind == EventKind.OUTBOX_RETRIED]
    assert [(e.actor, e.data["outbox_id"]) for e in events] == [(Actor.user(ADMIN), dead.id)]
    log = await service.command("log 1")
    assert f"<@{ADMIN}> sent its dead directive again (outbox row {dead.id})." in log


async def test_drop_settles_a_row_unsent_and_records_who_asked(
    service: Harness, dead: OutboxRow
) -> None:
    update = (await rows(service))[OutboxKind.CARD_UPDATE]
    for row in (dead, update):
        reply = await task_admin(service, f"outbox drop {row.id}")
        assert reply.endswith("is dropped; it is never sent.")
    updates_before = len(service.standin.calls_to("chat.update"))
    service.clock.advance(3600)
    await service.deliver()
    assert directives(service) == []
    assert len(service.standin.calls_to("chat.update")) == updates_before
    assert {r.state for r in (await rows(service)).values()} == {
        OutboxState.DELIVERED,
        OutboxState.DROPPED,
    }
    events = [e for e in await _events(service) if e.kind == EventKind.OUTBOX_DROPPED]
    assert [e.data["kind"] for e in events] == ["directive", "card_update"]
    assert "dropped its directive" in await service.command("log 1")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("outbox retry abc", "`abc` is not an outbox row id; `/task-admin outbox` lists them."),
        ("outbox drop 999", "There is no outbox row 999; `/task-admin outbox` lists them."),
        (
            "outbox retry 1",
            "Outbox row 1 cannot be retried: it was delivered. Only a dead row can.",
        ),
        ("outbox retry", "`outbox retry` is not understood."),
        ("outbox resend 2", "`outbox resend 2` is not understood."),
        ("outbox drop 2 3", "`outbox drop 2 3` is not understood."),
    ],
)
async def test_misuse_is_answered_with_what_was_wrong_and_the_usage(
    service: Harness, dead: OutboxRow, text: str, says: str
) -> None:
    assert await task_admin(service, text) == f":warning: {says}\nUsage: `{USAGE}`"
    assert (await rows(service))[OutboxKind.DIRECTIVE].state == OutboxState.DEAD


@pytest.mark.parametrize("text", ["outbox", "outbox retry 2", "outbox drop 2"])
async def test_people_who_are_not_admins_are_refused_and_nothing_changes(
    service: Harness, dead: OutboxRow, text: str
) -> None:
    reply = await task_admin(service, text, user=ALICE)
    assert reply.startswith(":no_entry: `/task-admin` is for threadwork admins")
    assert "not_in_channel" not in reply
    assert (await rows(service))[OutboxKind.DIRECTIVE].state == OutboxState.DEAD
    admin_moves = {EventKind.OUTBOX_RETRIED, EventKind.OUTBOX_DROPPED}
    assert [e for e in await _events(service) if e.kind in admin_moves] == []


async def _events(service: Harness) -> list[TaskEvent]:
    async with service.core.store.read() as reader:
        return await reader.list_events(1)


async def test_once_the_cause_is_fixed_retrying_the_card_and_its_directive_lands_both_in_order(
    service: Harness,
) -> None:
    service.standin.fail("chat.postMessage", error="not_in_channel")
    await service.command("new Invite me first")
    await service.command("assign 1 coder")
    await service.deliver()
    card, directive, update = await service.core.store.list_outbox()
    assert (directive.state, directive.last_error) == (OutboxState.DEAD, "card_not_posted")
    assert update.state == OutboxState.DELIVERED  # nothing to update on a card never posted

    for row in (directive, card):  # in any order: the thread's order holds
        await task_admin(service, f"outbox retry {row.id}")
    await service.deliver()
    [posted_card, posted_directive] = service.standin.posts(CHANNEL)
    assert (posted_card["metadata"] or {})["event_type"] == "threadwork_card"
    assert posted_directive["thread_ts"] == posted_card["ts"]
    assert "*Dead* (0)" in await task_admin(service, "outbox")  # no stale card update left
