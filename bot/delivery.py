"""Outbox delivery: claims rows, paces them, delivers, settles, retries or parks.

Platform-neutral: a Deliverer performs one row and raises DeliveryFailed to say whether and how
to retry (``bot.outbox_retries`` retries or parks the row). Rows are claimed head-of-thread
only, so a thread's side effects land in the order written; a row the platform refuses for good
is parked as dead, and the rest of its thread goes on without it.

Pacing follows the platform's limits (Slack's): a channel's new posts about one a second, and
the workspace's card updates about fifty a minute, each a token bucket that allows short bursts
and pauses for the platform's Retry-After when a call is rate limited.
"""

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog

from bot.budget import Rate
from bot.clock import Clock
from bot.metrics import Metrics, NoMetrics
from bot.outbox import OutboxKind, OutboxRow
from bot.outbox_retries import DeliveryFailed, Log, OutboxRetries
from bot.pacing import Pace, SharedPace
from bot.ports.outbox import OutboxQueue
from bot.session import SessionStatus
from bot.signal import work_loop
from bot.task import TaskRef

logger = structlog.get_logger(__name__)

#: Kinds that post a new message (chat.postMessage), and so draw on their channel's posting
#: budget. The one other kind, a card update, edits a message and draws on the workspace's.
POSTING_KINDS = frozenset(
    {
        OutboxKind.CARD_POST,
        OutboxKind.DIRECTIVE,
        OutboxKind.ESCALATION,
        OutboxKind.AGENT_POST,
        OutboxKind.NOTICE,
        OutboxKind.STREAM_STOP,
    }
)
#: Slack's chat.postMessage limit: about one message a second in a channel, short bursts allowed.
CHANNEL_POSTS = Rate(per_minute=60, burst=3)
#: Slack's chat.update limit (Tier 3, per workspace): about 50 a minute, short bursts allowed.
WORKSPACE_UPDATES = Rate(per_minute=50, burst=10)


@dataclass(frozen=True)
class Delivered:
    """Where a row landed: the platform's message id, and whether an earlier post was found."""

    ts: str
    recovered: bool = False
    #: Nothing needed doing (a card update for a card that was never posted).
    skipped: bool = False
    #: The status the task's agent session was set to along the way, if any.
    session: SessionStatus | None = None


class Deliverer(Protocol):
    async def deliver(self, row: OutboxRow) -> Delivered: ...


class Lane(NamedTuple):
    """Rows delivered one after another on one budget: a channel's new posts, or its card
    updates (edits, drawing on the workspace's budget).

    The rows held at once are all of different threads (a thread's next row is claimable only
    once its last is settled), so lanes run side by side without reordering any thread. The
    claim (``OutboxQueue.claim_outbox``) knows a lane as the plain pair.
    """

    channel_id: str
    updates: bool

    @classmethod
    def of(cls, row: OutboxRow) -> "Lane":
        return cls(TaskRef.parse(row.ref).channel_id, row.kind == OutboxKind.CARD_UPDATE)


@dataclass(frozen=True)
class DeliverySettings:
    """Pacing and retry knobs; seconds throughout."""

    #: The most rows held at once (claimed, and queued or being sent), and claimed at once.
    batch_size: int = 100
    #: The most rows one lane holds: enough to keep it at its pace (and to spend a burst), few
    #: enough that a backlog waits in the database, where the claim passes over full lanes.
    lane_capacity: int = 4
    #: Each channel's new posts. None: no pacing (tests that drive delivery by hand).
    channel_posts: Rate | None = CHANNEL_POSTS
    #: The workspace's card updates. None: no pacing.
    workspace_updates: Rate | None = WORKSPACE_UPDATES
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    idle_poll: float = 1.0
    #: Attempts that failed with an unexpected error (a bug, not the platform's answer) before
    #: the row is parked as dead rather than holding up its thread for ever.
    max_unexplained_attempts: int = 10


class OutboxDelivery:
    """Delivers the outbox until stopped; ``wake()`` after a commit makes it look at once.

    Each lane's rows are delivered in turn by the lane's own task, so one channel's pacing, a
    rate limit or a slow call never holds up another channel, and a card update waiting for the
    workspace's budget never holds up a post: the loop hands claimed rows to the lane tasks and
    claims again without waiting for them. Rows stay claimed while queued (a claim lasts as long
    as its worker), and a task's next row becomes claimable only once the previous one is
    settled, so order per thread holds; it is claimed in the transaction that records the
    previous one, so a thread's rows follow each other without a claim between them. A clean
    stop hands back at once what is still held.
    """

    def __init__(
        self,
        queue: OutboxQueue,
        deliverer: Deliverer,
        clock: Clock,
        worker: str,
        settings: DeliverySettings | None = None,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        shared: SharedPace | None = None,
    ) -> None:
        self._queue = queue
        #: The buckets replicas share, when several may deliver (PostgreSQL).
        self._shared = shared
        self._deliverer = deliverer
        self._clock = clock
        self._worker = worker
        self._settings = settings or DeliverySettings()
        self._retries = _retries(queue, clock, worker, self._settings, rand)
        self._sleep = sleep
        self._monotonic = monotonic
        self._metrics = metrics or NoMetrics()
        self._wake = asyncio.Event()
        self._queued: dict[Lane, deque[OutboxRow]] = {}
        self._lanes: dict[Lane, asyncio.Task[None]] = {}
        #: Rows each lane holds: claimed and not yet done with, queued or being sent.
        self._held: Counter[Lane] = Counter()
        #: Rows whose call began and whose outcome is not recorded: uncertain if handed back.
        self._unsettled: set[int] = set()
        #: One per channel posted to (a few hundred bytes each), and one for the workspace.
        self._channel_paces: dict[str, Pace] = {}
        updates = self._settings.workspace_updates
        self._update_pace = Pace(updates, monotonic, sleep) if updates else None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Delivers rows as they come, until cancelled; then hands back what it still holds."""
        try:
            await work_loop(
                self._claim_round, self._wake, self._settings.idle_poll, "outbox.claim_failed"
            )
        finally:
            for task in self._lanes.values():
                task.cancel()
            await self._settle()
            await self._release()

    async def abandon(self) -> None:
        """This worker was presumed dead and its rows taken over: stops sending what it still
        holds (no longer its own, and settling it would fail anyway), then claims afresh."""
        lanes = list(self._lanes.values())
        for task in lanes:
            task.cancel()
        await self._settle()
        self._unsettled.clear()
        if lanes:
            logger.warning("outbox.abandoned", lanes=len(lanes))
        self.wake()

    async def run_once(self) -> int:
        """Claims one batch and waits until it is delivered; returns rows attempted."""
        claimed = await self._claim(self._room())
        await self._settle()
        return claimed

    async def drain(self, max_rounds: int = 1000) -> None:
        """Delivers until nothing is due (for tests and the CLI); bounded by ``max_rounds``."""
        for _ in range(max_rounds):
            if await self.run_once() == 0:
                return

    async def _settle(self) -> None:
        """Waits until every lane task has ended (including any started meanwhile)."""
        while self._lanes:
            await asyncio.gather(*self._lanes.values(), return_exceptions=True)
            for lane, task in list(self._lanes.items()):
                if task.done():  # also one cancelled before it ever ran
                    self._forget(lane, task)

    async def _release(self) -> None:
        """Hands back every row this worker holds, as pending: uncertain only the ones whose
        call was under way (or whose outcome was never recorded), so the others go out as
        they are from the next worker, at once."""
        uncertain = sorted(self._unsettled)
        try:
            released = await self._queue.release_claims(self._worker, uncertain)
        except Exception:
            # What stays in flight is reopened by the takeover once this worker is gone.
            logger.exception("outbox.release_failed", worker=self._worker)
            return
        self._unsettled.clear()
        if released:
            logger.info("outbox.released", rows=released, uncertain=uncertain)

    async def _claim_round(self) -> int:
        """The loop's claim. It claims again at once only when it filled the room it had (more
        may be due); one that fell short waits for a wake: a commit, or a lane done with a row
        (a thread's next row, and room in a lane that was full)."""
        room = self._room()
        return 1 if room > 0 and await self._claim(room) == room else 0

    def _room(self) -> int:
        return self._settings.batch_size - sum(self._held.values())

    async def _claim(self, room: int) -> int:
        """Claims up to ``room`` due rows and hands each to its lane's task; does not wait for
        delivery. At most ``batch_size`` rows are held at once, and ``lane_capacity`` in one
        lane."""
        if room <= 0:
            return 0
        held = {(lane.channel_id, lane.updates): count for lane, count in self._held.items()}
        rows = await self._queue.claim_outbox(
            self._worker, self._clock(), room, self._settings.lane_capacity, held
        )
        for row in rows:
            self._hold(row)
            if row.coalesced:
                self._count_coalesced(row)
        return len(rows)

    def _hold(self, row: OutboxRow) -> None:
        lane = Lane.of(row)
        self._queued.setdefault(lane, deque()).append(row)
        self._held[lane] += 1
        if lane not in self._lanes:
            name = f"outbox:{lane.channel_id}:{'updates' if lane.updates else 'posts'}"
            self._lanes[lane] = asyncio.create_task(self._deliver_lane(lane), name=name)

    def _count_coalesced(self, row: OutboxRow) -> None:
        for _ in row.coalesced:
            self._metrics.outbox_delivered(row.kind.value)
        logger.info(
            "outbox.coalesced", outbox_id=row.id, ref=row.ref, coalesced=list(row.coalesced)
        )

    async def _deliver_lane(self, lane: Lane) -> None:
        """Delivers the lane's queued rows in turn at its pace, then ends (a claim starts it
        again)."""
        queue = self._queued[lane]
        pace = self._pace(lane)
        try:
            while queue:
                if pace is not None:
                    await pace.take()
                    if self._shared is not None:
                        await self._shared.take(_bucket(lane), pace.rate)
                row = queue.popleft()
                # A claim may have passed this lane over, or found no room at all.
                crowded = self._held[lane] >= self._settings.lane_capacity or self._room() <= 0
                followed = False
                try:
                    followed = await self._deliver(row, lane, pace)
                except Exception:
                    # Recording the outcome failed: the row stays in flight, held by this
                    # worker, until it stops (handed back uncertain) or is taken over.
                    logger.exception("outbox.record_failed", outbox_id=row.id)
                finally:
                    self._let_go(lane)
                if crowded or not followed or row.kind == OutboxKind.CARD_POST:
                    # Room again, or the thread's next rows may be claimable now (after its
                    # card, both its first post and its first card update).
                    self.wake()  # room again, or the thread's next row may be claimable now
        finally:
            self._forget(lane, asyncio.current_task())

    def _let_go(self, lane: Lane) -> None:
        self._held[lane] -= 1
        if self._held[lane] <= 0:
            del self._held[lane]

    def _forget(self, lane: Lane, task: object) -> None:
        """Drops an ended lane task and its rows still queued (a stop hands those back)."""
        if self._lanes.get(lane) is task:
            self._lanes.pop(lane)
            self._queued.pop(lane, None)
            self._held.pop(lane, None)

    def _pace(self, lane: Lane) -> Pace | None:
        if lane.updates:
            return self._update_pace
        rate = self._settings.channel_posts
        if rate is None:
            return None
        pace = self._channel_paces.get(lane.channel_id)
        if pace is None:
            pace = self._channel_paces[lane.channel_id] = Pace(rate, self._monotonic, self._sleep)
        return pace

    async def _deliver(self, row: OutboxRow, lane: Lane, pace: Pace | None) -> bool:
        """Performs ``row`` and records the outcome; True when it was recorded delivered, with
        its thread's next row dealt with in the same transaction. Raises only when recording
        the outcome failed."""
        log = logger.bind(outbox_id=row.id, kind=row.kind.value, ref=row.ref)
        self._unsettled.add(row.id)
        followed = False
        try:
            delivered = await self._deliverer.deliver(row)
        except DeliveryFailed as failure:
            if failure.rate_limited and failure.retry_after is not None and pace is not None:
                pace.pause(failure.retry_after)
                log.warning("outbox.lane_paused", seconds=failure.retry_after)
            await self._retries.settle_failure(row, failure, log)
        except Exception as exc:
            log.exception("outbox.delivery_error")
            await self._retries.settle_unexplained(row, exc, log)
        else:
            followed = await self._record(row, lane, delivered, log)
        self._unsettled.discard(row.id)
        return followed

    async def _record(self, row: OutboxRow, lane: Lane, delivered: Delivered, log: Log) -> bool:
        """Records ``row`` delivered and, in the same transaction, claims its thread's next row
        (so a thread's rows follow each other without a claim in between)."""
        card = (row.task_id, delivered.ts) if row.kind == OutboxKind.CARD_POST else None
        result: dict[str, object] = {"ts": delivered.ts, "recovered": delivered.recovered}
        held = {(other.channel_id, other.updates): n for other, n in self._held.items()}
        held[lane.channel_id, lane.updates] -= 1  # this row's place is free once it is settled
        session = (row.task_id, delivered.session) if delivered.session is not None else None
        recorded = await self._queue.mark_delivered_and_claim_next(
            row.id,
            self._worker,
            result,
            self._clock(),
            card,
            self._settings.lane_capacity,
            held,
            session,
        )
        if recorded.settled:
            self._metrics.outbox_delivered(row.kind.value)
        log.info(
            "outbox.delivered",
            ts=delivered.ts,
            recovered=delivered.recovered,
            settled=recorded.settled,
        )
        if recorded.next_row is not None:
            self._hold(recorded.next_row)
            if recorded.next_row.coalesced:
                self._count_coalesced(recorded.next_row)
        return recorded.settled


def _bucket(lane: Lane) -> str:
    """The shared bucket a lane's calls take from: its channel's posts, or the workspace's
    card updates."""
    return "slack_updates" if lane.updates else f"slack_posts:{lane.channel_id}"


def _retries(
    queue: OutboxQueue,
    clock: Clock,
    worker: str,
    settings: DeliverySettings,
    rand: Callable[[], float],
) -> OutboxRetries:
    """The retries and parking of ``worker``'s failed rows, with the back-off ``settings``."""
    return OutboxRetries(
        queue,
        clock,
        worker,
        backoff_base=settings.backoff_base,
        backoff_cap=settings.backoff_cap,
        max_unexplained_attempts=settings.max_unexplained_attempts,
        rand=rand,
    )
