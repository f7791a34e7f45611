"""The reconcile: finds leases with no progress for the TTL, then re-dispatches or blocks them.

Detect, then act. Detection is one indexed query for leased tasks whose last progress is older
than the cutoff. Acting happens in batches, each one transaction whose UPDATE matches a task
only if its id, attempts and last progress are still what detection read, so two replicas
reconciling at once act exactly once per task, and a task renewed meanwhile is left alone. On
top of that, a tick runs under a lock across replicas (PostgreSQL's advisory lock), so that one
replica, not each of them, spends the thread reads of the probe.
"""

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

import structlog

from bot import outbox
from bot.clock import Clock
from bot.policy import PolicyBook, load_policy_book
from bot.ports import Store, Unit
from bot.ports.tick_lock import TickLock
from bot.signal import EVERYTHING, Notify, ignore
from bot.task import Actor, EventKind, LeasePolicy, NewEvent, Task, TaskRef, is_stale
from bot.work import WakeReason

logger = structlog.get_logger(__name__)

RECONCILER = Actor.system("reconcile")


@dataclass(frozen=True)
class FoundProgress:
    """What a probe found: the latest missed assignee post per task, and what it could not read."""

    found: dict[int, datetime] = field(default_factory=dict)
    #: Tasks the probe could not check this tick (rate limited): they wait for the next tick.
    unchecked: frozenset[int] = frozenset()


class ProgressProbe(Protocol):
    """Looks for progress the service missed (e.g. undelivered chat events) before acting."""

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress: ...


@dataclass
class ReconcileReport:
    """What one reconcile tick did."""

    redispatched: list[TaskRef] = field(default_factory=list)
    blocked: list[TaskRef] = field(default_factory=list)
    #: Stale tasks where the probe found progress, so they were renewed instead.
    renewed: list[TaskRef] = field(default_factory=list)
    #: Stale tasks that changed between detection and action (another replica, a late post).
    skipped: int = 0
    #: Stale tasks left for the next tick because the probe could not check them.
    deferred: int = 0
    #: Tasks whose agent waited longer than the TTL for an answer and was told to assume.
    assumed: list[TaskRef] = field(default_factory=list)
    #: Another replica held the reconcile lock, so this one did nothing this tick.
    held_elsewhere: bool = False

    @property
    def acted(self) -> int:
        return len(self.redispatched) + len(self.blocked)


class SoleReplica:
    """A ``TickLock`` for one process (and for SQLite): always held."""

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[bool]:
        yield True


class Reconciler:
    """Runs ``reconcile_stale_tasks`` with an injected clock; the scheduler calls it.

    A tick runs under ``lock``, so of several replicas ticking at once only one reads threads
    and acts; the others skip the tick and say so in their report.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: LeasePolicy,
        new_key: Callable[[], str] = outbox.new_key,
        probe: ProgressProbe | None = None,
        batch_size: int = 1000,
        max_per_tick: int = 100_000,
        notify: Notify = ignore,
        lock: TickLock | None = None,
    ) -> None:
        self._notify = notify
        self._lock = lock or SoleReplica()
        self._store = store
        self._clock = clock
        self._policy = policy
        self._new_key = new_key
        self._probe = probe
        self._batch_size = batch_size
        self._max_per_tick = max_per_tick

    async def reconcile_stale_tasks(self) -> ReconcileReport:
        """Re-dispatches or blocks every task whose lease lapsed; returns what it did (nothing,
        when another replica is running its own tick)."""
        async with self._lock.hold() as held:
            if held:
                return await self._tick()
        logger.info("reconcile.held_elsewhere")
        return ReconcileReport(held_elsewhere=True)

    async def _tick(self) -> ReconcileReport:
        now = self._clock()
        async with self._store.read() as reader:
            book = await load_policy_book(reader, self._policy)
            widest = await reader.get_stale_tasks(now - book.shortest_ttl, self._max_per_tick)
        stale = [t for t in widest if is_stale(t, now, book.for_channel(t.channel_id).lease_ttl)]
        report = ReconcileReport()
        by_policy: dict[LeasePolicy, list[Task]] = {}
        for task in stale:
            by_policy.setdefault(book.for_channel(task.channel_id), []).append(task)
        for policy, tasks in by_policy.items():
            for start in range(0, len(tasks), self._batch_size):
                batch = tasks[start : start + self._batch_size]
                await self._act(batch, policy, now, report)
        await self._expire_waits(book, now, report)
        if report.acted or report.renewed or report.assumed:
            self._notify(EVERYTHING)
        if stale:
            logger.info(
                "reconcile.tick",
                stale=len(stale),
                redispatched=len(report.redispatched),
                blocked=len(report.blocked),
                renewed=len(report.renewed),
                skipped=report.skipped,
            )
        return report

    async def _act(
        self, batch: list[Task], policy: LeasePolicy, now: datetime, report: ReconcileReport
    ) -> None:
        cutoff = now - policy.lease_ttl
        progress = await self._probe.find_progress(batch) if self._probe else FoundProgress()
        report.deferred += len(progress.unchecked)
        checked = [t for t in batch if t.id not in progress.unchecked]
        async with self._store.transaction() as unit:
            live = await self._count_found_progress(unit, checked, progress.found, cutoff, report)
            retry = [t for t in live if t.attempts < policy.max_dispatch_attempts]
            give_up = [t for t in live if t.attempts >= policy.max_dispatch_attempts]
            redispatched = await unit.redispatch_stale(retry, cutoff, now)
            blocked = await unit.block_stale(give_up, cutoff, now)
            read = {t.id: t for t in live}
            await self._record(unit, policy, redispatched, blocked, read, now)
        report.redispatched += [t.ref for t in redispatched]
        report.blocked += [t.ref for t in blocked]
        report.skipped += len(live) - len(redispatched) - len(blocked)

    async def _expire_waits(self, book: PolicyBook, now: datetime, report: ReconcileReport) -> None:
        """An agent waiting for a person longer than the TTL is woken to assume and go on."""
        async with self._store.read() as reader:
            waiting = await reader.list_waiting_tasks(now - book.shortest_ttl)
        for task in waiting:
            ttl = book.for_channel(task.channel_id).lease_ttl
            if task.awaiting_input_since is None or task.awaiting_input_since >= now - ttl:
                continue
            async with self._store.transaction() as unit:
                resumed = await unit.compare_and_set(
                    task.id,
                    {
                        "lease_epoch": task.lease_epoch,
                        "claimed_by": task.claimed_by,
                        "awaiting_input_since": task.awaiting_input_since,
                    },
                    {"awaiting_input_since": None, "last_progress_at": now},
                    now,
                )
                if resumed is None or resumed.claimed_by is None:
                    continue
                data = {"reason": f"no answer within {int(ttl.total_seconds())}s; assuming"}
                await unit.append_events(
                    [NewEvent(task.id, EventKind.RESUMED, RECONCILER, now, data)]
                )
                wakeup = (task.id, resumed.claimed_by, WakeReason.ASSUME, resumed.lease_epoch)
                await unit.enqueue_wakeups([wakeup], now)
                await unit.enqueue([outbox.card_update(resumed, self._new_key())], now)
            report.assumed.append(task.ref)

    async def _count_found_progress(
        self,
        unit: Unit,
        batch: list[Task],
        found: dict[int, datetime],
        cutoff: datetime,
        report: ReconcileReport,
    ) -> list[Task]:
        """Renews leases for progress the probe found; returns the tasks still stale."""
        live = []
        for task in batch:
            seen, holder = found.get(task.id), task.claimed_by
            if seen and holder and await unit.renew_lease(task.id, holder, seen):
                if seen >= cutoff:
                    report.renewed.append(task.ref)
                    continue
                task = replace(task, last_progress_at=seen)
            live.append(task)
        return live

    async def _record(
        self,
        unit: Unit,
        policy: LeasePolicy,
        redispatched: list[Task],
        blocked: list[Task],
        read: dict[int, Task],
        now: datetime,
    ) -> None:
        """Appends the events and enqueues the directives, escalations and card updates."""
        ttl_s = int(policy.lease_ttl.total_seconds())
        events: list[NewEvent] = []
        effects: list[outbox.OutboxMessage] = []
        wakeups: list[tuple[int, str, WakeReason, int]] = []
        for task in redispatched:
            lapsed = read[task.id].last_progress_at
            data = {
                "attempt": task.attempts,
                "max_attempts": policy.max_dispatch_attempts,
                "epoch": task.lease_epoch,
                "agent": task.assignee,
                "last_progress_at": lapsed.isoformat() if lapsed else None,
                "reason": f"no progress for {ttl_s}s; lease lapsed",
            }
            events.append(NewEvent(task.id, EventKind.REDISPATCHED, RECONCILER, now, data))
            effects.append(outbox.directive(task, policy, self._new_key(), redispatch=True))
            if task.assignee is not None:
                wakeups.append((task.id, task.assignee, WakeReason.REDISPATCH, task.lease_epoch))
            effects.append(outbox.card_update(task, self._new_key()))
        for task in blocked:
            reason = f"no progress for {ttl_s}s after {task.attempts} attempt(s)"
            data = {
                "from": read[task.id].status.value,
                "to": task.status.value,
                "reason": reason,
                "attempts": task.attempts,
                "agent": task.assignee,
            }
            events.append(NewEvent(task.id, EventKind.BLOCKED, RECONCILER, now, data))
            effects.append(outbox.escalation(task, reason, self._new_key()))
            effects.append(outbox.card_update(task, self._new_key()))
        await unit.append_events(events)
        await unit.enqueue(effects, now)
        await unit.enqueue_wakeups(wakeups, now)
