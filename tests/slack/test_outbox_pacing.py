"""Outbox delivery at Slack's pace, through the real deliverer and the Web API stand-in: card
updates pending together go as one call showing the latest state, and a 429 pauses its channel
for Retry-After."""

from bot.budget import Rate
from bot.delivery import Delivered, DeliverySettings, OutboxDelivery
from bot.outbox import OutboxKind, OutboxRow, OutboxState
from channels.slack.delivery import SlackDeliverer
from tests.slack.conftest import CHANNEL, Harness
from tests.test_outbox_delivery import FakeTime


def card_updates(service: Harness) -> list[str]:
    """The blocks of each chat.update the stand-in received, as text."""
    return [str(call.args["blocks"]) for call in service.standin.calls_to("chat.update")]


def deliverer_of(service: Harness) -> SlackDeliverer:
    core = service.core
    return SlackDeliverer(service.slack.client, core.queries, core.thread_posts, service.clock)


async def test_status_changes_pending_together_update_the_card_once_with_the_last_state(
    service: Harness,
) -> None:
    await service.command("new Coalesced card")
    await service.deliver()
    for status in ("in_progress", "in_review", "done"):
        await service.command(f"status 1 {status}")
    await service.deliver()
    [update] = card_updates(service)
    assert "`done`" in update
    rows = [r for r in await service.core.store.list_outbox() if r.kind == OutboxKind.CARD_UPDATE]
    assert all(r.state == OutboxState.DELIVERED for r in rows)
    assert [r.result for r in rows[1:]] == [{"coalesced_into": rows[0].id}] * 2


class ChangesAfterTheCall:
    """Slack's deliverer; right after its first card update, a person moves the task on."""

    def __init__(self, service: Harness) -> None:
        self.service = service
        self.inner = deliverer_of(service)
        self.changed = False

    async def deliver(self, row: OutboxRow) -> Delivered:
        delivered = await self.inner.deliver(row)
        if row.kind == OutboxKind.CARD_UPDATE and not self.changed:
            self.changed = True
            await self.service.command("status 1 in_review")
        return delivered


async def test_a_change_committed_after_the_claim_gets_its_own_card_update(
    service: Harness,
) -> None:
    await service.command("new Moving card")
    await service.deliver()
    await service.command("status 1 in_progress")
    delivery = OutboxDelivery(
        service.core.store,
        ChangesAfterTheCall(service),
        service.clock,
        "w-test",
        DeliverySettings(channel_posts=None, workspace_updates=None),
    )
    await delivery.drain()
    first, second = card_updates(service)
    assert "`in_progress`" in first
    assert "`in_review`" in second
    rows = [r for r in await service.core.store.list_outbox() if r.kind == OutboxKind.CARD_UPDATE]
    assert len(rows) == 2
    assert all(r.result is not None and "ts" in r.result for r in rows)  # each sent, none coalesced


async def test_a_429_from_slack_pauses_its_channels_posts_for_retry_after(
    service: Harness,
) -> None:
    for title in ("one", "two", "three"):
        await service.command(f"new Card {title}")
    service.standin.fail("chat.postMessage", 429, retry_after=4)
    time = FakeTime()
    settings = DeliverySettings(channel_posts=Rate(per_minute=60, burst=3))
    delivery = OutboxDelivery(
        service.core.store,
        deliverer_of(service),
        service.clock,
        "w-test",
        settings,
        sleep=time.sleep,
        monotonic=time.monotonic,
    )
    await delivery.drain()
    assert time.slept == [4.0, 1.0]  # the second card after Retry-After, the third a second on
    assert len(service.standin.posts(CHANNEL)) == 2
    rows = await service.core.store.list_outbox()
    [limited] = [r for r in rows if r.state != OutboxState.DELIVERED]
    assert (limited.state, limited.last_error, limited.uncertain) == (
        OutboxState.PENDING,
        "ratelimited",
        False,
    )
