"""Agents' keyed tool calls: one row per (agent, idempotency key), written with the call's effect."""

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.ports.tool_requests import RecordedRequest
from store.dialect import dialect_insert
from store.schema import tool_requests


class ToolRequestWrites:
    """Implements ``bot.ports.tool_requests.ToolRequestWrites``; mixed into the unit."""

    _db: AsyncConnection

    async def record_tool_request(
        self, agent: str, key: str, tool: str, digest: str, task_id: int, at: datetime
    ) -> bool:
        # On PostgreSQL, a row another transaction inserted and has not committed yet makes
        # this statement wait for that transaction: it then inserts (the other rolled back)
        # or does nothing (it committed, and its row is there to read).
        query = (
            dialect_insert(self._db, tool_requests)
            .values(agent=agent, key=key, tool=tool, digest=digest, task_id=task_id, created_at=at)
            .on_conflict_do_nothing(index_elements=["agent", "key"])
        )
        return bool((await self._db.execute(query)).rowcount == 1)

    async def get_tool_request(self, agent: str, key: str) -> RecordedRequest | None:
        query = select(tool_requests).where(
            tool_requests.c.agent == agent, tool_requests.c.key == key
        )
        row = (await self._db.execute(query)).first()
        if row is None:
            return None
        return RecordedRequest(row.tool, row.digest, row.task_id, row.result, row.created_at)

    async def record_tool_result(self, agent: str, key: str, result: Mapping[str, object]) -> None:
        query = (
            update(tool_requests)
            .where(tool_requests.c.agent == agent, tool_requests.c.key == key)
            .values(result=dict(result))
        )
        await self._db.execute(query)

    async def prune_tool_requests(self, before: datetime) -> int:
        query = delete(tool_requests).where(tool_requests.c.created_at < before)
        return int((await self._db.execute(query)).rowcount)
