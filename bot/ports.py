"""The storage ports the core needs, one small Protocol per concern; ``store/`` implements them.

Reads happen through a ``Reader``; every state change happens inside one ``Unit``, a single
database transaction, so a task update, its events and its outbox rows commit together or not
at all. ``Reader`` and ``Unit`` are the sums of the concerns below, for the core's use cases;
an adapter holds only the concern it needs (``OutboxQueue``, ``InboundEventIds``, ``Health``),
or a use case of the core.
"""

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypedDict

from bot.agents import Agent, AgentKind, AgentSettings
from bot.claims import Released
from bot.outbox import OutboxKind, OutboxMessage, OutboxRow, OutboxState
from bot.policy import ChannelPolicy
from bot.session import SessionStatus
from bot.signal import Queued
from bot.status import TaskStatus
from bot.task import NewEvent, Task, TaskEvent, TaskRef, ThreadMessage
from bot.tool_servers import ToolServer
from bot.work import Artifact, TaskUsage, Usage, WakeReason, Wakeup


class TaskFields(TypedDict, total=False):
    """Columns of a task that a compare-and-set may test or write."""

    status: TaskStatus
    assignee: str | None
    assigned_by: str | None
    claimed_by: str | None
    attempts: int
    lease_epoch: int
    last_progress_at: datetime | None
    thread_ts: str | None
    awaiting_input_since: datetime | None
    alive_at: datetime | None


class NewTask(TypedDict):
    """What creating a task needs; the store assigns the id and the channel number."""

    channel_id: str
    title: str
    description: str
    created_by: str
    thread_ts: str | None
    at: datetime


class BoardStats(TypedDict):
    """Counts for the admin's ``stats``."""

    by_status: dict[str, int]
    #: Outbox rows still to be sent (pending or in flight).
    outbox_backlog: int
    #: Outbox rows the platform refused for good, waiting for an admin.
    outbox_dead: int


class TaskReads(Protocol):
    """Tasks and their event logs."""

    async def get_task(self, ref: TaskRef) -> Task | None: ...

    async def get_task_by_id(self, task_id: int) -> Task | None: ...

    async def get_tasks_by_ids(self, task_ids: Collection[int]) -> list[Task]: ...

    async def get_task_by_thread(self, channel_id: str, thread_ts: str) -> Task | None: ...

    async def get_tasks_by_threads(self, threads: Collection[tuple[str, str]]) -> list[Task]:
        """The tasks living in the given (channel, thread_ts) threads."""
        ...

    async def list_tasks(
        self, *, status: TaskStatus | None = None, channel_id: str | None = None
    ) -> list[Task]: ...

    async def list_tasks_for_viewer(
        self, user_id: str, channel_ids: Sequence[str], finished_since: datetime, limit: int
    ) -> list[Task]:
        """Tasks assigned or created by ``user_id`` or in ``channel_ids``: up to ``limit`` open
        ones, then up to ``limit`` done or canceled since ``finished_since``; latest change
        first in each."""
        ...

    async def list_tasks_claimed_by(self, agent: str) -> list[Task]: ...

    async def get_stale_tasks(self, cutoff: datetime, limit: int) -> list[Task]:
        """Leased tasks whose last progress is strictly before ``cutoff``, oldest first."""
        ...

    async def count_stale_tasks(
        self, cutoff: datetime, channel_cutoffs: Mapping[str, datetime] | None = None
    ) -> int:
        """Leased tasks with no progress since ``cutoff``, or since the channel's own cutoff
        for the channels in ``channel_cutoffs``; a task waiting for input is not stale."""
        ...

    async def list_waiting_tasks(self, cutoff: datetime) -> list[Task]: ...

    async def board_stats(self) -> BoardStats: ...

    async def list_events(self, task_id: int) -> list[TaskEvent]: ...


class PolicyReads(Protocol):
    """Channels' overrides of the lease policy."""

    async def list_channel_policies(self) -> list[ChannelPolicy]: ...


class MessageReads(Protocol):
    """The messages stored from task threads."""

    async def list_messages(self, task_id: int) -> list[ThreadMessage]: ...


@dataclass(frozen=True)
class StoredSecret:
    """One encrypted secret of an agent, as stored; its repr shows no ciphertext."""

    agent: str
    name: str
    ciphertext: bytes = field(repr=False)


class AgentReads(Protocol):
    """Registered agents, their encrypted secrets and their tokens."""

    async def get_agent(self, name: str) -> Agent | None: ...

    async def list_agents(self) -> list[Agent]: ...

    async def find_agent_by_slack_id(self, user_id: str | None, bot_id: str | None) -> Agent | None:
        """The agent whose Slack user id or bot id matches, if any."""
        ...

    async def find_agents_by_slack_ids(
        self, user_ids: Collection[str], bot_ids: Collection[str]
    ) -> list[Agent]:
        """Every agent whose Slack user id or bot id is among those given."""
        ...

    async def get_agent_secret(self, name: str, secret: str) -> bytes | None: ...

    async def list_agent_secrets(self) -> list[StoredSecret]:
        """Every stored (encrypted) agent secret, by agent name and secret name."""
        ...

    async def find_agent_by_token_hash(self, token_hash: str) -> Agent | None: ...


class ToolServerReads(Protocol):
    """The MCP tool servers of built-in agents."""

    async def list_tool_servers(self, agent: str) -> list[ToolServer]:
        """The agent's tool servers, by label."""
        ...


class WorkReads(Protocol):
    """What agents produced on tasks: artifacts, read cursors, token usage."""

    async def list_artifacts(self, task_id: int) -> list[Artifact]: ...

    async def count_artifacts(self, task_id: int) -> int: ...

    async def get_artifact(self, artifact_id: int) -> Artifact | None: ...

    async def get_cursor(self, agent: str, task_id: int) -> str | None: ...

    async def get_usage(self, task_id: int) -> TaskUsage | None: ...

    async def run_pending(self, task_id: int, epoch: int) -> bool:
        """Whether a wake-up of the task at ``epoch`` is not done yet: a built-in agent's run
        is pending or under way (the runner holds the wake-up that started a run until it ends)."""
        ...

    async def get_session(self, task_id: int) -> SessionStatus | None:
        """The status the platform was last told for the task's agent session (None: none yet)."""
        ...


class OutboxReads(Protocol):
    """What admins read about the outbox: what is dead, and what still waits to be sent."""

    async def get_outbox_row(self, row_id: int) -> OutboxRow | None: ...

    async def list_dead_outbox(self, limit: int) -> list[OutboxRow]:
        """Dead rows, oldest first."""
        ...

    async def list_open_outbox(self, limit: int) -> list[OutboxRow]:
        """Rows still to be sent (pending or in flight), oldest first."""
        ...

    async def count_outbox(self) -> dict[OutboxState, int]:
        """How many rows are pending, in flight and dead."""
        ...


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


class TaskWrites(Protocol):
    """Task changes, each a compare-and-set, with their events and channel policies."""

    async def insert_task(self, new: NewTask) -> Task: ...

    async def compare_and_set(
        self, task_id: int, expect: TaskFields, changes: TaskFields, at: datetime
    ) -> Task | None:
        """Writes ``changes`` only if every column in ``expect`` still holds; else None."""
        ...

    async def renew_lease(self, task_id: int, agent: str, at: datetime) -> bool:
        """Moves last_progress_at to ``at`` only while ``agent`` holds the claim."""
        ...

    async def next_epochs(self, count: int) -> list[int]:
        """``count`` fresh lease epochs, unique across every task ever dispatched."""
        ...

    async def redispatch_stale(
        self, tasks: Sequence[Task], cutoff: datetime, at: datetime
    ) -> list[Task]:
        """Re-dispatches those of ``tasks`` unchanged since read and still stale; returns them."""
        ...

    async def block_stale(
        self, tasks: Sequence[Task], cutoff: datetime, at: datetime
    ) -> list[Task]:
        """Blocks those of ``tasks`` unchanged since read and still stale; returns them."""
        ...

    async def set_alive(self, task_id: int, agent: str, epoch: int, at: datetime) -> bool: ...

    async def record_output_tail(
        self, task_id: int, agent: str, epoch: int, tail: str, at: datetime
    ) -> Task | None:
        """Liveness with the attempt's output tail, while ``agent`` holds the claim at
        ``epoch`` (not progress: the lease is untouched); the task as written, else None."""
        ...

    async def append_events(self, events: Sequence[NewEvent]) -> None: ...

    async def record_card(self, task_id: int, card_ts: str) -> None:
        """Records where the card was posted; a card posted in a channel starts the thread."""
        ...

    async def set_channel_policy(self, policy: ChannelPolicy, by: str, at: datetime) -> None: ...


class OutboxWrites(Protocol):
    """The side effects a transaction queues for delivery."""

    #: What this transaction enqueued (outbox rows, agent wake-ups): work for outbox delivery
    #: or the runner to pick up once it commits.
    queued: set[Queued]

    async def enqueue(self, messages: Sequence[OutboxMessage], at: datetime) -> None: ...


class OutboxReviewWrites(Protocol):
    """An admin's moves of one outbox row, each a guarded UPDATE; None when the row was not
    in a state the move starts from."""

    async def retry_outbox_row(self, row_id: int, at: datetime) -> OutboxRow | None:
        """A dead row back to pending, due at ``at``."""
        ...

    async def drop_outbox_row(self, row_id: int) -> OutboxRow | None:
        """A dead or pending row to dropped: never sent."""
        ...


class MessageWrites(Protocol):
    """Messages stored from task threads, once each."""

    async def record_message(self, message: ThreadMessage) -> bool:
        """Stores a thread message; False when (channel, ts) was already stored."""
        ...

    async def save_message(self, message: ThreadMessage) -> None:
        """Stores a thread message, or replaces the stored text of (channel, ts): a streamed
        message's event may be seen before the stream completes."""
        ...

    async def record_messages(self, messages: Sequence[ThreadMessage]) -> set[tuple[str, str]]:
        """Stores thread messages in one statement; the (channel, ts) of those new here."""
        ...


class AgentWrites(Protocol):
    """Registering agents, their secrets and their MCP tokens."""

    async def upsert_agent(
        self,
        name: str,
        kind: AgentKind,
        display_name: str,
        slack_user_id: str | None,
        slack_bot_id: str | None,
        settings: AgentSettings,
        at: datetime,
    ) -> Agent: ...

    async def set_agent_enabled(self, name: str, enabled: bool, at: datetime) -> bool: ...

    async def delete_agent(self, name: str) -> bool: ...

    async def set_agent_secret(
        self, name: str, secret: str, ciphertext: bytes, at: datetime
    ) -> bool: ...

    async def rewrite_agent_secret(
        self, name: str, secret: str, expected: bytes, ciphertext: bytes, at: datetime
    ) -> bool:
        """Replaces the secret's ciphertext only while it is still ``expected``."""
        ...

    async def delete_agent_secret(self, name: str, secret: str) -> bool:
        """Deletes one secret of the agent; False when there was none."""
        ...

    async def add_token(self, agent: str, token_hash: str, at: datetime) -> bool: ...

    async def revoke_tokens(self, agent: str, at: datetime) -> int: ...


class ToolServerWrites(Protocol):
    """Adding and removing built-in agents' tool servers."""

    async def upsert_tool_server(self, agent: str, server: ToolServer, at: datetime) -> bool:
        """Stores ``server`` under its label (replacing one of the same label); False when
        there is no agent ``agent``. Locks the agent until the transaction ends, so adds to one
        agent take turns and the book's count after the add holds its limit."""
        ...

    async def delete_tool_server(self, agent: str, label: str) -> bool:
        """Deletes the agent's server ``label``; False when it had none of that label."""
        ...


class WakeupWrites(Protocol):
    """Agent wake-ups and read cursors."""

    async def enqueue_wakeups(
        self, wakeups: Sequence[tuple[int, str, WakeReason, int]], at: datetime
    ) -> None:
        """Queues (task id, agent, reason, epoch) wake-ups."""
        ...

    async def claim_wakeups(
        self, worker: str, agent_names: Sequence[str], limit: int
    ) -> list[Wakeup]:
        """Claims unclaimed open wake-ups of the given agents; they stay held by ``worker``
        (for as long as it lives) until finished or released."""
        ...

    async def finish_wakeups(self, ids: Sequence[int], at: datetime) -> None: ...

    async def wakeup_task(self, wakeup_id: int) -> int | None:
        """The id of the task wake-up ``wakeup_id`` is for (None if it is gone)."""
        ...

    async def release_wakeups(self, ids: Sequence[int], worker: str) -> None:
        """Makes wake-ups ``worker`` holds claimable again, unfinished."""
        ...

    async def consume_wakeups(
        self, agent: str, at: datetime, reasons: Collection[WakeReason] | None = None
    ) -> list[Wakeup]:
        """Takes the open wake-ups of ``agent`` (all, or only those for ``reasons``)."""
        ...

    async def advance_cursor(self, agent: str, task_id: int, last_ts: str) -> None: ...


class WorkerWrites(Protocol):
    """Workers' registrations and the claims they hold (``bot.workers``)."""

    async def register_worker(self, worker: str, now: datetime) -> None: ...

    async def heartbeat_worker(self, worker: str, now: datetime) -> bool:
        """False when the worker's row is gone: it was presumed dead and taken over."""
        ...

    async def release_worker(self, worker: str) -> Released:
        """Hands back everything ``worker`` holds and deregisters it."""
        ...

    async def take_over_dead_workers(self, cutoff: datetime, me: str) -> tuple[list[str], Released]:
        """Forgets workers not heard from since ``cutoff`` (never ``me``); reopens the claims
        no live worker holds."""
        ...

    async def oldest_heartbeat(self, me: str) -> datetime | None:
        """The oldest heartbeat among the workers other than ``me``."""
        ...


class WorkWrites(Protocol):
    """What agents produce on tasks: artifacts and token usage."""

    async def insert_artifact(
        self,
        task_id: int,
        name: str,
        kind: str,
        uri: str | None,
        content: str | None,
        by: str,
        at: datetime,
    ) -> Artifact: ...

    async def add_usage(self, task_id: int, usage: Usage, at: datetime) -> None: ...

    async def record_session(
        self, task_id: int, status: SessionStatus, at: datetime, *, create: bool = True
    ) -> None:
        """Records the status the task's agent session shows (what it was told, or, after a
        person pressed Stop on it, what the platform left it in). With ``create`` off, only a
        session already created is updated: a session is created once, by the call that gives
        it its title (``agents.sessions.setStatus``), never by what else moved its status."""
        ...


@dataclass(frozen=True)
class RecordedRequest:
    """An agent's keyed tool call as its transaction recorded it (``bot.tool_requests``)."""

    tool: str
    #: The digest of the call's arguments.
    digest: str
    task_id: int
    #: What the call produced (the artifact it added, the epoch it left), once it was made.
    result: Mapping[str, object] | None
    at: datetime


class ToolRequestWrites(Protocol):
    """Agents' keyed tool calls, each recorded in the transaction of its effect, once per
    (agent, idempotency key)."""

    async def record_tool_request(
        self, agent: str, key: str, tool: str, digest: str, task_id: int, at: datetime
    ) -> bool:
        """Records the call under (agent, key); False when a call was recorded under it before.
        A concurrent transaction that recorded the key and has not ended is waited for: False
        once it commits, True if it rolls back."""
        ...

    async def get_tool_request(self, agent: str, key: str) -> RecordedRequest | None: ...

    async def record_tool_result(self, agent: str, key: str, result: Mapping[str, object]) -> None:
        """Stores what the call holding (agent, key) produced, in the same transaction."""
        ...

    async def prune_tool_requests(self, before: datetime) -> int:
        """Forgets the calls recorded before ``before``; returns how many."""
        ...


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


@dataclass(frozen=True)
class Recorded:
    """A delivery recorded: whether the worker still held the row, and its thread's next row
    when that was claimed in the same transaction."""

    settled: bool
    next_row: OutboxRow | None = None


class OutboxQueue(Protocol):
    """Delivery's side of the outbox: claim, then settle, each its own transaction."""

    async def claim_outbox(
        self,
        worker: str,
        now: datetime,
        limit: int,
        per_lane: int | None = None,
        held: Mapping[tuple[str, bool], int] | None = None,
    ) -> list[OutboxRow]:
        """Claims up to ``limit`` rows, each at the head of its thread's sequence: a thread's
        card comes first, then its posts and its card updates each go in order, neither
        waiting for the other. Never two rows of one sequence at once.

        A lane is ``(channel_id, updates)``: a channel's new posts, or its card updates. No
        lane ends up holding more than ``per_lane`` rows, counting those ``held`` already. A
        claimed card update settles the later pending card updates of its card with it
        (``OutboxRow.coalesced``)."""
        ...

    async def release_claims(self, worker: str, uncertain_ids: Collection[int]) -> int:
        """Hands every row ``worker`` holds back as pending (a clean stop); the rows in
        ``uncertain_ids``, whose call was under way, are marked uncertain. Returns how many."""
        ...

    async def mark_delivered(
        self,
        row_id: int,
        worker: str,
        result: dict[str, object],
        at: datetime,
        card: tuple[int, str] | None = None,
    ) -> bool: ...

    async def mark_delivered_and_claim_next(
        self,
        row_id: int,
        worker: str,
        result: dict[str, object],
        at: datetime,
        card: tuple[int, str] | None,
        per_lane: int,
        held: Mapping[tuple[str, bool], int],
        session: tuple[int, SessionStatus] | None = None,
    ) -> Recorded:
        """Settles a delivered row as ``mark_delivered`` does and, in the same transaction,
        records the agent session status it set (``session``: task id and status) and claims
        its thread's next row when that is due and its lane holds fewer than ``per_lane`` of
        ``held`` (which no longer counts the settled row)."""
        ...

    async def release_for_retry(
        self,
        row_id: int,
        worker: str,
        available_at: datetime,
        error: str,
        uncertain: bool = False,
        shortened: bool = False,
    ) -> bool:
        """Back to pending at ``available_at``; ``shortened``: later attempts send less."""
        ...

    async def mark_dead(self, row_id: int, worker: str, error: str, event: NewEvent) -> bool:
        """Parks the row as dead with ``error`` and appends ``event``, in one transaction,
        only while ``worker`` holds the claim."""
        ...


class InboundEventIds(Protocol):
    """The ids of inbound chat events already processed; each call is its own transaction."""

    async def remember_inbound_event(self, event_id: str, at: datetime) -> bool:
        """Records ``event_id``; False when it was recorded before (a redelivery)."""
        ...

    async def forget_inbound_event(self, event_id: str) -> None:
        """Forgets an event whose processing failed, so the platform's retry is processed."""
        ...

    async def prune_inbound_event_ids(self, before: datetime) -> int:
        """Forgets the ids received before ``before``; returns how many."""
        ...


class Health(Protocol):
    """Whether the database answers, for readiness checks."""

    async def ping(self) -> None:
        """Raises unless the database answers a trivial query."""
        ...


class Store(Protocol):
    """Opens units of work. One per use case; never shared between concurrent tasks."""

    def transaction(self) -> AbstractAsyncContextManager[Unit]: ...

    def read(self) -> AbstractAsyncContextManager[Reader]: ...


@dataclass(frozen=True)
class OutboxBacklog:
    """The outbox rows of one kind still to be sent (pending or in flight)."""

    kind: OutboxKind
    count: int
    #: When the oldest of them was written.
    oldest_at: datetime


@dataclass(frozen=True)
class LeaseCounts:
    """Leased tasks: claimed, in a status the reconcile watches."""

    leased: int
    #: Of those, the ones paused while their agent waits for a person's answer.
    awaiting_input: int


class GaugeReads(Protocol):
    """What the metrics gauges read about the shared database: counts over partial indexes,
    so a scrape costs what the backlog and the leases hold, not the size of the tables."""

    async def list_outbox_backlog(self) -> list[OutboxBacklog]:
        """The open outbox rows by kind; kinds with none are left out."""
        ...

    async def count_leases(self) -> LeaseCounts: ...

    async def count_live_workers(self, cutoff: datetime) -> int:
        """Workers whose heartbeat is at or after ``cutoff``."""
        ...


class GaugeReader(GaugeReads, TaskReads, PolicyReads, OutboxReads, Protocol):
    """A scrape's reads, served by one transaction."""


class GaugeStore(Protocol):
    """Opens the read transaction a scrape's gauges are read in."""

    def read(self) -> AbstractAsyncContextManager[GaugeReader]: ...


class TickLock(Protocol):
    """One replica at a time runs a periodic job's tick (the reconcile), so the others do not
    repeat its reads of the chat platform. Correctness never rests on it: every write is still a
    compare-and-set."""

    def hold(self) -> AbstractAsyncContextManager[bool]:
        """Tries to take the lock for the tick without waiting: yields True when this replica
        holds it (released when the block ends), False when another replica does."""
        ...
