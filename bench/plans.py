"""Captures the SQL a tick sends and shows how the database plans it.

The statements are the ones the store really emitted (caught on the engine), not a copy of
its query builder, so the plan shown is the plan of the code under test.
"""

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

PARTIAL_INDEX = "ix_tasks_leased_progress"
_LITERALS = re.compile(r"'[^']*'|\b\d+(?:\.\d+)?\b")
_COLUMNS = re.compile(r"(?:(?:tasks\.)?\w+, ){5,}(?:tasks\.)?\w+(?= FROM|$)")
_PLAIN_VALUES = re.compile(r"\((?:\?|\$\d+)(?:, (?:\?|\$\d+)){3,}\)")
_CASE_BRANCHES = re.compile(r"(?:WHEN \? THEN \? ){2,}END")
_ROW_VALUES = re.compile(
    r"\((?:\?|\$\d+)(?:, (?:\?|\$\d+))+\)(?:, \((?:\?|\$\d+)(?:, (?:\?|\$\d+))+\))+"
)


@dataclass(frozen=True)
class Statement:
    """One statement as sent to the driver, with its parameters."""

    sql: str
    parameters: Any


@dataclass
class TickStatements:
    """The first of each distinct statement a tick sends about tasks, in the order sent."""

    seen: dict[str, Statement] = field(default_factory=dict)

    def see(self, sql: str, parameters: Any) -> None:
        about_tasks = sql.startswith("UPDATE tasks") or (
            sql.startswith("SELECT") and "FROM tasks" in sql
        )
        if about_tasks and shorten(sql) not in self.seen:
            self.seen[shorten(sql)] = Statement(sql, parameters)

    @property
    def stale_query(self) -> Statement | None:
        """The detect query: leased tasks in order of last progress."""
        return next(
            (s for s in self.seen.values() if "ORDER BY tasks.last_progress_at" in s.sql), None
        )

    def titled(self) -> list[tuple[str, Statement]]:
        """Every statement with a title: the detect query, other reads, the first UPDATE."""
        titled = []
        for statement in self.seen.values():
            if statement is self.stale_query:
                titled.append(("Stale query (detect)", statement))
            elif "awaiting_input_since <" in statement.sql:
                titled.append(("Waiting query (expire waits)", statement))
            elif statement.sql.startswith("SELECT"):
                titled.append(("Other read of tasks in the tick", statement))
        update = next((s for s in self.seen.values() if s.sql.startswith("UPDATE")), None)
        if update is not None:
            titled.append(("First act UPDATE (one batch)", update))
        return titled


@dataclass(frozen=True)
class Plan:
    """A statement (shortened for reading) and the database's plan for it."""

    title: str
    sql: str
    lines: list[str] = field(default_factory=list)

    @property
    def uses_partial_index(self) -> bool:
        return any(PARTIAL_INDEX in line for line in self.lines)


@contextmanager
def capturing(engine: AsyncEngine, seen: TickStatements | None) -> Iterator[None]:
    """Records into ``seen`` the statements sent while the block runs (none if it is None)."""
    if seen is None:
        yield
        return

    def before_execute(
        _conn: Any, _cursor: Any, sql: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        seen.see(sql, parameters)

    event.listen(engine.sync_engine, "before_cursor_execute", before_execute)
    try:
        yield
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before_execute)


async def explain(engine: AsyncEngine, title: str, statement: Statement) -> Plan:
    """EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL; nothing is executed."""
    sqlite = engine.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
    async with engine.connect() as connection:
        rows = (
            await connection.exec_driver_sql(prefix + statement.sql, statement.parameters)
        ).all()
        await connection.rollback()
    lines = _sqlite_tree(rows) if sqlite else [_clip(row[0]) for row in rows]
    return Plan(title, shorten(statement.sql), collapse(lines))


def _sqlite_tree(rows: Sequence[Any]) -> list[str]:
    """Indents EXPLAIN QUERY PLAN rows (id, parent, _, detail) the way the sqlite3 shell does."""
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("   " * depth[node] + "`--" + detail)
    return lines


def shorten(sql: str) -> str:
    """Collapses column lists, and lists of N placeholders (plain or row values) to a count."""

    def collapse(match: re.Match[str]) -> str:
        first, _, _ = match.group(0).partition("), ")
        return f"{first}), ... /* {match.group(0).count('(')} tuples */"

    def collapse_plain(match: re.Match[str]) -> str:
        first = match.group(0)[1:].partition(",")[0]
        return f"({first}, ... /* {match.group(0).count(',') + 1} values */)"

    def collapse_case(match: re.Match[str]) -> str:
        return f"WHEN ? THEN ? ... /* {match.group(0).count('WHEN')} branches */ END"

    sql = _ROW_VALUES.sub(collapse, " ".join(sql.split()))
    sql = _CASE_BRANCHES.sub(collapse_case, sql)
    sql = _COLUMNS.sub("/* every column of tasks */", sql)
    return _PLAIN_VALUES.sub(collapse_plain, sql)


def collapse(lines: list[str]) -> list[str]:
    """Folds runs of plan nodes that differ only in their literals into one and a count.

    A batch UPDATE on PostgreSQL plans one index scan per row value; 500 of them say nothing
    that the first does not.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        period, repeats = _repetition(lines, i)
        out += lines[i : i + period]
        if repeats > 1:
            indent = len(lines[i]) - len(lines[i].lstrip())
            out.append(" " * indent + f"... and {repeats - 1} more like the above")
        i += period * repeats
    return out


def _repetition(lines: list[str], start: int) -> tuple[int, int]:
    """The block length and count of the longest run of look-alike blocks at ``start``."""
    best = (1, 1)
    for period in (1, 2, 3):
        block = [_shape(line) for line in lines[start : start + period]]
        repeats = 1
        while [_shape(line) for line in lines[start + period * repeats :][:period]] == block:
            repeats += 1
        if repeats > 1 and period * repeats > best[0] * best[1]:
            best = (period, repeats)
    return best


def _shape(line: str) -> str:
    return _LITERALS.sub("?", line)


def _clip(line: str, width: int = 160) -> str:
    return line if len(line) <= width else line[: width - 5] + " ..."
