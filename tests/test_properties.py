"""Property tests of the task loop: random assigns, renewals, status changes and reconciles.

A state machine plays random operations at random times against a fresh copy of a migrated
SQLite database, with a fake clock and a model of the scheduler: whenever the clock passes an
interval boundary, the reconcile runs at that instant. The board is read back after every
operation and every scheduled tick, and each test checks one property over every pair of
consecutive reads. Two channels with different lease policies share the one reconcile.
"""

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from bot.errors import DomainError
from bot.outbox import OutboxKind, OutboxRow
from bot.reconcile import RECONCILER
from bot.root import Core, Overrides, open_core
from bot.settings import Settings
from bot.status import TERMINAL_STATUSES, TRANSITIONS, TaskStatus
from bot.task import Actor, EventKind, LeasePolicy, Task, TaskEvent, TaskRef, is_stale
from store.repository import SqlStore
from tests.conftest import START, FakeClock, SequentialKeys

HUMAN = "U_ALICE"
AGENTS = ("ada", "bob")
#: Never registered: assigning to it is refused, and it never holds a claim.
STRANGER = "zed"
#: C1 runs on the global policy; C2 overrides both settings, so one reconcile mixes two.
POLICIES = {
    "C1": LeasePolicy(lease_ttl=timedelta(seconds=10), max_dispatch_attempts=2),
    "C2": LeasePolicy(lease_ttl=timedelta(seconds=6), max_dispatch_attempts=3),
}
TASKS = (TaskRef("C1", 1), TaskRef("C2", 1))
INTERVAL = timedelta(seconds=4)
PROPERTY = settings(max_examples=20, stateful_step_count=20, deadline=None)

#: Events that record a status change and so must say where it went from and to.
STATUS_EVENTS = frozenset(
    {EventKind.STATUS_CHANGED, EventKind.BLOCKED, EventKind.CANCELED, EventKind.REOPENED}
)
DISPATCH_EVENTS = frozenset({EventKind.DISPATCHED, EventKind.REDISPATCHED})
#: Statuses in which no claim is held: finished, or waiting for a person.
UNCLAIMED_STATUSES = TERMINAL_STATUSES | {TaskStatus.BLOCKED}

tasks = st.sampled_from(TASKS)
names = st.sampled_from((*AGENTS, STRANGER))
statuses = st.sampled_from(TaskStatus)
#: Added to the task's current epoch to make the epoch an agent passes; None passes none.
epoch_offsets = st.sampled_from((None, 0, -1, 1))
#: An agent must say why it is blocked; sometimes it forgets.
notes = st.sampled_from(("waiting for an API key", None))
#: Seconds that pass before an operation, so every operation runs at a random time.
waits = st.integers(0, 5)


@dataclass(frozen=True)
class Assign:
    task: TaskRef
    agent: str


@dataclass(frozen=True)
class Renew:
    task: TaskRef
    author: str


@dataclass(frozen=True)
class SetStatus:
    task: TaskRef
    status: TaskStatus
    #: The agent acting, or None for the human.
    agent: str | None = None
    epoch_offset: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class Reopen:
    task: TaskRef


@dataclass(frozen=True)
class Advance:
    seconds: int


@dataclass(frozen=True)
class Reconcile:
    """An extra tick off the schedule, as a second replica or a manual run would make."""


Op = Assign | Renew | SetStatus | Reopen | Advance | Reconcile


@dataclass(frozen=True)
class Snapshot:
    """The whole board at one instant: tasks and their events by ref, and the outbox."""

    at: datetime
    tasks: dict[TaskRef, Task]
    events: dict[TaskRef, list[TaskEvent]]
    outbox: list[OutboxRow]


@dataclass(frozen=True)
class Step:
    """Two consecutive reads of the board around one operation or one scheduled tick."""

    op: Op
    before: Snapshot
    after: Snapshot
    #: The operation raised a DomainError, or was a renew that did not count.
    refused: bool = False
    #: A scheduled reconcile ran at ``after.at``.
    ticked: bool = False

    def new_events(self, ref: TaskRef) -> list[TaskEvent]:
        return self.after.events[ref][len(self.before.events[ref]) :]


Check = Callable[[Step], None]


async def read_board(store: SqlStore, at: datetime) -> Snapshot:
    async with store.read() as reader:
        found = {t.ref: t for t in await reader.list_tasks()}
        events = {ref: await reader.list_events(t.id) for ref, t in found.items()}
    return Snapshot(at, found, events, await store.list_outbox())


class World:
    """Two agents, one human and a task per channel on one board, under a scheduled reconcile."""

    def __init__(self, core: Core, clock: FakeClock, checks: Sequence[Check]) -> None:
        self.store = core.store
        self.clock = clock
        self.board = core.board
        self.thread_posts = core.thread_posts
        self.channel_policies = core.channel_policies
        self.reconciler = core.reconciler
        self.registry = core.registry
        self.checks = checks
        self.next_tick = START + INTERVAL
        self.last = Snapshot(START, {}, {}, [])

    async def set_up(self) -> None:
        c2 = POLICIES["C2"]
        ttl_s = c2.lease_ttl.total_seconds()
        await self.channel_policies.set_channel_policy("C2", HUMAN, ttl_s, c2.max_dispatch_attempts)
        for name in AGENTS:
            await self.registry.add_agent(name)
        for ref in TASKS:
            await self.board.create_task(ref.channel_id, f"task {ref}", Actor.user(HUMAN))
        self.last = await read_board(self.store, self.clock.now)
        assert sorted(self.last.tasks) == sorted(TASKS)

    async def perform(self, op: Op) -> None:
        """Runs ``op``, or moves the clock through every scheduled tick it passes."""
        if isinstance(op, Advance):
            await self.advance(op)
            return
        try:
            counted = await self.call(op)
        except DomainError:
            counted = False
        await self.observe(op, refused=not counted)

    async def call(self, op: Op) -> bool:
        """Calls the use case ``op`` names; False when a renew did not count."""
        if isinstance(op, Reconcile):
            await self.reconciler.reconcile_stale_tasks()
            return True
        assert not isinstance(op, Advance)
        task = self.last.tasks[op.task]
        match op:
            case Assign(_, agent):
                await self.board.assign_task(task.ref, agent, HUMAN)
            case Renew(_, author):
                return await self.thread_posts.renew_lease(task.id, author)
            case SetStatus(_, status, agent, offset, note):
                actor = Actor.user(HUMAN) if agent is None else Actor.agent(agent)
                epoch = None if offset is None else task.lease_epoch + offset
                await self.board.update_task_status(task.ref, status, actor, epoch, note)
            case Reopen():
                await self.board.reopen_task(task.ref, Actor.user(HUMAN))
        return True

    async def advance(self, op: Advance) -> None:
        target = self.clock.now + timedelta(seconds=op.seconds)
        while self.next_tick <= target:
            self.clock.now = self.next_tick
            await self.reconciler.reconcile_stale_tasks()
            await self.observe(op, ticked=True)
            self.next_tick += INTERVAL
        self.clock.now = target
        # Nothing runs between ticks, so the board is as last read; only the time moved.
        self.check(Step(op, self.last, replace(self.last, at=target)))

    async def observe(self, op: Op, refused: bool = False, ticked: bool = False) -> None:
        after = await read_board(self.store, self.clock.now)
        self.check(Step(op, self.last, after, refused, ticked))

    def check(self, step: Step) -> None:
        for check in self.checks:
            check(step)
        self.last = step.after


class TaskLoop(RuleBasedStateMachine):
    """Drives a World on a private database copy, one event loop for the whole example."""

    def __init__(self, template: Path, checks: Sequence[Check]) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp())
        path = self.directory / "threadwork.db"
        shutil.copy(template, path)
        self.runner = asyncio.Runner()
        self.stack = AsyncExitStack()
        clock = FakeClock()
        c1 = POLICIES["C1"]
        settings = Settings(
            DATABASE_URL=f"sqlite:///{path}",
            THREADWORK_LEASE_TTL=c1.lease_ttl.total_seconds(),
            THREADWORK_MAX_DISPATCH_ATTEMPTS=c1.max_dispatch_attempts,
        )
        opened = open_core(settings, Overrides(clock=clock, new_key=SequentialKeys()))
        core = self.runner.run(self.stack.enter_async_context(opened))
        self.world = World(core, clock, checks)
        self.runner.run(self.world.set_up())

    def teardown(self) -> None:
        self.runner.run(self.stack.aclose())
        self.runner.close()
        shutil.rmtree(self.directory)

    def perform(self, op: Op, wait: int) -> None:
        """Lets ``wait`` seconds pass, ticking on schedule, then runs ``op``."""
        self.runner.run(self.world.perform(Advance(wait)))
        self.runner.run(self.world.perform(op))

    def holder(self, task: TaskRef) -> str:
        """The agent holding ``task``'s claim, else its assignee: the one likeliest to act."""
        known = self.world.last.tasks[task]
        return known.claimed_by or known.assignee or AGENTS[0]

    @initialize(agent=st.sampled_from(AGENTS))
    def assign_the_first_task(self, agent: str) -> None:
        self.perform(Assign(TASKS[0], agent), 0)

    @rule(task=tasks, agent=st.sampled_from(AGENTS), wait=waits)
    def assign(self, task: TaskRef, agent: str, wait: int) -> None:
        self.perform(Assign(task, agent), wait)

    @rule(task=tasks, wait=waits)
    def assign_to_a_stranger(self, task: TaskRef, wait: int) -> None:
        self.perform(Assign(task, STRANGER), wait)

    @rule(task=tasks, wait=waits)
    def holder_renews(self, task: TaskRef, wait: int) -> None:
        self.perform(Renew(task, self.holder(task)), wait)

    @rule(task=tasks, author=names, wait=waits)
    def anyone_renews(self, task: TaskRef, author: str, wait: int) -> None:
        self.perform(Renew(task, author), wait)

    @rule(task=tasks, status=statuses, epoch_offset=epoch_offsets, note=notes, wait=waits)
    def holder_sets_status(
        self,
        task: TaskRef,
        status: TaskStatus,
        epoch_offset: int | None,
        note: str | None,
        wait: int,
    ) -> None:
        self.perform(SetStatus(task, status, self.holder(task), epoch_offset, note), wait)

    @rule(task=tasks, status=statuses, agent=names, epoch_offset=epoch_offsets, wait=waits)
    def any_agent_sets_status(
        self, task: TaskRef, status: TaskStatus, agent: str, epoch_offset: int | None, wait: int
    ) -> None:
        self.perform(SetStatus(task, status, agent, epoch_offset), wait)

    @rule(task=tasks, status=statuses, wait=waits)
    def human_sets_status(self, task: TaskRef, status: TaskStatus, wait: int) -> None:
        self.perform(SetStatus(task, status), wait)

    @rule(task=tasks, wait=waits)
    def reopen(self, task: TaskRef, wait: int) -> None:
        self.perform(Reopen(task), wait)

    @rule(wait=waits)
    def reconcile_off_schedule(self, wait: int) -> None:
        self.perform(Reconcile(), wait)

    @rule(seconds=st.integers(0, 20))
    def let_time_pass(self, seconds: int) -> None:
        self.runner.run(self.world.perform(Advance(seconds)))


def play(template: Path, *checks: Check) -> None:
    """Runs the task-loop state machine on copies of ``template``, checking every step."""
    run_state_machine_as_test(lambda: TaskLoop(template, checks), settings=PROPERTY)


def allowed(kind: EventKind | None, current: TaskStatus, target: TaskStatus) -> bool:
    """True when the table allows ``current -> target``, or it is a reopen or an unblock.

    ``kind`` None asks whether any use case may make the move.
    """
    if target in TRANSITIONS[current]:
        return True
    reopen = current in TERMINAL_STATUSES and target == TaskStatus.TODO
    unblock = current == TaskStatus.BLOCKED and target == TaskStatus.TODO
    return (kind in (None, EventKind.REOPENED) and reopen) or (
        kind in (None, EventKind.ASSIGNED) and unblock
    )


def recorded_target(event: TaskEvent, current: TaskStatus) -> TaskStatus | None:
    """The status ``event`` moved its task to, or None when it changed no status."""
    if "to" in event.data:
        assert event.data["from"] == current, f"{event} starts from {current}"
        return TaskStatus(event.data["to"])
    if event.kind == EventKind.BLOCKED and event.actor == RECONCILER:
        return TaskStatus.BLOCKED  # the reconcile's block records why, not where from
    assert event.kind not in STATUS_EVENTS, f"{event} records no from/to"
    return None


def check_status_moves(step: Step) -> None:
    """Every status change, in the row and in the log, is one the table or a reopen allows."""
    for ref, before in step.before.tasks.items():
        after = step.after.tasks[ref]
        assert before.status == after.status or allowed(None, before.status, after.status), (
            f"{ref} moved {before.status} -> {after.status} on {step.op}"
        )
        status = before.status
        for event in step.new_events(ref):
            target = recorded_target(event, status)
            if target is not None:
                assert allowed(event.kind, status, target), f"{event} on {step.op}"
                status = target
        assert status == after.status, f"{ref}'s log ends at {status}, its row at {after.status}"


def check_log_only_grows(step: Step) -> None:
    """Each task's log and the outbox only gain rows at the end, in id and time order."""
    for ref, earlier in step.before.events.items():
        later = step.after.events[ref]
        assert later[: len(earlier)] == earlier, f"{ref}'s log was rewritten on {step.op}"
        ids = [event.id for event in later]
        assert ids == sorted(set(ids)), f"{ref}'s event ids are out of order: {ids}"
        times = [event.at for event in later]
        assert times == sorted(times), f"{ref}'s events go back in time on {step.op}"
    assert step.after.outbox[: len(step.before.outbox)] == step.before.outbox


def check_leases_lapse_within_ttl_and_one_interval(step: Step) -> None:
    """No tick leaves a stale lease, so none goes unprogressed past TTL plus an interval."""
    now = step.after.at
    for task in step.after.tasks.values():
        ttl = POLICIES[task.channel_id].lease_ttl
        if step.ticked:
            assert not is_stale(task, now, ttl), f"the tick at {now} left {task} stale"
        if task.leased:
            assert task.last_progress_at is not None, f"{task} is leased with no progress time"
            assert now - task.last_progress_at <= ttl + INTERVAL, f"{task} overdue at {now}"


def check_refusals_change_nothing(step: Step) -> None:
    """A refused operation leaves every task, event and outbox row as it was."""
    if step.refused:
        assert step.after.tasks == step.before.tasks, f"{step.op} was refused yet changed a task"
        assert step.after.events == step.before.events, f"{step.op} was refused yet logged"
        assert step.after.outbox == step.before.outbox, f"{step.op} was refused yet enqueued"


def agent_acting_on(step: Step, ref: TaskRef) -> str | None:
    """The agent whose counted renew or status change ``step`` made on ``ref``, if any."""
    op = step.op
    if step.refused or not isinstance(op, Renew | SetStatus) or op.task != ref:
        return None
    return op.author if isinstance(op, Renew) else op.agent


def check_claims(step: Step) -> None:
    """Live tasks are claimed by their assignee; only the holder, at its epoch, makes progress."""
    for ref, before in step.before.tasks.items():
        after = step.after.tasks[ref]
        if after.status in UNCLAIMED_STATUSES:
            assert after.claimed_by is None, f"{after} keeps a claim on {step.op}"
        else:
            assert after.claimed_by == after.assignee, f"{after} on {step.op}"
        if after.assignee != before.assignee:
            assert step.op == Assign(ref, after.assignee or ""), f"{after} on {step.op}"
        agent = agent_acting_on(step, ref)
        if agent is not None:
            assert before.claimed_by == agent, f"{step.op} counted for a non-holder"
            if isinstance(step.op, SetStatus):
                assert step.op.epoch_offset in (None, 0), f"{step.op} counted a stale epoch"
            if after.claimed_by is not None:
                assert after.last_progress_at == step.after.at, f"{step.op} was no progress"


def check_dispatches(step: Step) -> None:
    """Each new epoch is logged and directed once, within the attempts; each give-up and each
    agent's block escalated."""
    fresh = step.after.outbox[len(step.before.outbox) :]
    for ref, before in step.before.tasks.items():
        after = step.after.tasks[ref]
        assert after.attempts <= POLICIES[ref.channel_id].max_dispatch_attempts, f"{after}"
        assert after.lease_epoch >= before.lease_epoch, f"{after} on {step.op}"
        events = step.new_events(ref)
        rows = [row for row in fresh if row.task_id == after.id]
        # Epochs come from one counter shared by all tasks: each dispatch takes a fresh, higher
        # one, and the task ends at the last one announced.
        announced = [e.data["epoch"] for e in events if e.kind in DISPATCH_EVENTS]
        new_epochs = announced if after.lease_epoch != before.lease_epoch else []
        assert announced == new_epochs, f"{ref} went to epoch {after.lease_epoch} on {step.op}"
        assert announced == sorted(set(announced)), f"{ref}: epochs {announced} not increasing"
        assert all(e > before.lease_epoch for e in announced), f"{ref}: {announced}"
        assert announced[-1:] == ([after.lease_epoch] if announced else []), f"{ref}: {announced}"
        sent = [
            (r.payload["epoch"], r.payload["agent"]) for r in rows if r.kind == OutboxKind.DIRECTIVE
        ]
        assert sent == [(epoch, after.assignee) for epoch in new_epochs], f"{ref}: {sent}"
        # The assigner is told of every block nobody asked for: the reconcile's give-up, and
        # an agent blocking its own task.
        gave_up = [
            e
            for e in events
            if e.kind == EventKind.BLOCKED and (e.actor == RECONCILER or e.actor.kind == "agent")
        ]
        escalated = [r for r in rows if r.kind == OutboxKind.ESCALATION]
        assert len(escalated) == len(gave_up), f"{ref}: {gave_up} but {escalated}"


def test_status_changes_stay_inside_the_transition_table(sqlite_template: Path) -> None:
    play(sqlite_template, check_status_moves)


def test_the_event_log_and_the_outbox_only_grow_in_order(sqlite_template: Path) -> None:
    play(sqlite_template, check_log_only_grows)


def test_a_scheduled_reconcile_lets_no_lease_run_past_ttl_and_one_interval(
    sqlite_template: Path,
) -> None:
    play(sqlite_template, check_leases_lapse_within_ttl_and_one_interval)


def test_refused_operations_leave_the_tasks_their_events_and_the_outbox_unchanged(
    sqlite_template: Path,
) -> None:
    play(sqlite_template, check_refusals_change_nothing)


def test_claims_follow_the_assignee_and_each_dispatch_is_announced_within_the_attempt_limit(
    sqlite_template: Path,
) -> None:
    play(sqlite_template, check_claims, check_dispatches)
