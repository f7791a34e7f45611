"""The task loop's use cases: create, assign, renew, change status, cancel, reopen.

Each use case is one transaction: it reads the task, checks the rules, writes the change as a
compare-and-set, appends one event per state change and enqueues the chat side effects.
"""

import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot import outbox
from bot.access import Access, Closers
from bot.agents import Agent
from bot.clock import Clock
from bot.errors import (
    Conflict,
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    NotClaimHolder,
    NotFound,
    Superseded,
)
from bot.policy import ChannelPolicy, PolicyBook, load_policy_book
from bot.ports import Reader, Store, TaskFields, Unit
from bot.session import SessionStatus
from bot.signal import Notify, Queued, ignore
from bot.status import (
    LEASED_STATUSES,
    TERMINAL_STATUSES,
    TaskStatus,
    check_reopen,
    check_transition,
)
from bot.task import (
    Actor,
    EventKind,
    IncomingReply,
    LeasePolicy,
    NewEvent,
    Task,
    TaskRef,
    ThreadMessage,
    storable,
)
from bot.tool_requests import record_result, recorded_before, tool_request
from bot.work import WakeReason

MAX_TITLE_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 4000
MAX_NOTE_LENGTH = 1000
#: Bounds on a channel's policy, so no override can break the reconcile or the card.
MAX_LEASE_TTL_S = 365 * 24 * 3600.0
MAX_DISPATCH_ATTEMPTS = 100


def new_key() -> str:
    """A fresh outbox key: time-ordered (new keys land at the end of the unique index, not on
    a random page of it) then 64 random bits; 32 hex digits."""
    return f"{time.time_ns():016x}{secrets.randbits(64):016x}"


@dataclass(frozen=True)
class ThreadReply:
    """A reply stored in a task's thread, and whether it renewed the lease."""

    task_id: int
    renewed: bool


def _wrote(agent: Agent, reply: IncomingReply) -> bool:
    """Whether ``agent`` is the Slack user or bot who posted ``reply``."""
    by_user = agent.slack_user_id is not None and agent.slack_user_id == reply.user_id
    return by_user or (agent.slack_bot_id is not None and agent.slack_bot_id == reply.bot_id)


def _by_holder(reply: IncomingReply, task: Task, agents: Sequence[Agent]) -> bool:
    """Whether ``reply`` was posted by the agent holding ``task``'s claim."""
    return any(a.name == task.claimed_by and _wrote(a, reply) for a in agents)


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


@dataclass(frozen=True)
class Stopped:
    """What a Stop did: the task as it now is, and whether an attempt was under way."""

    task: Task
    stopped: bool


async def require_task(reader: Reader, ref: TaskRef) -> Task:
    """Returns the task ``ref`` names or raises NotFound."""
    task = await reader.get_task(ref)
    if task is None:
        raise NotFound(f"There is no task {ref}.")
    return task


async def require_agent(reader: Reader, name: str) -> Agent:
    """Returns the enabled agent called ``name`` or raises saying why it cannot take work."""
    agent = await reader.get_agent(name)
    if agent is None:
        raise NotFound(f"There is no agent named `{name}`; `/task-admin agent list` shows them.")
    if not agent.enabled:
        raise InvalidInput(f"Agent `{name}` is disabled and cannot take tasks.")
    return agent


class Board:
    """Runs the use cases against a store, with an injected clock and key source."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: LeasePolicy,
        new_key: Callable[[], str] = new_key,
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
                if first is not None:
                    return task  # sent again: the first call's move was made
                check_claim(task, actor.id, epoch)
                book = await load_policy_book(unit, self._policy)
                check_agent_may_set(status, note, book.agents_may_close(task.channel_id))
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
            change = Change(
                fields, [(kind, data)], dispatch=redispatch, progress=True, escalate=escalate
            )
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
    ) -> "Stopped":
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
            return Stopped(await self._stop(unit, task, by, streams, now), stopped=True)

    async def stop_thread(
        self, channel_id: str, thread_ts: str, by: str, streams: Sequence[str] = ()
    ) -> "Stopped":
        """``stop_task`` for the task living in the thread (``channel_id``, ``thread_ts``)."""
        async with self._store.read() as reader:
            task = await reader.get_task_by_thread(channel_id, thread_ts)
        if task is None:
            raise NotFound("There is no task in this thread.")
        return await self.stop_task(task.ref, by, streams, in_channel=channel_id)

    async def _stop(
        self, unit: Unit, task: Task, by: str, streams: Sequence[str], now: datetime
    ) -> Task:
        [epoch] = await unit.next_epochs(1)
        expect: TaskFields = {
            "status": task.status,
            "lease_epoch": task.lease_epoch,
            "claimed_by": task.claimed_by,
        }
        fields: TaskFields = {
            "status": TaskStatus.BLOCKED,
            "claimed_by": None,
            "lease_epoch": epoch,
            "awaiting_input_since": None,
        }
        stopped = await unit.compare_and_set(task.id, expect, fields, now)
        if stopped is None:
            raise Conflict(f"{task.ref} changed while it was being stopped; please try again.")
        note = f"stopped by <@{by}>"
        attempt = {"attempt": task.attempts, "epoch": task.lease_epoch, "agent": task.claimed_by}
        actor = Actor.user(by)
        await unit.append_events(
            [
                NewEvent(task.id, EventKind.STOPPED, actor, now, attempt | {"streams": [*streams]}),
                NewEvent(
                    task.id,
                    EventKind.BLOCKED,
                    actor,
                    now,
                    {"from": task.status.value, "to": TaskStatus.BLOCKED.value, "note": note},
                ),
            ]
        )
        assert task.claimed_by is not None  # leased
        await unit.enqueue_wakeups([(task.id, task.claimed_by, WakeReason.STOP, epoch)], now)
        effects = [outbox.stream_stop(stopped, ts, self._new_key()) for ts in streams]
        effects.append(outbox.notice(stopped, outbox.Notice.STOPPED, self._new_key(), by=by))
        effects.append(outbox.card_update(stopped, self._new_key()))
        await unit.enqueue(effects, now)
        return stopped

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

    async def renew_lease(self, task_id: int, author: str) -> bool:
        """Counts a post by ``author`` as progress if it holds the claim; else does nothing."""
        async with self._transaction() as unit:
            return await unit.renew_lease(task_id, author, self._clock())

    async def record_thread_message(
        self, message: ThreadMessage, agent: str | None, renew: bool = True
    ) -> bool:
        """Stores a thread message once; what it means depends on who wrote it.

        ``agent`` names the author when it is a registered agent: the claim holder's post renews
        the lease (unless ``renew`` is off, for posts found late). A person's post (``agent`` is
        None) wakes the claim holder and ends any wait for input. Returns False for a message
        already stored, which is then not counted again.
        """
        async with self._transaction() as unit:
            if not await unit.record_message(message):
                return False
            now = self._clock()
            if agent is not None:
                if renew:
                    await unit.renew_lease(message.task_id, agent, now)
            else:
                await self._person_spoke(unit, message.task_id, now)
        return True

    async def record_thread_replies(self, replies: Sequence[IncomingReply]) -> list[ThreadReply]:
        """Posts seen in threads, in one transaction whatever their number.

        Each is stored once (unique on channel and ts) if its thread is a task's. Per task, a new
        post by the agent holding the claim renews the lease, and a new post by a person (anyone
        who is not a registered agent) wakes the agent and ends a wait for input. Returns what
        was stored; redeliveries and posts outside task threads are left out.
        """
        async with self._transaction() as unit:
            now = self._clock()
            threads = {(r.channel_id, r.thread_ts) for r in replies}
            by_thread = {
                (t.channel_id, t.thread_ts): t for t in await unit.get_tasks_by_threads(threads)
            }
            found = {
                (r.channel_id, r.ts): (r, by_thread[(r.channel_id, r.thread_ts)])
                for r in replies
                if (r.channel_id, r.thread_ts) in by_thread
            }
            messages = [
                ThreadMessage(task.id, r.channel_id, r.ts, r.author, r.text, now)
                for r, task in found.values()
            ]
            stored = [found[key] for key in sorted(await unit.record_messages(messages))]
            if not stored:
                return []
            agents = await unit.find_agents_by_slack_ids(
                {r.user_id for r, _ in stored if r.user_id},
                {r.bot_id for r, _ in stored if r.bot_id},
            )
            holders = {i for i, (r, task) in enumerate(stored) if _by_holder(r, task, agents)}
            people = {i for i, (r, _) in enumerate(stored) if not any(_wrote(a, r) for a in agents)}
            renewed = await self._react_to_posts(
                unit, [stored[i][1] for i in holders], [stored[i][1] for i in people], now
            )
        return [
            ThreadReply(task.id, i in holders and task.id in renewed)
            for i, (_, task) in enumerate(stored)
        ]

    async def _react_to_posts(
        self, unit: Unit, held: Sequence[Task], spoken_to: Sequence[Task], now: datetime
    ) -> set[int]:
        """Renews the leases of ``held`` (their holder posted) and wakes the holders of
        ``spoken_to`` (a person posted); returns the ids of the tasks whose lease was renewed."""
        renewed = set()
        for task in sorted({t.id: t for t in held}.values(), key=lambda t: t.id):
            if task.claimed_by and await unit.renew_lease(task.id, task.claimed_by, now):
                renewed.add(task.id)
        for task_id in sorted({t.id for t in spoken_to}):
            await self._person_spoke(unit, task_id, now)
        return renewed

    async def _person_spoke(self, unit: Unit, task_id: int, now: datetime) -> None:
        """Wakes the claim holder; a wait for input ends and the lease starts afresh."""
        task = await unit.get_task_by_id(task_id)
        if task is None or task.claimed_by is None:
            return
        wakeup = (task.id, task.claimed_by, WakeReason.MESSAGE, task.lease_epoch)
        await unit.enqueue_wakeups([wakeup], now)
        if task.awaiting_input_since is None:
            return
        resumed = await unit.compare_and_set(
            task.id,
            {"lease_epoch": task.lease_epoch, "claimed_by": task.claimed_by},
            {"awaiting_input_since": None, "last_progress_at": now},
            now,
        )
        if resumed is not None:
            event = NewEvent(task.id, EventKind.RESUMED, Actor.system("thread"), now, {})
            await unit.append_events([event])
            await unit.enqueue([outbox.card_update(resumed, self._new_key())], now)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Unit]:
        """One unit of work; if it queued work, whoever waits for work is told once it commits.
        (A lease renewed by a post, the commonest write, queues none and wakes no one.)"""
        async with self._store.transaction() as unit:
            yield unit
        if unit.queued:
            self._notify(frozenset(unit.queued))

    async def policies(self) -> PolicyBook:
        """The global lease policy and every channel's overrides."""
        async with self._store.read() as reader:
            return await load_policy_book(reader, self._policy)

    async def set_channel_policy(
        self,
        channel_id: str,
        by: str,
        lease_ttl_s: float | None,
        max_attempts: int | None,
        agents_may_close: bool | None = None,
        closers: Closers | None = None,
    ) -> PolicyBook:
        """Overrides the TTL, attempts, agents' closing and who closes tasks in ``channel_id``;
        None leaves a value as it is."""
        if lease_ttl_s is not None and lease_ttl_s <= 0:
            raise InvalidInput("The TTL must be a positive number of seconds.")
        if lease_ttl_s is not None and lease_ttl_s > MAX_LEASE_TTL_S:
            raise InvalidInput(f"The TTL can be at most {MAX_LEASE_TTL_S:.0f} seconds (a year).")
        if max_attempts is not None and max_attempts < 1:
            raise InvalidInput("Attempts must be at least 1.")
        if max_attempts is not None and max_attempts > MAX_DISPATCH_ATTEMPTS:
            raise InvalidInput(f"Attempts can be at most {MAX_DISPATCH_ATTEMPTS}.")
        async with self._transaction() as unit:
            unit.queued.add(Queued.DIRECTORY)
            book = await load_policy_book(unit, self._policy)
            current = book.channels.get(channel_id, ChannelPolicy(channel_id))
            merged = ChannelPolicy(
                channel_id,
                current.lease_ttl_s if lease_ttl_s is None else lease_ttl_s,
                current.max_dispatch_attempts if max_attempts is None else max_attempts,
                current.agents_may_close if agents_may_close is None else agents_may_close,
                current.closers if closers is None else closers.value,
            )
            await unit.set_channel_policy(merged, by, self._clock())
            return await load_policy_book(unit, self._policy)

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


def check_agent_may_set(status: TaskStatus, note: str | None, may_close: bool) -> None:
    """Agents move work up to in_review, or to blocked with a reason; people close and cancel."""
    if status == TaskStatus.CANCELED:
        raise IllegalTransition("Agents cannot cancel tasks; a person can.")
    if status == TaskStatus.DONE and not may_close:
        raise IllegalTransition(
            "Only a person can mark a task done in this channel; move it to in_review instead."
        )
    if status == TaskStatus.BLOCKED and not (note and note.strip()):
        raise InvalidInput("Say why the task is blocked: pass a `note` with the reason.")


def check_claim(task: Task, agent: str, epoch: int | None) -> None:
    """Raises unless ``agent`` holds the claim on ``task`` at ``epoch`` (when given). A call
    fenced with an epoch that was replaced (a re-dispatch, a reassignment, a Stop) is refused as
    superseded first, whoever holds the claim now."""
    if epoch is not None and epoch != task.lease_epoch and task.assignee == agent:
        raise Superseded(
            f"superseded: epoch {epoch} of {task.ref} was replaced by epoch {task.lease_epoch}; "
            "this run no longer holds the task."
        )
    if task.claimed_by != agent:
        if task.assignee == agent:
            raise NotClaimHolder(
                f"{task.ref} is {task.status} and its claim was cleared; "
                "a person must reassign or unblock it before you can change it."
            )
        raise NotClaimHolder(
            f"{task.ref} is not claimed by `{agent}`; only its assignee can change it."
        )
    if epoch is not None and epoch != task.lease_epoch:
        raise Superseded(
            f"superseded: epoch {epoch} of {task.ref} was replaced by epoch {task.lease_epoch}; "
            "this run no longer holds the task."
        )
