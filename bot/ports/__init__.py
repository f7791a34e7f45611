"""The storage ports the core needs, one small Protocol per concern; ``store/`` implements them.

Reads happen through a ``Reader``; every state change happens inside one ``Unit``, a single
database transaction, so a task update, its events and its outbox rows commit together or not
at all. ``Reader`` and ``Unit`` are the sums of the concerns in this package's modules, for the
core's use cases; an adapter holds only the concern it needs (``OutboxQueue``,
``InboundEventIds``, ``Health``), or a use case of the core.
"""

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from bot.ports.agents import AgentReads, AgentWrites, ToolServerReads, ToolServerWrites
from bot.ports.messages import MessageReads, MessageWrites
from bot.ports.outbox import OutboxReads, OutboxReviewWrites, OutboxWrites
from bot.ports.tasks import PolicyReads, TaskReads, TaskWrites
from bot.ports.tool_requests import ToolRequestWrites
from bot.ports.work import WakeupWrites, WorkReads, WorkWrites
from bot.ports.workers import WorkerWrites


class Reader(
    TaskReads,
    PolicyReads,
    MessageReads,
    AgentReads,
    ToolServerReads,
    WorkReads,
    OutboxReads,
    Protocol,
):
    """Read-only queries, served by one transaction."""


class Unit(
    Reader,
    TaskWrites,
    OutboxWrites,
    OutboxReviewWrites,
    MessageWrites,
    AgentWrites,
    ToolServerWrites,
    WakeupWrites,
    WorkWrites,
    WorkerWrites,
    ToolRequestWrites,
    Protocol,
):
    """One write transaction. Every method that changes a task is a compare-and-set."""


class Store(Protocol):
    """Opens units of work. One per use case; never shared between concurrent tasks."""

    def transaction(self) -> AbstractAsyncContextManager[Unit]: ...

    def read(self) -> AbstractAsyncContextManager[Reader]: ...
