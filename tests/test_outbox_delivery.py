"""Outbox delivery's pacing, back-off and dead letters, with a recording deliverer and no real
sleeping."""

import asyncio

from structlog.testing import capture_logs

from bot.board import Board
from bot.delivery import Delivered, DeliveryFailed, DeliverySettings, OutboxDelivery, Retry
from bot.outbox import OutboxKind, OutboxRow, OutboxState
from bot.registry import AgentRegistry
from bot.task import Actor, EventKind
from store.repository import SqlStore
from tests.conftest import FakeClock


class Recorder:
    """Delivers everything, remembering the order; can fail the first n rows."""

    def __init__(self, failures: list[DeliveryFailed] | None = None) -> None:
        self.delivered: list[OutboxRow] = []
        self.failures = failures or []

    async def deliver(self, row: OutboxRow) -> Delivered:
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(row)
        return Delivered(ts=f"{len(self.delivered)}.0")


class FakeTime:
    """A monotonic clock that only moves when outbox delivery sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def delivery_for(
    store: SqlStore, clock: FakeClock, deliverer: Recorder, time: FakeTime, rand: float = 0.5
) -> OutboxDelivery:
    settings = DeliverySettings(channel_interval=1.0, backoff_base=2.0, backoff_cap=30.0)
    return OutboxDelivery(
        store,
        deliverer,
        clock,
        "w1",
        settings,
        rand=lambda: rand,
        sleep=time.sleep,
        monotonic=time.monotonic,
    )


async def test_posts_in_one_channel_are_kept_a_second_apart_but_channels_do_not_wait_for_each_other(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    for channel in ("C1", "C1", "C1", "C2"):
        await board.create_task(channel, "t", Actor.user("U1"))
    time, recorder = FakeTime(), Recorder()
    await delivery_for(store, clock, recorder, time).drain()
    assert sorted(time.slept) == [1.0, 1.0]
    assert len(recorder.delivered) == 4
    rows = await store.list_outbox()
    assert all(r.state == OutboxState.DELIVERED for r in rows)
    async with store.read() as reader:
        cards = [t.card_ts for t in await reader.list_tasks()]
    assert None not in cards


async def test_card_updates_are_not_paced_like_posts(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await registry.add_agent("coder")
    task = await board.create_task("C1", "t", Actor.user("U1"))
    time, recorder = FakeTime(), Recorder()
    worker = delivery_for(store, clock, recorder, time)
    await worker.drain()
    time.now += 5
    await board.assign_task(task.ref, "coder", "U1")
    await worker.drain()
    assert [r.kind for r in recorder.delivered] == [
        OutboxKind.CARD_POST,
        OutboxKind.DIRECTIVE,
        OutboxKind.CARD_UPDATE,
    ]
    assert time.slept == []


async def test_failures_back_off_exponentially_with_jitter_and_honour_retry_after(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await board.create_task("C1", "t", Actor.user("U1"))
    failures = [
        DeliveryFailed("http_500", uncertain=True),
        DeliveryFailed("http_500", uncertain=True),
        DeliveryFailed("ratelimited", retry_after=7),
    ]
    recorder = Recorder(failures)
    worker = delivery_for(store, clock, recorder, FakeTime(), rand=0.75)
    waits = []
    for _ in range(4):
        await worker.drain()
        [row] = await store.list_outbox()
        if row.state == OutboxState.DELIVERED:
            break
        waits.append((row.available_at - clock.now).total_seconds())
        clock.advance(waits[-1])
    assert waits == [2.0 * 1.25, 4.0 * 1.25, 7.0]
    [row] = await store.list_outbox()
    assert (row.state, row.attempts, row.result) == (
        OutboxState.DELIVERED,
        4,
        {"ts": "1.0", "recovered": False},
    )


class GatedTime(FakeTime):
    """A clock whose sleeps (the pacing between posts) last until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.sleeping.set()
        await self.gate.wait()
        self.now += seconds


class Watched(Recorder):
    """A recorder that says when something was delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.progress = asyncio.Condition()

    async def deliver(self, row: OutboxRow) -> Delivered:
        delivered = await super().deliver(row)
        async with self.progress:
            self.progress.notify_all()
        return delivered

    def refs(self) -> set[str]:
        return {str(row.payload["ref"]) for row in self.delivered}

    async def until(self, refs: set[str]) -> None:
        async with asyncio.timeout(10), self.progress:
            await self.progress.wait_for(lambda: refs <= self.refs())


async def test_a_channel_waiting_out_its_pacing_holds_up_no_other_channel(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    for channel in ("C1", "C1", "C2"):
        await board.create_task(channel, "t", Actor.user("U1"))
    time, recorder = GatedTime(), Watched()
    worker = delivery_for(store, clock, recorder, time)
    loop = asyncio.create_task(worker.run())
    try:
        await recorder.until({"C1#1", "C2#1"})
        async with asyncio.timeout(10):
            await time.sleeping.wait()  # C1's second card waits a second after its first
        await board.create_task("C3", "t", Actor.user("U1"))
        worker.wake()
        await recorder.until({"C3#1"})  # claimed and delivered while C1 still waits
        assert "C1#2" not in recorder.refs()
        time.gate.set()
        await recorder.until({"C1#2"})
        await worker.run_once()  # waits for the channel tasks still recording their results
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert time.slept == [1.0]
    rows = await store.list_outbox()
    assert all(r.state == OutboxState.DELIVERED for r in rows)


async def test_no_more_rows_are_claimed_than_a_batch_while_earlier_ones_wait_their_turn(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    for channel in ("C1", "C1", "C1", "C2"):
        await board.create_task(channel, "t", Actor.user("U1"))
    time, recorder = GatedTime(), Watched()
    settings = DeliverySettings(channel_interval=1.0, batch_size=2)
    worker = OutboxDelivery(
        store, recorder, clock, "w1", settings, sleep=time.sleep, monotonic=time.monotonic
    )
    loop = asyncio.create_task(worker.run())
    try:
        await recorder.until({"C1#1"})
        async with asyncio.timeout(10):
            await time.sleeping.wait()  # C1#2 waits out the pacing: two rows held
        states = [r.state for r in await store.list_outbox()]
        # C1#2 waits, and at most one more row is claimed: the batch of two is never exceeded.
        assert states.count(OutboxState.IN_FLIGHT) <= 2
        assert states.count(OutboxState.PENDING) >= 1
        time.gate.set()
        await recorder.until({"C1#2", "C1#3", "C2#1"})
        await worker.run_once()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert all(r.state == OutboxState.DELIVERED for r in await store.list_outbox())


async def test_a_refusal_for_good_parks_the_row_once_and_its_thread_goes_on(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await registry.add_agent("coder")
    task = await board.create_task("C1", "t", Actor.user("U1"))
    await board.assign_task(task.ref, "coder", "U1")
    recorder = Recorder([DeliveryFailed("is_archived", retry=Retry.NEVER)])
    with capture_logs() as logs:
        await delivery_for(store, clock, recorder, FakeTime()).drain()
    assert [r.kind for r in recorder.delivered] == [OutboxKind.DIRECTIVE, OutboxKind.CARD_UPDATE]
    [card, *_] = await store.list_outbox()
    assert (card.state, card.last_error, card.attempts) == (OutboxState.DEAD, "is_archived", 1)
    assert [e["reason"] for e in logs if e["event"] == "outbox.dead"] == ["is_archived"]
    async with store.read() as reader:
        [event] = [e for e in await reader.list_events(task.id) if e.kind == EventKind.OUTBOX_DEAD]
    assert (event.actor, event.data) == (
        Actor.system("outbox"),
        {"outbox_id": card.id, "kind": "card_post", "error": "is_archived"},
    )


async def test_too_long_is_retried_at_once_shortened_and_then_parked(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await board.create_task("C1", "t", Actor.user("U1"))
    too_long = [DeliveryFailed("msg_too_long", retry=Retry.SHORTENED) for _ in range(2)]
    recorder = Recorder(too_long)
    worker = delivery_for(store, clock, recorder, FakeTime())
    await worker.run_once()
    [row] = await store.list_outbox()
    assert (row.state, row.shortened, row.available_at) == (OutboxState.PENDING, True, clock.now)
    await worker.drain()
    [row] = await store.list_outbox()
    assert (row.state, row.attempts, row.last_error) == (OutboxState.DEAD, 2, "msg_too_long")
    assert recorder.delivered == []


class Broken(Recorder):
    """Fails a card's first rows with an unexpected error (a bug), then delivers."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    async def deliver(self, row: OutboxRow) -> Delivered:
        if row.kind == OutboxKind.CARD_POST and self.times:
            self.times -= 1
            raise KeyError("a rendering bug")
        return await super().deliver(row)


async def test_a_row_failing_with_a_bug_is_parked_after_a_few_attempts_and_the_thread_goes_on(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await registry.add_agent("coder")
    task = await board.create_task("C1", "Buggy card", Actor.user("U1"))
    await board.assign_task(task.ref, "coder", "U1")
    deliverer = Broken(times=100)
    delivery = delivery_for(store, clock, deliverer, FakeTime())
    for _ in range(DeliverySettings().max_unexplained_attempts):
        clock.advance(3600)  # past any back-off
        await delivery.run_once()
    rows = {r.kind: r for r in await store.list_outbox(task.id)}
    card = rows[OutboxKind.CARD_POST]
    assert (card.state, card.last_error) == (OutboxState.DEAD, "error: KeyError")
    await delivery.drain()
    kinds = [r.kind for r in deliverer.delivered]
    assert OutboxKind.CARD_UPDATE in kinds  # no longer held up behind the parked card
