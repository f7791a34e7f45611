"""Queries for agents at work: wake-ups, read cursors, usage, artifacts and MCP tokens."""

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.agents import Agent
from bot.session import SessionStatus
from bot.signal import Queued
from bot.status import TERMINAL_STATUSES
from bot.task import Task
from bot.work import Artifact, TaskUsage, Usage, WakeReason, Wakeup
from store.dialect import dialect_insert
from store.rows import agent_from_row, task_from_row
from store.schema import (
    agent_cursors,
    agent_sessions,
    agent_tokens,
    agent_wakeups,
    agents,
    artifacts,
    task_usage,
    tasks,
)


def _artifact(row: Row[Any]) -> Artifact:
    m = row._mapping
    return Artifact(
        m["id"],
        m["task_id"],
        m["name"],
        m["kind"],
        m["uri"],
        m["content"],
        m["created_by"],
        m["created_at"],
    )


def _wakeup(row: Row[Any]) -> Wakeup:
    m = row._mapping
    return Wakeup(
        m["id"], m["task_id"], m["agent"], WakeReason(m["reason"]), m["epoch"], m["created_at"]
    )


class AgentWorkReads:
    """Read queries; mixed into the reader."""

    _db: AsyncConnection

    async def list_tasks_claimed_by(self, agent: str) -> list[Task]:
        query = (
            select(tasks)
            .where(
                tasks.c.claimed_by == agent,
                tasks.c.status.not_in([s.value for s in TERMINAL_STATUSES]),
            )
            .order_by(tasks.c.id)
        )
        return [task_from_row(row) for row in await self._db.execute(query)]

    async def list_artifacts(self, task_id: int) -> list[Artifact]:
        query = select(artifacts).where(artifacts.c.task_id == task_id).order_by(artifacts.c.id)
        return [_artifact(row) for row in await self._db.execute(query)]

    async def get_artifact(self, artifact_id: int) -> Artifact | None:
        row = (
            await self._db.execute(select(artifacts).where(artifacts.c.id == artifact_id))
        ).first()
        return _artifact(row) if row else None

    async def count_artifacts(self, task_id: int) -> int:
        query = select(func.count()).select_from(artifacts).where(artifacts.c.task_id == task_id)
        return int((await self._db.execute(query)).scalar_one())

    async def get_cursor(self, agent: str, task_id: int) -> str | None:
        query = select(agent_cursors.c.last_ts).where(
            agent_cursors.c.agent == agent, agent_cursors.c.task_id == task_id
        )
        return (await self._db.execute(query)).scalar_one_or_none()

    async def get_usage(self, task_id: int) -> TaskUsage | None:
        row = (
            await self._db.execute(select(task_usage).where(task_usage.c.task_id == task_id))
        ).first()
        if row is None:
            return None
        usage = Usage(
            row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_creation_tokens
        )
        return TaskUsage(row.steps, usage)

    async def run_pending(self, task_id: int, epoch: int) -> bool:
        query = select(agent_wakeups.c.id).where(
            agent_wakeups.c.done_at.is_(None),
            agent_wakeups.c.task_id == task_id,
            agent_wakeups.c.epoch == epoch,
        )
        return (await self._db.execute(query.limit(1))).first() is not None

    async def get_session(self, task_id: int) -> SessionStatus | None:
        query = select(agent_sessions.c.status).where(agent_sessions.c.task_id == task_id)
        status = (await self._db.execute(query)).scalar()
        return SessionStatus(status) if status else None

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None:
        query = (
            select(agents)
            .join(agent_tokens, agent_tokens.c.agent_id == agents.c.id)
            .where(agent_tokens.c.token_hash == token_hash, agent_tokens.c.revoked_at.is_(None))
        )
        row = (await self._db.execute(query)).first()
        return agent_from_row(row, api_key_configured=False) if row else None

    async def list_waiting_tasks(self, cutoff: datetime) -> list[Task]:
        """Claimed tasks whose agent has waited for a person since before ``cutoff``."""
        query = (
            select(tasks)
            .where(tasks.c.awaiting_input_since < cutoff, tasks.c.claimed_by.is_not(None))
            .order_by(tasks.c.awaiting_input_since)
        )
        return [task_from_row(row) for row in await self._db.execute(query)]


class AgentWorkWrites:
    """Writes; mixed into the unit of work."""

    async def record_session(
        self, task_id: int, status: SessionStatus, at: datetime, *, create: bool = True
    ) -> None:
        """Records what the task's agent session was told (or, after a Stop, shows)."""
        changes = {"status": status.value, "updated_at": at}
        if not create:
            query = update(agent_sessions).where(agent_sessions.c.task_id == task_id)
            await self._db.execute(query.values(changes))
            return
        insert = dialect_insert(self._db, agent_sessions).values({"task_id": task_id} | changes)
        await self._db.execute(
            insert.on_conflict_do_update(index_elements=["task_id"], set_=changes)
        )

    _db: AsyncConnection
    queued: set[Queued]

    async def insert_artifact(
        self,
        task_id: int,
        name: str,
        kind: str,
        uri: str | None,
        content: str | None,
        by: str,
        at: datetime,
    ) -> Artifact:
        query = (
            artifacts.insert()
            .values(
                task_id=task_id,
                name=name,
                kind=kind,
                uri=uri,
                content=content,
                created_by=by,
                created_at=at,
            )
            .returning(*artifacts.c)
        )
        return _artifact((await self._db.execute(query)).one())

    async def advance_cursor(self, agent: str, task_id: int, last_ts: str) -> None:
        """Moves the agent's read cursor forward to ``last_ts``; never backwards."""
        current = await self._db.execute(
            select(agent_cursors.c.last_ts).where(
                agent_cursors.c.agent == agent, agent_cursors.c.task_id == task_id
            )
        )
        previous = current.scalar_one_or_none()
        if previous is None:
            await self._db.execute(
                agent_cursors.insert().values(agent=agent, task_id=task_id, last_ts=last_ts)
            )
        elif float(last_ts) > float(previous):
            await self._db.execute(
                update(agent_cursors)
                .where(agent_cursors.c.agent == agent, agent_cursors.c.task_id == task_id)
                .values(last_ts=last_ts)
            )

    async def add_usage(self, task_id: int, usage: Usage, at: datetime) -> None:
        row = {
            "steps": 1,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_creation_tokens": usage.cache_creation_tokens,
        }
        query = (
            dialect_insert(self._db, task_usage)
            .values(task_id=task_id, updated_at=at, **row)
            .on_conflict_do_update(
                index_elements=["task_id"],
                set_={name: task_usage.c[name] + value for name, value in row.items()}
                | {"updated_at": at},
            )
        )
        await self._db.execute(query)

    async def enqueue_wakeups(
        self, wakeups: Sequence[tuple[int, str, WakeReason, int]], at: datetime
    ) -> None:
        rows = [
            {"task_id": t, "agent": a, "reason": r.value, "epoch": e, "created_at": at}
            for t, a, r, e in wakeups
        ]
        if rows:
            self.queued.add(Queued.WAKEUPS)
            await self._db.execute(agent_wakeups.insert(), rows)

    async def claim_wakeups(
        self, worker: str, agent_names: Sequence[str], limit: int
    ) -> list[Wakeup]:
        """Claims unclaimed open wake-ups of the given (built-in) agents; several runners may
        race safely. A claim lasts while ``worker`` lives (``store.workers``)."""
        if not agent_names:
            return []
        candidates = (
            select(agent_wakeups.c.id)
            .where(
                agent_wakeups.c.done_at.is_(None),
                agent_wakeups.c.agent.in_(list(agent_names)),
                agent_wakeups.c.claimed_by.is_(None),
            )
            .order_by(agent_wakeups.c.id)
            .limit(limit)
        )
        if self._db.dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        ids = list((await self._db.execute(candidates)).scalars())
        if not ids:
            return []
        claim = (
            update(agent_wakeups)
            .where(agent_wakeups.c.id.in_(ids))
            .values(claimed_by=worker)
            .returning(*agent_wakeups.c)
        )
        return sorted((_wakeup(r) for r in await self._db.execute(claim)), key=lambda w: w.id)

    async def finish_wakeups(self, ids: Sequence[int], at: datetime) -> None:
        if ids:
            await self._db.execute(
                update(agent_wakeups).where(agent_wakeups.c.id.in_(list(ids))).values(done_at=at)
            )

    async def wakeup_task(self, wakeup_id: int) -> int | None:
        query = select(agent_wakeups.c.task_id).where(agent_wakeups.c.id == wakeup_id)
        task_id = (await self._db.execute(query)).scalar()
        return int(task_id) if task_id is not None else None

    async def release_wakeups(self, ids: Sequence[int], worker: str) -> None:
        if ids:
            query = (
                update(agent_wakeups)
                .where(
                    agent_wakeups.c.id.in_(list(ids)),
                    agent_wakeups.c.claimed_by == worker,
                    agent_wakeups.c.done_at.is_(None),
                )
                .values(claimed_by=None)
            )
            if (await self._db.execute(query)).rowcount:
                self.queued.add(Queued.WAKEUPS)

    async def consume_wakeups(
        self, agent: str, at: datetime, reasons: Collection[WakeReason] | None = None
    ) -> list[Wakeup]:
        """Takes every open wake-up of ``agent`` (an external agent polling for work), or only
        those for ``reasons``."""
        query = (
            update(agent_wakeups)
            .where(agent_wakeups.c.agent == agent, agent_wakeups.c.done_at.is_(None))
            .values(done_at=at)
            .returning(*agent_wakeups.c)
        )
        if reasons is not None:
            query = query.where(agent_wakeups.c.reason.in_([r.value for r in reasons]))
        return sorted((_wakeup(r) for r in await self._db.execute(query)), key=lambda w: w.id)

    async def set_alive(self, task_id: int, agent: str, epoch: int, at: datetime) -> bool:
        query = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.claimed_by == agent, tasks.c.lease_epoch == epoch)
            .values(alive_at=at)
        )
        return (await self._db.execute(query)).rowcount == 1

    async def record_output_tail(
        self, task_id: int, agent: str, epoch: int, tail: str, at: datetime
    ) -> Task | None:
        """Marks the task alive at ``at`` with ``tail`` as the attempt's output, only while
        ``agent`` holds the claim at ``epoch``; the task as written, else None."""
        query = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.claimed_by == agent, tasks.c.lease_epoch == epoch)
            .values(alive_at=at, output_tail=tail, output_tail_epoch=epoch)
            .returning(*tasks.c)
        )
        row = (await self._db.execute(query)).first()
        return task_from_row(row) if row else None

    async def add_token(self, agent: str, token_hash: str, at: datetime) -> bool:
        agent_id = (
            await self._db.execute(select(agents.c.id).where(agents.c.name == agent))
        ).scalar_one_or_none()
        if agent_id is None:
            return False
        await self._db.execute(
            agent_tokens.insert().values(agent_id=agent_id, token_hash=token_hash, created_at=at)
        )
        return True

    async def revoke_tokens(self, agent: str, at: datetime) -> int:
        agent_ids = select(agents.c.id).where(agents.c.name == agent).scalar_subquery()
        query = (
            update(agent_tokens)
            .where(and_(agent_tokens.c.agent_id == agent_ids, agent_tokens.c.revoked_at.is_(None)))
            .values(revoked_at=at)
        )
        return int((await self._db.execute(query)).rowcount)
