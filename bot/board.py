"""The task loop's use cases: create, assign, change status, stop, cancel, reopen.

Each use case is one transaction: it reads the task, checks the rules, writes the change as a
compare-and-set, appends one event per state change and enqueues the chat side effects. What
posts in a task's thread do to it lives in ``bot.thread_posts``, and channels' policies in
``bot.channel_policies``.
"""

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bot import outbox
from bot.access import Access
from bot.clock import Clock
from bot.errors import Conflict, IllegalTransition, InvalidInput, NotAllowed, NotFound
from bot.guards import check_agent_may_set, check_claim, require_agent, require_task
from bot.policy import load_policy_book
from bot.ports import Store, Unit
from bot.ports.tasks import TaskFields
from bot.session import SessionStatus
from bot.signal import Notify, ignore
from bot.status import (
    LEASED_STATUSES,
    TERMINAL_STATUSES,
    TaskStatus,
    check_reopen,
    check_transition,
)
from bot.stop import Stopped, stop_attempt
from bot.task import Actor, EventKind, LeasePolicy, NewEvent, Task, TaskRef, storable
from bot.tool_requests import record_result, recorded_before, tool_request
from bot.work import WakeReason

MAX_TITLE_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 4000
MAX_NOTE_LENGTH = 1000


@dataclass(frozen=True)
class Change:
    """What a use case decided: the columns to write and the events and effects that follow."""

    fields: TaskFields
    events: list[tuple[EventKind, dict[str, Any]]]
    #: Claim the task for its assignee afresh: attempt 1, a new epoch, a directive.
    dispatch: bool = False
    #: The change counts as progress on the lease, if a claim remains.
    progress: bool = False
    #: Tell the assigner the task is blocked, for this reason.
    escalate: str | None = None


class Board:
    """Runs the use cases against a store, with an injected clock and key source."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: LeasePolicy,
        new_key: Callable[[], str] = outbox.new_key,
        notify: Notify = ignore,
        *,
        access: Access,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._new_key = new_key
        self._notify = notify
        self._access = access

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def access(self) -> Access:
        return self._access

    async def _may_change(
        self,
        ref: TaskRef,
        actor: Actor,
        in_channel: str | None,
        closes: Callable[[Task], bool] = lambda _task: False,
    ) -> Task | None:
        """Raises unless ``actor`` may change the task ``ref`` names (and close it, when the
        change ``closes`` it), from ``in_channel`` when the request says where it came from. A
        task the actor may not see is refused exactly as a missing one.

        Checked before the write transaction, so no lookup at the chat platform holds the
        database. Returns the task as checked (None for agents and the system, who are not
        checked here); the write then refuses it if it changed meanwhile (``_as_checked``).
        """
        if actor.kind != "user":
            return None
        async with self._store.read() as reader:
            task = await require_task(reader, ref)
            book = await load_policy_book(reader, self._policy)
        await self._access.require_change(actor, task, in_channel)
        if closes(task):
            await self._access.require_close(actor, task, book.closers(task.channel_id))
        return task

    async def create_task(
        self,
        channel_id: str,
        title: str,
        created_by: Actor,
        description: str = "",
        thread_ts: str | None = None,
    ) -> Task:
        """Creates a todo task in ``channel_id`` and enqueues its card; a person must be a
        member of the channel."""
        title, description = " ".join(storable(title).split()), storable(description)
        if not title:
            raise InvalidInput("A task needs a title.")
        if len(title) > MAX_TITLE_LENGTH:
            raise InvalidInput(f"A title can be at most {MAX_TITLE_LENGTH} characters.")
        if len(description.strip()) > MAX_DESCRIPTION_LENGTH:
            raise InvalidInput(
                f"A description can be at most {MAX_DESCRIPTION_LENGTH:,} characters."
            )
        if not await self._access.may_read(created_by, channel_id):
            raise NotAllowed("You can create tasks only in channels you are a member of.")
        await self._access.require_person(created_by)
        now = self._clock()
        async with self._transaction() as unit:
            task = await unit.insert_task(
                {
                    "channel_id": channel_id,
                    "title": title,
                    "description": description.strip(),
                    "created_by": str(created_by),
                    "thread_ts": thread_ts,
                    "at": now,
                }
            )
            event = NewEvent(task.id, EventKind.CREATED, created_by, now, {"title": title})
            await unit.append_events([event])
            await unit.enqueue([outbox.card_post(task, self._new_key())], now)
        return task

    async def assign_task(
        self, ref: TaskRef, agent_name: str, by: str, in_channel: str | None = None
    ) -> Task:
        """Assigns ``ref`` to an agent on behalf of Slack user ``by`` and dispatches it.

        ``by`` must be a member of the task's channel; taking a task away from the agent it is
        assigned to is closing it for that agent, so it needs closing rights too.
        """

        def takes_it_away(task: Task) -> bool:
            return task.assignee is not None and task.assignee != agent_name

        checked = await self._may_change(ref, Actor.user(by), in_channel, closes=takes_it_away)
        async with self._transaction() as unit:
            task = _as_checked(await require_task(unit, ref), checked)
            agent = await require_agent(unit, agent_name)
            if task.status in TERMINAL_STATUSES:
                raise IllegalTransition(f"{ref} is {task.status}; reopen it before assigning it.")
            status = TaskStatus.TODO if task.status == TaskStatus.BLOCKED else task.status
            data = {"agent": agent.name, "previous": task.assignee, "by": by}
            if status != task.status:
                data |= {"from": task.status.value, "to": status.value}
            change = Change(
                fields={"status": status, "assignee": agent.name, "assigned_by": by},
                events=[(EventKind.ASSIGNED, data)],
                dispatch=True,
            )
            return await self._apply(unit, task, change, Actor.user(by))

    async def update_task_status(
        self,
        ref: TaskRef,
        status: TaskStatus,
        actor: Actor,
        epoch: int | None = None,
        note: str | None = None,
        in_channel: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Moves ``ref`` to ``status`` if the table allows it and ``actor`` may act.

        A person must be a member of the task's channel, and have closing rights to cancel it
        or mark it done. An agent must hold the claim and, when it passes ``epoch``, the
        current one; sent again with its ``idempotency_key``, its move returns the task and
        changes nothing. The change counts as progress. Moving a blocked task with an assignee
        back to work re-dispatches it.
        """
        note = storable(note) if note is not None else None
        if note is not None and len(note) > MAX_NOTE_LENGTH:
            raise InvalidInput(f"A note can be at most {MAX_NOTE_LENGTH:,} characters.")
        key = idempotency_key if actor.kind == "agent" else None  # only agents' calls are keyed
        request = tool_request(
            key, "update_task_status", task=str(ref), status=status.value, note=note, epoch=epoch
        )
        closing = status in (TaskStatus.DONE, TaskStatus.CANCELED)
        checked = await self._may_change(ref, actor, in_channel, closes=lambda _task: closing)
        async with self._transaction() as unit:
            task = _as_checked(await require_task(unit, ref), checked)
            if actor.kind == "agent":
                first = await recorded_before(unit, actor.id, request, task.id, self._clock())
                if first is not None:  # sent again: the move was made; the task as it is now
                    return await require_task(unit, ref)
                check_claim(task, actor.id, epoch)
                book = await load_policy_book(unit, self._policy)
                check_agent_may_set(status, note, book.agents_may_close(task.channel_id))
            change = _status_change(task, status, actor, note)
            updated = await self._apply(unit, task, change, actor)
            await record_result(
                unit, actor.id, request, {"status": status.value, "epoch": updated.lease_epoch}
            )
            return updated

    async def stop_task(
        self,
        ref: TaskRef,
        by: str,
        streams: Sequence[str] = (),
        in_channel: str | None = None,
    ) -> Stopped:
        """Stops the current attempt on ``ref`` for Slack user ``by`` (the session's Stop
        button, or the card's): the task is blocked "stopped by" them, its claim cleared and its
        assignee kept, and its epoch bumped, so whatever the old run still sends is refused as
        superseded. The assignee is woken to stop at once. ``streams`` are the messages the
        platform says were streaming; they are ended. Stopping needs closing rights.

        With no attempt under way there is nothing to stop: the session is still resynced, as
        the platform may show it working.
        """
        checked = await self._may_change(ref, Actor.user(by), in_channel, closes=lambda _t: True)
        async with self._transaction() as unit:
            task = _as_checked(await require_task(unit, ref), checked)
            now = self._clock()
            if task.assignee is not None:
                # The platform leaves the session processing when Stop is pressed on it.
                await unit.record_session(task.id, SessionStatus.PROCESSING, now, create=False)
            if not task.leased:
                await unit.enqueue([outbox.card_update(task, self._new_key())], now)
                return Stopped(task, stopped=False)
            stopped = await stop_attempt(unit, task, by, streams, now, self._new_key)
            return Stopped(stopped, stopped=True)

    async def stop_thread(
        self, channel_id: str, thread_ts: str, by: str, streams: Sequence[str] = ()
    ) -> Stopped:
        """``stop_task`` for the task living in the thread (``channel_id``, ``thread_ts``)."""
        async with self._store.read() as reader:
            task = await reader.get_task_by_thread(channel_id, thread_ts)
        if task is None:
            raise NotFound("There is no task in this thread.")
        return await self.stop_task(task.ref, by, streams, in_channel=channel_id)

    async def cancel_task(
        self,
        ref: TaskRef,
        by: Actor,
        reason: str | None = None,
        in_channel: str | None = None,
    ) -> Task:
        """Cancels ``ref``: the claim is cleared and the assignee kept for the record."""
        return await self.update_task_status(
            ref, TaskStatus.CANCELED, by, note=reason, in_channel=in_channel
        )

    async def reopen_task(self, ref: TaskRef, by: Actor, in_channel: str | None = None) -> Task:
        """Reopens a done or canceled task to todo, re-dispatching it to its assignee if any."""
        checked = await self._may_change(ref, by, in_channel)
        async with self._transaction() as unit:
            task = _as_checked(await require_task(unit, ref), checked)
            check_reopen(task.status)
            data = {"from": task.status.value, "to": TaskStatus.TODO.value}
            change = Change(
                fields={"status": TaskStatus.TODO},
                events=[(EventKind.REOPENED, data)],
                dispatch=task.assignee is not None,
            )
            return await self._apply(unit, task, change, by)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Unit]:
        """One unit of work; if it queued work, whoever waits for work is told once it commits."""
        async with self._store.transaction() as unit:
            yield unit
        if unit.queued:
            self._notify(frozenset(unit.queued))

    async def _apply(self, unit: Unit, task: Task, change: Change, actor: Actor) -> Task:
        """Writes ``change`` as a compare-and-set on what was read, with events and effects."""
        now = self._clock()
        fields = change.fields.copy()
        if change.dispatch:
            fields["claimed_by"] = fields.get("assignee", task.assignee)
            fields["attempts"] = 1
            [fields["lease_epoch"]] = await unit.next_epochs(1)
            fields["last_progress_at"] = now
        elif change.progress and fields.get("claimed_by", task.claimed_by) is not None:
            fields["last_progress_at"] = now
        expect: TaskFields = {
            "status": task.status,
            "lease_epoch": task.lease_epoch,
            "claimed_by": task.claimed_by,
        }
        updated = await unit.compare_and_set(task.id, expect, fields, now)
        if updated is None:
            raise Conflict(f"{task.ref} changed while this was being done; please try again.")
        events = [NewEvent(task.id, kind, actor, now, data) for kind, data in change.events]
        effects = [outbox.card_update(updated, self._new_key())]
        if change.escalate is not None:
            effects.insert(0, outbox.escalation(updated, change.escalate, self._new_key()))
        if change.dispatch and updated.assignee is not None:
            wakeup = (task.id, updated.assignee, WakeReason.DIRECTIVE, updated.lease_epoch)
            await unit.enqueue_wakeups([wakeup], now)
        if change.dispatch:
            policy = (await load_policy_book(unit, self._policy)).for_channel(task.channel_id)
            dispatched = {"attempt": 1, "epoch": updated.lease_epoch, "agent": updated.assignee}
            events.append(NewEvent(task.id, EventKind.DISPATCHED, actor, now, dispatched))
            effects.insert(0, outbox.directive(updated, policy, self._new_key(), redispatch=False))
        await unit.append_events(events)
        await unit.enqueue(effects, now)
        return updated


def _as_checked(task: Task, checked: Task | None) -> Task:
    """``task`` as the write transaction read it, if it is still as the access check saw it;
    else Conflict (someone changed it in between, so the check may no longer hold)."""
    if checked is None:
        return task

    def seen(t: Task) -> tuple[object, ...]:
        return (t.status, t.lease_epoch, t.claimed_by, t.assignee, t.assigned_by)

    if seen(task) != seen(checked):
        raise Conflict(f"{task.ref} changed while this was being done; please try again.")
    return task


def _status_change(task: Task, status: TaskStatus, actor: Actor, note: str | None) -> Change:
    """The change that moves ``task`` to ``status`` if the table allows it: blocked, done and
    canceled clear the claim, and a blocked task with an assignee going back to work is
    dispatched afresh. It counts as progress."""
    check_transition(task.status, status)
    data = {"from": task.status.value, "to": status.value, "note": note}
    kind = {
        TaskStatus.BLOCKED: EventKind.BLOCKED,
        TaskStatus.CANCELED: EventKind.CANCELED,
    }.get(status, EventKind.STATUS_CHANGED)
    fields: TaskFields = {"status": status}
    redispatch = (
        task.status == TaskStatus.BLOCKED
        and status in LEASED_STATUSES
        and task.assignee is not None
    )
    if status in TERMINAL_STATUSES or status == TaskStatus.BLOCKED:
        fields["claimed_by"] = None
    # An agent that blocks its task waits for a person: the assigner is told, by name.
    escalate = note if actor.kind == "agent" and status == TaskStatus.BLOCKED else None
    return Change(fields, [(kind, data)], dispatch=redispatch, progress=True, escalate=escalate)
