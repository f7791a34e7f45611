"""Writes inside one transaction: every task change is a compare-and-set with RETURNING."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.agents import Agent, AgentKind, AgentSettings
from bot.outbox import OutboxMessage, OutboxState
from bot.policy import ChannelPolicy
from bot.ports.tasks import NewTask, TaskFields
from bot.signal import Queued
from bot.status import TaskStatus
from bot.task import NewEvent, Task, ThreadMessage
from store.agent_work import AgentWorkWrites
from store.dialect import dialect_insert
from store.outbox import OutboxReviewWrites
from store.reader import SqlReader
from store.rows import task_from_row
from store.schema import (
    LEASED_SQL,
    agent_secrets,
    agents,
    channel_counters,
    channel_policies,
    fencing_tokens,
    outbox,
    task_events,
    task_messages,
    tasks,
)
from store.tool_requests import ToolRequestWrites
from store.tool_servers import ToolServerWrites
from store.workers import WorkerWrites


def _column_values(fields: TaskFields) -> dict[str, Any]:
    return {
        name: (value.value if isinstance(value, TaskStatus) else value)
        for name, value in fields.items()
    }


class SqlUnit(
    SqlReader,
    AgentWorkWrites,
    OutboxReviewWrites,
    WorkerWrites,
    ToolServerWrites,
    ToolRequestWrites,
):
    """Implements ``bot.ports.Unit`` over a connection inside a write transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        super().__init__(connection)
        self._db = connection
        self.queued: set[Queued] = set()

    async def insert_task(self, new: NewTask) -> Task:
        number = await self._next_number(new["channel_id"])
        query = (
            tasks.insert()
            .values(
                channel_id=new["channel_id"],
                number=number,
                title=new["title"],
                description=new["description"],
                thread_ts=new["thread_ts"],
                status=TaskStatus.TODO.value,
                created_by=new["created_by"],
                created_at=new["at"],
                updated_at=new["at"],
            )
            .returning(*tasks.c)
        )
        return task_from_row((await self._db.execute(query)).one())

    async def _next_number(self, channel_id: str) -> int:
        """Allocates the channel's next task number atomically, safe against racing creators."""
        insert = dialect_insert(self._db, channel_counters)
        query = (
            insert.values(channel_id=channel_id, last_number=1)
            .on_conflict_do_update(
                index_elements=[channel_counters.c.channel_id],
                set_={"last_number": channel_counters.c.last_number + 1},
            )
            .returning(channel_counters.c.last_number)
        )
        return int((await self._db.execute(query)).scalar_one())

    async def compare_and_set(
        self, task_id: int, expect: TaskFields, changes: TaskFields, at: datetime
    ) -> Task | None:
        guards = [tasks.c.id == task_id]
        for name, value in _column_values(expect).items():
            column = tasks.c[name]
            guards.append(column.is_(None) if value is None else column == value)
        query = (
            update(tasks)
            .where(and_(*guards))
            .values(**_column_values(changes), updated_at=at)
            .returning(*tasks.c)
        )
        row = (await self._db.execute(query)).first()
        return task_from_row(row) if row else None

    async def renew_lease(self, task_id: int, agent: str, at: datetime) -> bool:
        query = (
            update(tasks)
            .where(
                tasks.c.id == task_id,
                tasks.c.claimed_by == agent,
                or_(tasks.c.last_progress_at.is_(None), tasks.c.last_progress_at < at),
            )
            .values(last_progress_at=at)
        )
        return (await self._db.execute(query)).rowcount == 1

    async def next_epochs(self, count: int) -> list[int]:
        query = (
            update(fencing_tokens)
            .where(fencing_tokens.c.id == 1)
            .values(last=fencing_tokens.c.last + count)
            .returning(fencing_tokens.c.last)
        )
        last = int((await self._db.execute(query)).scalar_one())
        return list(range(last - count + 1, last + 1))

    async def redispatch_stale(
        self, stale: Sequence[Task], cutoff: datetime, at: datetime
    ) -> list[Task]:
        if not stale:
            return []
        # Every task gets a fresh epoch from the one counter (those not acted on leave a gap).
        epochs = dict(zip((t.id for t in stale), await self.next_epochs(len(stale)), strict=True))
        changes = {
            "attempts": tasks.c.attempts + 1,
            "lease_epoch": case(epochs, value=tasks.c.id),
            "last_progress_at": at,
            "updated_at": at,
        }
        return await self._act_on_stale(stale, cutoff, changes)

    async def block_stale(
        self, stale: Sequence[Task], cutoff: datetime, at: datetime
    ) -> list[Task]:
        changes = {"status": TaskStatus.BLOCKED.value, "claimed_by": None, "updated_at": at}
        return await self._act_on_stale(stale, cutoff, changes)

    async def _act_on_stale(
        self, stale: Sequence[Task], cutoff: datetime, changes: dict[str, Any]
    ) -> list[Task]:
        """Applies ``changes`` to each task whose id, attempts and progress are as read.

        One statement for the batch; the row-value IN is the per-row compare-and-set, and the
        stale predicate is repeated so a task renewed since it was read is left alone.
        """
        if not stale:
            return []
        read = [(t.id, t.attempts, t.last_progress_at) for t in stale]
        query = (
            update(tasks)
            .where(
                # The plain id list lets SQLite find the rows by primary key; without it the
                # planner drives the row-value match from the status index, a scan that grows
                # with every open task instead of with the stale set.
                tasks.c.id.in_([t.id for t in stale]),
                tuple_(tasks.c.id, tasks.c.attempts, tasks.c.last_progress_at).in_(read),
                text(LEASED_SQL),
                tasks.c.last_progress_at < cutoff,
                tasks.c.awaiting_input_since.is_(None),
            )
            .values(**changes)
            .returning(
                tasks.c.id,
                tasks.c.status,
                tasks.c.claimed_by,
                tasks.c.attempts,
                tasks.c.lease_epoch,
                tasks.c.last_progress_at,
                tasks.c.updated_at,
            )
        )
        # Only the changed columns come back; the rest is as read (the compare-and-set matched
        # it), which saves decoding every column of every acted row.
        # (Built from the read task's fields rather than by dataclasses.replace, which inspects
        # the class on every call: a tick acts on up to 10k tasks.)
        read_by_id = {t.id: t for t in stale}
        return [
            Task(
                **vars(read_by_id[row.id])
                | {
                    "status": TaskStatus(row.status),
                    "claimed_by": row.claimed_by,
                    "attempts": row.attempts,
                    "lease_epoch": row.lease_epoch,
                    "last_progress_at": row.last_progress_at,
                    "updated_at": row.updated_at,
                }
            )
            for row in await self._db.execute(query)
        ]

    async def append_events(self, events: Sequence[NewEvent]) -> None:
        if not events:
            return
        rows = [
            {
                "task_id": e.task_id,
                "kind": e.kind.value,
                "actor": str(e.actor),
                "at": e.at,
                "data": e.data,
            }
            for e in events
        ]
        await self._db.execute(task_events.insert(), rows)

    async def enqueue(self, messages: Sequence[OutboxMessage], at: datetime) -> None:
        if not messages:
            return
        self.queued.add(Queued.OUTBOX)
        rows = [
            {
                "key": m.key,
                "task_id": m.task_id,
                "kind": m.kind.value,
                "payload": m.payload,
                "state": OutboxState.PENDING.value,
                "available_at": at,
                "created_at": at,
            }
            for m in messages
        ]
        await self._db.execute(outbox.insert(), rows)

    async def record_card(self, task_id: int, card_ts: str) -> None:
        query = (
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(card_ts=card_ts, thread_ts=func.coalesce(tasks.c.thread_ts, card_ts))
        )
        await self._db.execute(query)

    async def set_channel_policy(self, policy: ChannelPolicy, by: str, at: datetime) -> None:
        values = {
            "lease_ttl_s": policy.lease_ttl_s,
            "max_dispatch_attempts": policy.max_dispatch_attempts,
            "agents_may_close": policy.agents_may_close,
            "closers": policy.closers,
            "updated_by": by,
            "updated_at": at,
        }
        query = (
            dialect_insert(self._db, channel_policies)
            .values(channel_id=policy.channel_id, **values)
            .on_conflict_do_update(index_elements=["channel_id"], set_=values)
        )
        await self._db.execute(query)

    async def record_message(self, message: ThreadMessage) -> bool:
        query = (
            dialect_insert(self._db, task_messages)
            .values(
                task_id=message.task_id,
                channel_id=message.channel_id,
                ts=message.ts,
                author=message.author,
                text=message.text,
                at=message.at,
            )
            .on_conflict_do_nothing(index_elements=["channel_id", "ts"])
        )
        return bool((await self._db.execute(query)).rowcount == 1)

    async def save_message(self, message: ThreadMessage) -> None:
        query = dialect_insert(self._db, task_messages).values(
            task_id=message.task_id,
            channel_id=message.channel_id,
            ts=message.ts,
            author=message.author,
            text=message.text,
            at=message.at,
        )
        await self._db.execute(
            query.on_conflict_do_update(
                index_elements=["channel_id", "ts"], set_={"text": message.text}
            )
        )

    async def record_messages(self, messages: Sequence[ThreadMessage]) -> set[tuple[str, str]]:
        if not messages:
            return set()
        rows = [
            {
                "task_id": m.task_id,
                "channel_id": m.channel_id,
                "ts": m.ts,
                "author": m.author,
                "text": m.text,
                "at": m.at,
            }
            for m in messages
        ]
        # One statement with the rows as parameters (executemany): SQLAlchemy compiles it once
        # and sends it as multi-row INSERTs, however many rows a batch has.
        query = (
            dialect_insert(self._db, task_messages)
            .on_conflict_do_nothing(index_elements=["channel_id", "ts"])
            .returning(task_messages.c.channel_id, task_messages.c.ts)
        )
        return {(row.channel_id, row.ts) for row in await self._db.execute(query, rows)}

    async def upsert_agent(
        self,
        name: str,
        kind: AgentKind,
        display_name: str,
        slack_user_id: str | None,
        slack_bot_id: str | None,
        settings: AgentSettings,
        at: datetime,
    ) -> Agent:
        values = {
            "kind": kind.value,
            "display_name": display_name,
            "slack_user_id": slack_user_id,
            "slack_bot_id": slack_bot_id,
            "settings": settings.to_json(),
            "updated_at": at,
        }
        # A new agent starts enabled; re-registering one leaves ``enabled`` as it is, so a
        # disabled agent stays disabled until an admin enables it.
        query = (
            dialect_insert(self._db, agents)
            .values(name=name, created_at=at, enabled=True, **values)
            .on_conflict_do_update(index_elements=["name"], set_=values)
        )
        await self._db.execute(query)
        agent = await self.get_agent(name)
        assert agent is not None  # just written in this transaction
        return agent

    async def set_agent_enabled(self, name: str, enabled: bool, at: datetime) -> bool:
        query = update(agents).where(agents.c.name == name).values(enabled=enabled, updated_at=at)
        return (await self._db.execute(query)).rowcount == 1

    async def delete_agent(self, name: str) -> bool:
        return (await self._db.execute(delete(agents).where(agents.c.name == name))).rowcount == 1

    async def set_agent_secret(
        self, name: str, secret: str, ciphertext: bytes, at: datetime
    ) -> bool:
        agent_id = (
            await self._db.execute(select(agents.c.id).where(agents.c.name == name))
        ).scalar_one_or_none()
        if agent_id is None:
            return False
        query = (
            dialect_insert(self._db, agent_secrets)
            .values(agent_id=agent_id, name=secret, ciphertext=ciphertext, updated_at=at)
            .on_conflict_do_update(
                index_elements=["agent_id", "name"],
                set_={"ciphertext": ciphertext, "updated_at": at},
            )
        )
        await self._db.execute(query)
        return True

    async def rewrite_agent_secret(
        self, name: str, secret: str, expected: bytes, ciphertext: bytes, at: datetime
    ) -> bool:
        agent_ids = select(agents.c.id).where(agents.c.name == name).scalar_subquery()
        query = (
            update(agent_secrets)
            .where(
                agent_secrets.c.agent_id == agent_ids,
                agent_secrets.c.name == secret,
                agent_secrets.c.ciphertext == expected,
            )
            .values(ciphertext=ciphertext, updated_at=at)
        )
        return (await self._db.execute(query)).rowcount == 1

    async def delete_agent_secret(self, name: str, secret: str) -> bool:
        agent_ids = select(agents.c.id).where(agents.c.name == name).scalar_subquery()
        query = delete(agent_secrets).where(
            agent_secrets.c.agent_id == agent_ids, agent_secrets.c.name == secret
        )
        return (await self._db.execute(query)).rowcount == 1
