"""The agent tool set as one MCPServer: a tool per ``TaskTools`` method, docstring = description,
hints = schema.

Each call resolves its caller's ``TaskTools`` (from the bearer token, in ``channels.mcp.server``)
and renders the typed outcome: ``Done`` as structured output, ``Refused`` as a tool error whose
text starts with the reason. The built-in runtime lists this server's tools for their schemas but
calls ``TaskTools`` in-process.
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from bot.errors import DomainError
from bot.tool_requests import KEPT_FOR, MAX_KEY_CHARS
from bot.tools import INSTRUCTIONS, Refused, TaskTools, ToolResult

#: The argument of every tool that changes things, as its schema shows it to clients.
IdempotencyKey = Annotated[
    str | None,
    Field(
        description=(
            f"Optional. A fresh string of your choosing (at most {MAX_KEY_CHARS} characters; a "
            "UUID will do) naming this one call. Send the call again with the same key when its "
            "answer did not come (a dropped connection): the repeat returns the first call's "
            "result and changes nothing. Use a new key for every other call; a key is "
            f"remembered for {KEPT_FOR.total_seconds() / 3600:.0f} h."
        )
    ),
]

Resolver = Callable[[Mapping[str, str] | None], Awaitable[TaskTools]]


def build_tool_server(resolve: Resolver) -> MCPServer:
    """The tool definitions. ``resolve`` finds the caller from HTTP headers (MCP front door)."""
    # WARNING: the SDK would otherwise set the root logger to INFO with its own handler.
    server = MCPServer(name="threadwork", instructions=INSTRUCTIONS, log_level="WARNING")

    async def caller(ctx: Context) -> TaskTools:
        try:
            return await resolve(ctx.headers)
        except DomainError as exc:
            raise ToolError(exc.message) from None

    async def render(call: Awaitable[ToolResult]) -> dict[str, Any]:
        """Done as structured output; Refused as a tool error starting with its reason."""
        result = await call
        if isinstance(result, Refused):
            raise ToolError(result.text)
        return result.data

    @server.tool()
    async def list_my_tasks(ctx: Context) -> dict[str, Any]:
        """Lists the open tasks you are assigned and hold the claim for."""
        return await render((await caller(ctx)).list_my_tasks())

    @server.tool()
    async def get_task(task: str, ctx: Context) -> dict[str, Any]:
        """Reads a task you hold (ref like C123#7): its state and lease epoch, the thread messages
        you have not seen yet (your read cursor then moves past them), and its artifacts."""
        return await render((await caller(ctx)).get_task(task))

    @server.tool()
    async def post_update(
        task: str,
        text: str,
        ctx: Context,
        epoch: int | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Posts a progress message in the task's Slack thread under your name; renews your lease.
        Pass the epoch from your directive (required over MCP). Safe to send again with the same
        idempotency_key."""
        tools = await caller(ctx)
        return await render(tools.post_update(task, text, epoch, idempotency_key))

    @server.tool()
    async def update_task_status(
        task: str,
        status: str,
        ctx: Context,
        note: str | None = None,
        epoch: int | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Moves a task you hold: todo, in_progress, in_review, or blocked (with a note saying why).
        done needs a person unless the channel lets agents close. Pass the epoch from your
        directive (required over MCP); a call from a superseded run is refused as superseded.
        Safe to send again with the same idempotency_key."""
        tools = await caller(ctx)
        return await render(tools.update_task_status(task, status, note, epoch, idempotency_key))

    @server.tool()
    async def add_artifact(
        task: str,
        name: str,
        kind: str,
        ctx: Context,
        uri: str | None = None,
        content: str | None = None,
        epoch: int | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        """Attaches a result to a task you hold: a link (uri) or text content, with a name and a
        kind such as pull_request, file, report or log. Counts as progress. Pass the epoch from
        your directive (required over MCP). Safe to send again with the same idempotency_key."""
        tools = await caller(ctx)
        return await render(
            tools.add_artifact(task, name, kind, uri, content, epoch, idempotency_key)
        )

    @server.tool()
    async def report_liveness(
        task: str, output_tail: str, ctx: Context, epoch: int | None = None
    ) -> dict[str, Any]:
        """Says you are alive on a task you hold, with the last lines of your output (at most
        2,000 characters), shown on the card. Liveness, not progress: it does not renew your
        lease. At most one report per 15 s per attempt is recorded ("recorded": false when it
        came too soon). Pass the epoch from your directive."""
        return await render((await caller(ctx)).report_liveness(task, output_tail, epoch))

    @server.tool()
    async def release_task(
        task: str, ctx: Context, epoch: int | None = None, idempotency_key: IdempotencyKey = None
    ) -> dict[str, Any]:
        """Hands back a task you hold but cannot finish now (you are shutting down): it is
        dispatched to you again at once at a new epoch, without counting an attempt, for
        whichever of your workers waits for work; after three releases of one attempt, only
        when its lease lapses (``redispatched`` in the answer says which). Only a task in todo
        or in_progress. Pass the epoch from your directive; calls at the old epoch are refused
        afterwards. Safe to send again with the same idempotency_key."""
        return await render((await caller(ctx)).release_task(task, epoch, idempotency_key))

    @server.tool()
    async def wait_for_work(
        ctx: Context, timeout_s: float = 30.0, reasons: list[str] | None = None
    ) -> dict[str, Any]:
        """Waits up to timeout_s seconds (max 300) and returns as soon as you have a new directive
        or a person wrote in one of your task threads; an empty list means nothing came. An item
        whose reason is "stop" means a person stopped your work on that task: stop at once.
        reasons (directive, redispatch, message, assume, stop) takes only items for those
        reasons, leaving the others for later: a busy worker waits for ["stop"] alone."""
        return await render((await caller(ctx)).wait_for_work(timeout_s, reasons))

    return server
