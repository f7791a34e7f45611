"""A built-in agent's MCP tool servers, connected for one run: the port, and the tool box.

The run opens a ``ToolBox`` on the agent's launches when it starts and closes it when it ends,
however it ends. Each server is held by a task of its own (spawned on the supervisor, so that it
is tracked): it connects through the ``ToolConnector`` port, lists its tools, and stays
connected until the box closes; servers start side by side, each within a bound. A server that
does not start is a :class:`ServerFailure`, and the run goes on with the tools it has.

The model is offered each server's tools as ``LABEL__TOOL`` (only those in ``allow=``, when
set), after threadwork's own and in a fixed order, so that the tool definitions, which head the
request, stay one cacheable prefix for the whole run. A call is passed through with a timeout,
and its text result is cut to a bound and marked as cut.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bot.runtime.model import ToolSpec
from bot.tool_servers import ToolServerLaunch, qualified_name

logger = structlog.get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
#: The most characters of a call's arguments recorded in its event; larger ones are counted.
MAX_EVENT_ARGUMENT_CHARS = 500


@dataclass(frozen=True)
class OfferedTool:
    """A tool as its server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolOutput:
    """What a server's tool answered, as text for the model."""

    text: str
    is_error: bool = False


class ToolServerFailed(Exception):
    """A tool server could not be reached or answered with a protocol error; the message says
    how, in a line a person can read (it never holds a header value)."""


class ToolSession(Protocol):
    """One connected tool server."""

    async def list_tools(self) -> list[OfferedTool]:
        """Every tool the server offers."""
        ...

    async def call_tool(self, name: str, arguments: dict[str, Any], limit_s: float) -> ToolOutput:
        """Calls ``name``; raises TimeoutError past ``limit_s`` seconds, ToolServerFailed when
        the server fails (a tool's own error is an output with ``is_error``)."""
        ...


class ToolConnector(Protocol):
    """Connects to tool servers (the MCP client, in production)."""

    def connect(self, launch: ToolServerLaunch) -> AbstractAsyncContextManager[ToolSession]:
        """The session with ``launch``'s server while the context is open; closing it stops a
        stdio server's process. Raises ToolServerFailed (or OSError) when it cannot start."""
        ...


@dataclass(frozen=True)
class ToolBoxSettings:
    #: How long a server may take to start and list its tools.
    start_timeout_s: float = 30.0
    #: How long one call may take.
    call_timeout_s: float = 60.0
    #: The most characters of a result the model is given; the rest is cut, and it says so.
    max_result_chars: int = 20_000
    #: How long the servers get to close when the run ends (a stdio server is killed then).
    close_timeout_s: float = 10.0


@dataclass(frozen=True)
class ServerFailure:
    """A tool server that did not start, and why."""

    label: str
    reason: str


@dataclass(frozen=True)
class ServerCall:
    """One call passed through to a tool server, as the run records and answers it."""

    tool: str
    output: ToolOutput
    truncated: bool
    duration_s: float
    arguments: dict[str, Any] = field(repr=False)

    def event_data(self) -> dict[str, object]:
        """The call for the task's events: tool, duration, ok or error; small arguments."""
        data: dict[str, object] = {
            "tool": self.tool,
            "duration_ms": round(self.duration_s * 1000),
            "ok": not self.output.is_error,
        }
        if self.output.is_error:
            data["error"] = self.output.text[:300]
        if self.truncated:
            data["truncated"] = True
        shown = _json_size(self.arguments)
        if shown <= MAX_EVENT_ARGUMENT_CHARS:
            data["arguments"] = self.arguments
        else:
            data["arguments_chars"] = shown
        return data

    def progress_line(self) -> str:
        """The line people see in the stream for this call."""
        if self.output.is_error:
            return f"✗ {self.tool} failed"
        return f"✓ {self.tool}"


def _json_size(value: object) -> int:
    return len(json.dumps(value, default=str))


@dataclass
class _Connection:
    """One server, held open by its own task until ``stop`` is set."""

    launch: ToolServerLaunch
    ready: "asyncio.Future[tuple[ToolSession, list[OfferedTool]]]"
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: "asyncio.Task[Any] | None" = None

    @property
    def label(self) -> str:
        return self.launch.server.label

    async def hold(self, connector: ToolConnector) -> None:
        """Connects, lists the tools, and keeps the session until told to stop."""
        try:
            async with connector.connect(self.launch) as session:
                tools = await session.list_tools()
                if not self.ready.done():
                    self.ready.set_result((session, tools))
                await self.stop.wait()
        except (ToolServerFailed, OSError, TimeoutError) as exc:
            self._failed(str(exc) or type(exc).__name__)
        except Exception as exc:
            # The MCP SDK raises its own errors (a protocol error, a closed stream): they are
            # this server's failure, not the run's.
            self._failed(f"{type(exc).__name__}: {exc}"[:300])

    def _failed(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ToolServerFailed(reason))
        else:
            logger.warning("tool_server.lost", server=self.label, error=reason)


class ToolBox:
    """The tools of a run's connected servers; see the module docstring."""

    def __init__(self, settings: ToolBoxSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self.specs: list[ToolSpec] = []
        self.failures: list[ServerFailure] = []
        self._routes: dict[str, tuple[ToolSession, str]] = {}

    def owns(self, name: str) -> bool:
        """Whether ``name`` is one of the servers' tools as offered to the model."""
        return name in self._routes

    def add_server(
        self, launch: ToolServerLaunch, session: ToolSession, tools: list[OfferedTool]
    ) -> None:
        """Offers the tools of one started server (those allowed, named so a model can call)."""
        server = launch.server
        allowed = None if server.allow is None else set(server.allow)
        for tool in tools:
            name = qualified_name(server.label, tool.name)
            if (allowed is not None and tool.name not in allowed) or name is None:
                continue
            self.specs.append(ToolSpec(name, tool.description, tool.input_schema))
            self._routes[name] = (session, tool.name)

    async def call(self, name: str, arguments: dict[str, Any]) -> ServerCall:
        """Passes the call through; a timeout or a failing server is an error the model reads."""
        session, tool = self._routes[name]
        started = self._clock()
        try:
            output = await session.call_tool(tool, arguments, self._settings.call_timeout_s)
        except TimeoutError:
            limit = self._settings.call_timeout_s
            output = ToolOutput(f"{name} did not answer within {limit:g} s.", is_error=True)
        except ToolServerFailed as exc:
            output = ToolOutput(f"{name} failed: {exc}", is_error=True)
        duration = self._clock() - started
        text, truncated = _truncated(output.text, self._settings.max_result_chars)
        return ServerCall(name, ToolOutput(text, output.is_error), truncated, duration, arguments)


def _truncated(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    cut = len(text) - limit
    return f"{text[:limit]}\n[truncated: {cut} more characters not shown]", True


@asynccontextmanager
async def open_toolbox(
    connector: ToolConnector,
    launches: Sequence[ToolServerLaunch],
    spawn: Spawn,
    settings: ToolBoxSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[ToolBox]:
    """Starts the servers side by side and yields their tools; stops them all on exit."""
    settings = settings or ToolBoxSettings()
    box = ToolBox(settings, clock)
    loop = asyncio.get_running_loop()
    connections: list[_Connection] = []
    try:
        for launch in launches:
            if launch.problem is not None:
                box.failures.append(ServerFailure(launch.server.label, launch.problem))
                continue
            connection = _Connection(launch, loop.create_future())
            connection.task = spawn(connection.hold(connector), f"tool-server:{connection.label}")
            connections.append(connection)
        await _started(box, connections, settings.start_timeout_s)
        yield box
    finally:
        await _close(connections, settings.close_timeout_s)


async def _started(box: ToolBox, connections: list[_Connection], limit_s: float) -> None:
    """Offers each started server's tools; notes each that failed or is too slow."""
    if connections:
        await asyncio.wait([c.ready for c in connections], timeout=limit_s)
    for connection in connections:
        ready = connection.ready
        if not ready.done():
            ready.cancel()
            if connection.task is not None:
                connection.task.cancel()  # still connecting: a stdio server's process is ended
            reason = f"it did not start within {limit_s:g} s"
        elif ready.exception() is not None:
            reason = str(ready.exception())
        else:
            session, tools = ready.result()
            box.add_server(connection.launch, session, tools)
            continue
        box.failures.append(ServerFailure(connection.label, reason))
        connection.stop.set()


async def _close(connections: list[_Connection], limit_s: float) -> None:
    """Tells every server to stop and waits for them (bounded); cancels any still open. Their
    tasks are the supervisor's, so a stop still under way when this wait is itself cancelled
    goes on, and is awaited at shutdown."""
    for connection in connections:
        connection.stop.set()
    tasks = [c.task for c in connections if c.task is not None]
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=limit_s)
    for task in stuck:
        logger.warning("tool_server.close_timed_out", task=task.get_name())
        task.cancel()
    if stuck:
        await asyncio.wait(stuck, timeout=limit_s)
