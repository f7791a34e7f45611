"""The worker's MCP session with threadwork, as the token's agent, opened again when it breaks.

One session is shared by the worker's calls. The SDK's client lives in a task of its own, so a
transport that fails (the service went away, or restarted and forgot the session) ends that
task only; the call that saw it waits for a new session, with back-off, and is sent again. The
worker says once that the service is away, and once that it is back. A token the endpoint
refuses (401) stops the worker: no retry can fix it.

Tool results become ``bot.tools`` values here: ``Done`` with the structured data, or
``Refused`` with the refusal its text starts with.
"""

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import structlog
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from bot.tools import Done, Refusal, Refused, ToolResult

logger = structlog.get_logger(__name__)

#: Back-off between attempts to reach the service: doubling from the first to the cap.
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 5.0
#: How long opening a session may take before it counts as a failure.
CONNECT_TIMEOUT_S = 10.0
#: A long poll holds its response this long at most (wait_for_work's own cap is 300 s).
READ_TIMEOUT_S = 330.0
_REFUSALS = {r.value: r for r in Refusal}


class TokenRefused(Exception):
    """The endpoint refused the token (401): revoked, mistyped, or another service's."""


@dataclass
class _Session:
    client: Client
    task: asyncio.Task[None]
    broken: asyncio.Event = field(default_factory=asyncio.Event)


class Link:
    """Calls threadwork's tools at ``url`` as the agent ``token`` names."""

    def __init__(self, url: str, token: str) -> None:
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: _Session | None = None
        self._lock = asyncio.Lock()
        self._away_since: float | None = None

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Calls ``tool``; a broken session is replaced and the call sent again, until the
        service answers (or the caller is cancelled)."""
        while True:
            session = await self._connected()
            try:
                result = await session.client.call_tool(tool, dict(arguments))
            except (MCPError, httpx2.HTTPError, OSError) as exc:
                logger.debug("worker.call_failed", tool=tool, error=repr(exc))
                session.broken.set()
                continue
            return _result(tool, result)

    async def close(self) -> None:
        """Ends the session (the service forgets it, and any long poll of it)."""
        session, self._session = self._session, None
        if session is not None:
            await _end(session)

    async def _connected(self) -> _Session:
        async with self._lock:
            session = self._session
            if session is not None and not session.broken.is_set():
                return session
            if session is not None:
                await _end(session)
            delay = FIRST_RETRY_S
            while True:
                try:
                    self._session = await self._open()
                except TokenRefused:
                    raise
                except Exception as exc:  # anything that kept a session from opening
                    self._away(exc)
                    await asyncio.sleep(delay)  # back-off before trying again
                    delay = min(delay * 2, MAX_RETRY_S)
                    continue
                self._back()
                return self._session

    async def _open(self) -> _Session:
        opened: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        broken = asyncio.Event()
        task = asyncio.create_task(self._hold(opened, broken), name="worker-mcp-session")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                client = await opened
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await self._check_token()
            raise
        return _Session(client, task, broken)

    async def _hold(self, opened: asyncio.Future[Client], broken: asyncio.Event) -> None:
        """Keeps one session open until it is marked broken or the task is cancelled."""
        timeout = httpx2.Timeout(30.0, read=READ_TIMEOUT_S)
        try:
            async with (
                httpx2.AsyncClient(headers=self._headers, timeout=timeout) as http,
                Client(streamable_http_client(self._url, http_client=http)) as client,
            ):
                opened.set_result(client)
                await broken.wait()
        except Exception as exc:  # the transport failed: the session is over
            logger.debug("worker.session_ended", error=repr(exc))
            if not opened.done():
                opened.set_exception(exc)
        finally:
            broken.set()

    async def _check_token(self) -> None:
        """Raises TokenRefused when the endpoint answers 401 (a session failing to open does
        not say why)."""
        with contextlib.suppress(httpx2.HTTPError, OSError):
            async with httpx2.AsyncClient(headers=self._headers, timeout=5.0) as http:
                answer = await http.post(self._url, json={})
                if answer.status_code == 401:
                    raise TokenRefused(f"{self._url} refused the token (401).")

    def _away(self, error: BaseException) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            logger.warning("worker.service_away", url=self._url, error=_first(error))

    def _back(self) -> None:
        if self._away_since is not None:
            away = round(time.monotonic() - self._away_since, 1)
            logger.info("worker.service_back", url=self._url, away_s=away)
        self._away_since = None


async def _end(session: _Session) -> None:
    session.broken.set()
    try:
        async with asyncio.timeout(5.0):
            await session.task
    except TimeoutError:
        session.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session.task


def _first(error: BaseException) -> str:
    """The first error an exception group holds (the transport's task groups wrap them)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return repr(error)[:200]


def _result(tool: str, result: CallToolResult) -> ToolResult:
    """A tool result as a ToolResult: a refusal's reason is the start of its text."""
    if not result.is_error:
        data = result.structured_content
        return Done(data if isinstance(data, dict) else {})
    text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
    text = text.removeprefix(f"Error executing tool {tool}: ")
    reason = _REFUSALS.get(text.partition(":")[0].strip(), Refusal.NOT_ALLOWED)
    return Refused(reason, text)
