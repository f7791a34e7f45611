"""Outbox delivery's pacing (token buckets per channel and per workspace, paused by a rate
limit), lanes, back-off, dead letters, metrics and the hand-back at a stop, with a recording
deliverer and no real sleeping."""

import asyncio
from collections import Counter
from datetime import timedelta

from structlog.testing import capture_logs

from bot.board import Board
from bot.budget import Rate
from bot.delivery import Delivered, Deliverer, DeliverySettings, OutboxDelivery
from bot.metrics import Metrics, NoMetrics
from bot.outbox import OutboxKind, OutboxRow, OutboxState
from bot.outbox_retries import DeliveryFailed, Retry
from bot.pacing import SharedPace
from bot.registry import AgentRegistry
from bot.root import Core
from bot.status import TaskStatus
from bot.task import Actor, EventKind, TaskRef
from store.repository import SqlStore
from tests.conftest import FakeClock


class Recorder:
    """Delivers everything, remembering the order (and when, by the fake monotonic clock);
    can fail the first n rows."""

    def __init__(
        self, failures: list[DeliveryFailed] | None = None, time: "FakeTime | None" = None
    ) -> None:
        self.delivered: list[OutboxRow] = []
        self.at: list[float] = []
        self.failures = failures or []
        self.time = time

    async def deliver(self, row: OutboxRow) -> Delivered:
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(row)
        if self.time is not None:
            self.at.append(self.time.now)
        return Delivered(ts=f"{len(self.delivered)}.0")

    def kinds(self) -> list[OutboxKind]:
        return [row.kind for row in self.delivered]


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


class CountingMetrics(NoMetrics):
    """Counts the rows settled delivered, by kind."""

    def __init__(self) -> None:
        self.delivered: Counter[str] = Counter()

    def outbox_delivered(self, kind: str) -> None:
        self.delivered[kind] += 1


ALICE = Actor.user("U1")

#: Slack's limits, with a burst of one post so that pacing shows from the second post on.
STRICT = DeliverySettings(
    channel_posts=Rate(per_minute=60, burst=1), backoff_base=2.0, backoff_cap=30.0
)


def delivery_for(
    store: SqlStore,
    clock: FakeClock,
    deliverer: Deliverer,
    time: FakeTime,
    rand: float = 0.5,
    settings: DeliverySettings = STRICT,
    metrics: Metrics | None = None,
) -> OutboxDelivery:
    return OutboxDelivery(
        store,
        deliverer,
        clock,
        "w1",
        settings,
        rand=lambda: rand,
        sleep=time.sleep,
        monotonic=time.monotonic,
        metrics=metrics,
    )


async def cards_in(board: Board, *channels: str) -> None:
    for channel in channels:
        await board.create_task(channel, "t", Actor.user("U1"))


async def test_posts_in_one_channel_are_kept_a_second_apart_but_channels_do_not_wait_for_each_other(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, "C1", "C1", "C1", "C2")
    time = FakeTime()
    recorder = Recorder(time=time)
    await delivery_for(store, clock, recorder, time).drain()
    assert sorted(time.slept) == [1.0, 1.0]
    assert len(recorder.delivered) == 4
    rows = await store.list_outbox()
    assert all(r.state == OutboxState.DELIVERED for r in rows)
    async with store.read() as reader:
        cards = [t.card_ts for t in await reader.list_tasks()]
    assert None not in cards


async def test_a_quiet_channel_posts_a_burst_at_once_then_a_backlog_at_one_a_second(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, *["C1"] * 9)
    time = FakeTime()
    recorder = Recorder(time=time)
    settings = DeliverySettings(channel_posts=Rate(per_minute=60, burst=3), lane_capacity=4)
    await delivery_for(store, clock, recorder, time, settings=settings).drain()
    # The lane is refilled as it goes (four at a time), so the pace never stalls for a claim.
    assert recorder.at == [100.0, 100.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 106.0]
    assert [r.ref for r in recorder.delivered] == [f"C1#{n}" for n in range(1, 10)]


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


async def test_an_agents_post_is_paced_as_a_post(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock, core: Core
) -> None:
    await registry.add_agent("coder")
    task = await board.create_task("C1", "t", Actor.user("U1"))
    await board.assign_task(task.ref, "coder", "U1")
    time = FakeTime()
    recorder = Recorder(time=time)
    worker = delivery_for(store, clock, recorder, time)
    await worker.drain()  # card, directive (a second later), card update
    async with store.read() as reader:
        assigned = await reader.get_task(task.ref)
    assert assigned is not None
    await core.work.post_update(task.ref, "coder", "on it", assigned.lease_epoch)
    await worker.drain()
    assert recorder.delivered[-1].kind == OutboxKind.AGENT_POST
    assert recorder.at[-1] == recorder.at[1] + 1.0  # a second after the directive


async def test_card_updates_share_the_workspaces_budget_across_channels(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    channels = [f"C{n}" for n in range(1, 5)]
    await cards_in(board, *channels)
    time = FakeTime()
    recorder = Recorder(time=time)
    settings = DeliverySettings(workspace_updates=Rate(per_minute=30, burst=2))
    worker = delivery_for(store, clock, recorder, time, settings=settings)
    await worker.drain()
    for channel in channels:
        await board.update_task_status(TaskRef(channel, 1), TaskStatus.IN_PROGRESS, ALICE)
    await worker.drain()
    delivered = zip(recorder.delivered, recorder.at, strict=True)
    updates = [at for row, at in delivered if row.kind == OutboxKind.CARD_UPDATE]
    assert updates == [100.0, 100.0, 102.0, 104.0]  # a burst of two, then one every 2 s


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


async def test_a_channel_with_a_backlog_holds_only_its_lanes_room_and_others_go_past_it(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, *["C1"] * 6, "C2", "C3")  # C1's backlog is the oldest
    time, recorder = GatedTime(), Watched()
    settings = DeliverySettings(
        channel_posts=Rate(per_minute=60, burst=1), batch_size=4, lane_capacity=2
    )
    worker = delivery_for(store, clock, recorder, time, settings=settings)
    loop = asyncio.create_task(worker.run())
    try:
        await recorder.until({"C1#1", "C2#1", "C3#1"})
        async with asyncio.timeout(10):
            await time.sleeping.wait()  # C1#2 waits out the pacing
        rows = await store.list_outbox()
        c1 = [r.state for r in rows if r.ref.startswith("C1#")]
        # The one waiting, and at most one queued behind it: the lane's room, not the batch's.
        assert c1.count(OutboxState.IN_FLIGHT) <= 2
        assert c1.count(OutboxState.PENDING) >= 3
        time.gate.set()
        await recorder.until({f"C1#{n}" for n in range(2, 7)})
        await worker.run_once()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert all(r.state == OutboxState.DELIVERED for r in await store.list_outbox())


async def test_a_card_update_waiting_for_the_workspaces_budget_holds_up_no_post(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, "C1", "C1")
    time, recorder = GatedTime(), Watched()
    settings = DeliverySettings(workspace_updates=Rate(per_minute=60, burst=1))
    worker = delivery_for(store, clock, recorder, time, settings=settings)
    loop = asyncio.create_task(worker.run())
    try:
        await recorder.until({"C1#1", "C1#2"})
        for n in (1, 2):
            await board.update_task_status(TaskRef("C1", n), TaskStatus.IN_PROGRESS, ALICE)
        worker.wake()
        async with asyncio.timeout(10):
            await time.sleeping.wait()  # the second card update waits for the budget
        await cards_in(board, "C1")
        worker.wake()
        await recorder.until({"C1#3"})  # posted at once, in the same channel
        assert recorder.kinds().count(OutboxKind.CARD_UPDATE) == 1
        time.gate.set()
        await worker.run_once()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert recorder.kinds().count(OutboxKind.CARD_UPDATE) == 2


async def test_a_rate_limit_pauses_the_whole_channel_for_retry_after_and_no_other(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, "C1", "C1", "C1", "C2")
    time = FakeTime()
    limited = DeliveryFailed("ratelimited", retry_after=5, rate_limited=True)
    recorder = Recorder([limited], time=time)
    settings = DeliverySettings(channel_posts=Rate(per_minute=60, burst=3))
    worker = delivery_for(store, clock, recorder, time, settings=settings)
    await worker.drain()
    assert sorted(time.slept) == [1.0, 5.0]  # C1#2 after Retry-After, C1#3 a second later
    when = {row.ref: at for row, at in zip(recorder.delivered, recorder.at, strict=True)}
    assert (when["C1#2"], when["C1#3"]) == (105.0, 106.0)
    [first] = [r for r in await store.list_outbox() if r.ref == "C1#1"]
    assert (first.state, first.available_at) == (
        OutboxState.PENDING,
        clock.now + timedelta(seconds=5),
    )
    clock.advance(5)
    await worker.drain()
    assert recorder.delivered[-1].ref == "C1#1"


async def test_a_rate_limited_card_update_pauses_every_channels_card_updates(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, "C1", "C2")
    time = FakeTime()
    recorder = Recorder(time=time)
    worker = delivery_for(store, clock, recorder, time, settings=DeliverySettings())
    await worker.drain()
    for channel in ("C1", "C2"):
        await board.update_task_status(TaskRef(channel, 1), TaskStatus.IN_PROGRESS, ALICE)
    recorder.failures.append(DeliveryFailed("ratelimited", retry_after=8, rate_limited=True))
    await worker.drain()
    assert time.slept == [8.0]
    assert recorder.at[-1] == 108.0
    assert recorder.kinds().count(OutboxKind.CARD_UPDATE) == 1  # the other waits for its time


class Stuck(Watched):
    """A recorder whose call for one ref never returns (the test stops the worker meanwhile)."""

    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref
        self.calling = asyncio.Event()

    async def deliver(self, row: OutboxRow) -> Delivered:
        if row.ref == self.ref:
            self.calling.set()
            await asyncio.Event().wait()
        return await super().deliver(row)


async def test_a_stop_hands_back_the_rows_held_at_once_uncertain_only_if_under_way(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, "C1", "C1", "C1", "C2")
    time, recorder = GatedTime(), Stuck("C2#1")
    worker = delivery_for(store, clock, recorder, time)
    loop = asyncio.create_task(worker.run())
    await recorder.until({"C1#1"})
    async with asyncio.timeout(10):
        await time.sleeping.wait()  # C1#2 waits out the pacing, C1#3 behind it
        await recorder.calling.wait()  # C2#1's call is under way
    with capture_logs() as logs:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    rows = {r.ref: r for r in await store.list_outbox()}
    assert rows["C1#1"].state == OutboxState.DELIVERED
    left = [
        (rows[ref].state, rows[ref].claimed_by, rows[ref].uncertain, rows[ref].attempts)
        for ref in ("C1#2", "C1#3", "C2#1")
    ]
    assert left == [
        (OutboxState.PENDING, None, False, 0),
        (OutboxState.PENDING, None, False, 0),
        (OutboxState.PENDING, None, True, 1),
    ]
    [released] = [e for e in logs if e["event"] == "outbox.released"]
    assert (released["rows"], released["uncertain"]) == (3, [rows["C2#1"].id])


async def test_each_row_settled_delivered_is_counted_the_coalesced_ones_too(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    await cards_in(board, "C1")
    metrics, recorder = CountingMetrics(), Recorder()
    worker = delivery_for(store, clock, recorder, FakeTime(), metrics=metrics)
    await worker.drain()
    ref = TaskRef("C1", 1)
    for status in (TaskStatus.IN_PROGRESS, TaskStatus.IN_REVIEW, TaskStatus.BLOCKED):
        await board.update_task_status(ref, status, ALICE)
    await worker.drain()
    assert recorder.kinds() == [OutboxKind.CARD_POST, OutboxKind.CARD_UPDATE]
    assert metrics.delivered == {"card_post": 1, "card_update": 3}


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


class SharedTime(FakeTime):
    """A fake monotonic clock whose sleeps move the service's clock too, as real time would."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.clock.advance(seconds)


async def test_two_replicas_posting_in_one_channel_keep_to_its_limit_between_them(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    """Each replica paces in memory; the bucket they share keeps the channel at 1/s (burst 3)
    wherever its rows go out, instead of each replica allowing that much on its own."""
    await cards_in(board, *["C1"] * 8)
    time = SharedTime(clock)
    recorder = Recorder(time=time)
    shared = SharedPace(store, clock, time.sleep)
    settings = DeliverySettings(channel_posts=Rate(per_minute=60, burst=3))
    a, b = (
        OutboxDelivery(
            store,
            recorder,
            clock,
            worker,
            settings,
            sleep=time.sleep,
            monotonic=time.monotonic,
            shared=shared,
        )
        for worker in ("a", "b")
    )
    for _ in range(4):  # the replicas take turns at the backlog, a lane's room each
        await a.run_once()
        await b.run_once()
    assert len(recorder.delivered) == 8
    offsets = [round(at - recorder.at[0], 3) for at in recorder.at]
    assert offsets == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
