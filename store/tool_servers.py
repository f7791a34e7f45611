"""Queries for built-in agents' MCP tool servers (``bot.tool_servers``)."""

from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.tool_servers import Stored, ToolServer, Transport
from store.dialect import dialect_insert
from store.schema import agent_tool_servers, agents


def _server(row: Row[Any]) -> ToolServer:
    m = row._mapping
    allow = m["allow"]
    return ToolServer(
        label=m["label"],
        transport=Transport(m["transport"]),
        command=tuple(m["command"] or ()),
        url=m["url"],
        allow=None if allow is None else tuple(allow),
        header_names=tuple(m["header_names"] or ()),
    )


class ToolServerReads:
    """Read queries; mixed into the reader."""

    _db: AsyncConnection

    async def list_tool_servers(self, agent: str) -> list[ToolServer]:
        query = (
            select(agent_tool_servers)
            .join(agents, agents.c.id == agent_tool_servers.c.agent_id)
            .where(agents.c.name == agent)
            .order_by(agent_tool_servers.c.label)
        )
        return [_server(row) for row in await self._db.execute(query)]


class ToolServerWrites:
    """Writes; mixed into the unit of work."""

    _db: AsyncConnection

    async def upsert_tool_server(
        self, agent: str, server: ToolServer, at: datetime
    ) -> Stored | None:
        """Stores ``server``, first locking the agent's row until the transaction ends
        (``FOR NO KEY UPDATE`` on PostgreSQL, which leaves rows that only refer to the agent
        free to be written; on SQLite the writer's ``BEGIN IMMEDIATE`` already made the
        transaction the only writer): adds to one agent take turns, so whether the label was
        there, and the book's count after the add, hold every add committed before it."""
        locked = select(agents.c.id).where(agents.c.name == agent).with_for_update(key_share=True)
        agent_id = (await self._db.execute(locked)).scalar_one_or_none()
        if agent_id is None:
            return None
        there = select(agent_tool_servers.c.label).where(
            agent_tool_servers.c.agent_id == agent_id, agent_tool_servers.c.label == server.label
        )
        stored = Stored.REPLACED if (await self._db.execute(there)).first() else Stored.ADDED
        values: dict[str, Any] = {
            "transport": server.transport.value,
            "command": list(server.command) if server.command else None,
            "url": server.url,
            "allow": None if server.allow is None else list(server.allow),
            "header_names": list(server.header_names) or None,
            "updated_at": at,
        }
        query = (
            dialect_insert(self._db, agent_tool_servers)
            .values(agent_id=agent_id, label=server.label, created_at=at, **values)
            .on_conflict_do_update(index_elements=["agent_id", "label"], set_=values)
        )
        await self._db.execute(query)
        return stored

    async def delete_tool_server(self, agent: str, label: str) -> bool:
        agent_ids = select(agents.c.id).where(agents.c.name == agent).scalar_subquery()
        query = delete(agent_tool_servers).where(
            agent_tool_servers.c.agent_id == agent_ids, agent_tool_servers.c.label == label
        )
        return (await self._db.execute(query)).rowcount == 1
