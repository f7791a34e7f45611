"""Read queries over one connection, mapping rows to domain values once."""

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.agents import Agent
from bot.outbox import OPEN_STATES, OutboxState
from bot.policy import ChannelPolicy
from bot.ports.agents import StoredSecret
from bot.ports.tasks import BoardStats
from bot.status import TERMINAL_STATUSES, TaskStatus
from bot.task import Actor, EventKind, Task, TaskEvent, TaskRef, ThreadMessage
from store.agent_work import AgentWorkReads
from store.outbox import OutboxReads
from store.rows import agent_from_row, task_from_row
from store.schema import (
    LEASED_SQL,
    agent_secrets,
    agents,
    channel_policies,
    task_events,
    task_messages,
    tasks,
)
from store.tool_servers import ToolServerReads

#: ``api_key_configured`` as a column, so listing agents is one query.
_HAS_KEY = (
    select(agent_secrets.c.agent_id)
    .where(and_(agent_secrets.c.agent_id == agents.c.id, agent_secrets.c.name == "api_key"))
    .exists()
    .label("api_key_configured")
)


class SqlReader(AgentWorkReads, OutboxReads, ToolServerReads):
    """Implements ``bot.ports.Reader`` over one open connection."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def get_task(self, ref: TaskRef) -> Task | None:
        query = select(tasks).where(
            tasks.c.channel_id == ref.channel_id, tasks.c.number == ref.number
        )
        row = (await self._db.execute(query)).first()
        return task_from_row(row) if row else None

    async def get_task_by_id(self, task_id: int) -> Task | None:
        row = (await self._db.execute(select(tasks).where(tasks.c.id == task_id))).first()
        return task_from_row(row) if row else None

    async def get_tasks_by_ids(self, task_ids: Collection[int]) -> list[Task]:
        if not task_ids:
            return []
        query = select(tasks).where(tasks.c.id.in_(sorted(task_ids)))
        return [task_from_row(row) for row in await self._db.execute(query)]

    async def get_task_by_thread(self, channel_id: str, thread_ts: str) -> Task | None:
        query = select(tasks).where(
            tasks.c.channel_id == channel_id, tasks.c.thread_ts == thread_ts
        )
        row = (await self._db.execute(query)).first()
        return task_from_row(row) if row else None

    async def list_tasks(
        self, *, status: TaskStatus | None = None, channel_id: str | None = None
    ) -> list[Task]:
        query = select(tasks).order_by(tasks.c.channel_id, tasks.c.number)
        if status is not None:
            query = query.where(tasks.c.status == status.value)
        if channel_id is not None:
            query = query.where(tasks.c.channel_id == channel_id)
        return [task_from_row(row) for row in await self._db.execute(query)]

    async def list_tasks_for_viewer(
        self, user_id: str, channel_ids: Sequence[str], finished_since: datetime, limit: int
    ) -> list[Task]:
        mine = or_(
            tasks.c.assigned_by == user_id,
            tasks.c.created_by == f"user:{user_id}",
            tasks.c.channel_id.in_(list(channel_ids)),
        )
        finished = tasks.c.status.in_([s.value for s in TERMINAL_STATUSES])
        latest = select(tasks).order_by(tasks.c.updated_at.desc()).limit(limit)
        # Two queries, so a busy week of finished tasks never crowds out the open ones.
        open_now = await self._db.execute(latest.where(mine, ~finished))
        recent = await self._db.execute(
            latest.where(mine, finished, tasks.c.updated_at >= finished_since)
        )
        return [task_from_row(row) for row in [*open_now, *recent]]

    async def list_events(self, task_id: int) -> list[TaskEvent]:
        query = (
            select(task_events).where(task_events.c.task_id == task_id).order_by(task_events.c.id)
        )
        return [
            TaskEvent(
                id=row.id,
                task_id=row.task_id,
                kind=EventKind(row.kind),
                actor=Actor.parse(row.actor),
                at=row.at,
                data=row.data,
            )
            for row in await self._db.execute(query)
        ]

    async def list_messages(self, task_id: int) -> list[ThreadMessage]:
        query = (
            select(task_messages)
            .where(task_messages.c.task_id == task_id)
            .order_by(task_messages.c.ts)
        )
        return [
            ThreadMessage(
                task_id=row.task_id,
                channel_id=row.channel_id,
                ts=row.ts,
                author=row.author,
                text=row.text,
                at=row.at,
            )
            for row in await self._db.execute(query)
        ]

    async def get_stale_tasks(self, cutoff: datetime, limit: int) -> list[Task]:
        query = (
            select(tasks)
            .where(
                text(LEASED_SQL),
                tasks.c.last_progress_at < cutoff,
                tasks.c.awaiting_input_since.is_(None),
            )
            .order_by(tasks.c.last_progress_at)
            .limit(limit)
        )
        return [task_from_row(row) for row in await self._db.execute(query)]

    async def count_stale_tasks(
        self, cutoff: datetime, channel_cutoffs: Mapping[str, datetime] | None = None
    ) -> int:
        overrides = channel_cutoffs or {}
        lapsed = [
            and_(tasks.c.channel_id == channel, tasks.c.last_progress_at < at)
            for channel, at in sorted(overrides.items())
        ]
        elsewhere = tasks.c.last_progress_at < cutoff
        if overrides:
            elsewhere = and_(tasks.c.channel_id.not_in(sorted(overrides)), elsewhere)
        query = select(func.count()).where(
            text(LEASED_SQL),
            or_(elsewhere, *lapsed),
            tasks.c.awaiting_input_since.is_(None),
        )
        return int((await self._db.execute(query.select_from(tasks))).scalar_one())

    async def board_stats(self) -> BoardStats:
        counts = await self._db.execute(
            select(tasks.c.status, func.count()).group_by(tasks.c.status)
        )
        by_status = {status: int(n) for status, n in counts}
        outbox_counts = await self.count_outbox()
        return {
            "by_status": by_status,
            "outbox_backlog": sum(outbox_counts[state] for state in OPEN_STATES),
            "outbox_dead": outbox_counts[OutboxState.DEAD],
        }

    async def find_agent_by_slack_id(self, user_id: str | None, bot_id: str | None) -> Agent | None:
        found = await self.find_agents_by_slack_ids(
            [user_id] if user_id else [], [bot_id] if bot_id else []
        )
        return found[0] if found else None

    async def find_agents_by_slack_ids(
        self, user_ids: Collection[str], bot_ids: Collection[str]
    ) -> list[Agent]:
        matches = []
        if user_ids:
            matches.append(agents.c.slack_user_id.in_(sorted(user_ids)))
        if bot_ids:
            matches.append(agents.c.slack_bot_id.in_(sorted(bot_ids)))
        if not matches:
            return []
        query = select(agents, _HAS_KEY).where(or_(*matches)).order_by(agents.c.id)
        return [
            agent_from_row(row, bool(row.api_key_configured))
            for row in await self._db.execute(query)
        ]

    async def get_tasks_by_threads(self, threads: Collection[tuple[str, str]]) -> list[Task]:
        if not threads:
            return []
        pairs = tuple_(tasks.c.channel_id, tasks.c.thread_ts).in_(sorted(threads))
        return [task_from_row(row) for row in await self._db.execute(select(tasks).where(pairs))]

    async def list_channel_policies(self) -> list[ChannelPolicy]:
        rows = await self._db.execute(select(channel_policies))
        return [
            ChannelPolicy(
                row.channel_id,
                row.lease_ttl_s,
                row.max_dispatch_attempts,
                row.agents_may_close,
                row.closers,
            )
            for row in rows
        ]

    async def get_agent(self, name: str) -> Agent | None:
        row = (
            await self._db.execute(select(agents, _HAS_KEY).where(agents.c.name == name))
        ).first()
        return agent_from_row(row, bool(row.api_key_configured)) if row else None

    async def list_agents(self) -> list[Agent]:
        rows = await self._db.execute(select(agents, _HAS_KEY).order_by(agents.c.name))
        return [agent_from_row(row, bool(row.api_key_configured)) for row in rows]

    async def get_agent_secret(self, name: str, secret: str) -> bytes | None:
        query = (
            select(agent_secrets.c.ciphertext)
            .join(agents, agents.c.id == agent_secrets.c.agent_id)
            .where(agents.c.name == name, agent_secrets.c.name == secret)
        )
        value = (await self._db.execute(query)).scalar_one_or_none()
        return bytes(value) if value is not None else None

    async def list_agent_secrets(self) -> list[StoredSecret]:
        query = (
            select(agents.c.name, agent_secrets.c.name.label("secret"), agent_secrets.c.ciphertext)
            .join(agents, agents.c.id == agent_secrets.c.agent_id)
            .order_by(agents.c.name, agent_secrets.c.name)
        )
        return [
            StoredSecret(row.name, row.secret, bytes(row.ciphertext))
            for row in await self._db.execute(query)
        ]
