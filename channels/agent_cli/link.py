"""The worker's MCP session with threadwork, as the token's agent, opened again when it breaks.

One session is shared by the worker's calls. The SDK's client lives in a task of its own, so a
transport that fails (the service went away, or restarted and forgot the session) ends that
task only; the call that saw it waits for a new session and is sent again, after a back-off that
doubles while the failures go on and starts again once the service answers. The worker says
once that the service is away, and once that it is back. A token the endpoint refuses (401)
stops the worker: no retry can fix it.

A call of a tool that changes things carries an ``idempotency_key``, made once per call before
its first sending and sent with every retry: when the connection broke after the service made
the call, the retry gets the first call's answer instead of posting (or attaching, or moving the
task) a second time.

A gateway in front of the service (a load balancer, a reverse proxy) that answers 502, 503 or
504 with a body of its own (an HTML page, or JSON such as ``{"message": "no healthy upstream"}``),
not the service's JSON-RPC, is taken for the service being away, as a dropped connection is: the
call is sent again, with its key, once the service is back. The check is a response hook, not a
transport of the link's own, so the HTTP client keeps the environment's proxies
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``), which httpx honours only for a client built
without a transport.

Tool results become ``bot.tools`` values here: ``Done`` with the structured data, or
``Refused`` with the refusal its text starts with. A JSON-RPC error the service answers with
(any other than the SDK's own for a lost connection or session) is a refusal too: the call
reached the service, and sending it again would only repeat it.
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import structlog
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, CallToolResult, TextContent

from bot.tool_requests import KEYED_TOOLS
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
#: What a gateway answers for a service it cannot reach (one that is restarting, say).
GATEWAY_AWAY = frozenset({502, 503, 504})
#: What the SDK's client says when the service forgot the session (a 404 for a session id).
SESSION_TERMINATED = "Session terminated"


def keyed(tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` with a fresh idempotency key when ``tool`` changes things and they carry
    none yet (a retry of the call keeps the key it was first sent with)."""
    if tool not in KEYED_TOOLS or "idempotency_key" in arguments:
        return dict(arguments)
    return dict(arguments) | {"idempotency_key": str(uuid.uuid4())}


class ServiceAway(httpx2.TransportError):
    """A gateway answered for the service: it is away, as if the connection had dropped."""


class TokenRefused(Exception):
    """The endpoint refused the token (401): revoked, mistyped, or another service's."""


@dataclass
class _Session:
    client: Client
    task: asyncio.Task[None]
    broken: asyncio.Event = field(default_factory=asyncio.Event)


class Link:
    """Calls threadwork's tools at ``url`` as the agent ``token`` names."""

    def __init__(
        self, url: str, token: str, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._transport = transport
        self._session: _Session | None = None
        self._lock = asyncio.Lock()
        self._away_since: float | None = None
        self._retry_s = FIRST_RETRY_S

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Calls ``tool``; when the transport fails, the session is replaced and the call sent
        again after the back-off, with the same idempotency key, until the service answers (or
        the caller is cancelled)."""
        arguments = keyed(tool, arguments)
        while True:
            session = await self._connected()
            try:
                result = await session.client.call_tool(tool, arguments)
            except MCPError as exc:
                if not _transport_failed(exc):
                    self._retry_s = FIRST_RETRY_S
                    return _refused(tool, exc)
                failure: Exception = exc
            except (httpx2.TransportError, OSError) as exc:
                failure = exc
            else:
                self._retry_s = FIRST_RETRY_S
                return _result(tool, result)
            logger.debug("worker.call_failed", tool=tool, error=repr(failure))
            session.broken.set()
            await self._pause()

    async def _pause(self) -> None:
        """Waits out the back-off, and doubles it (to the cap) for the next failure."""
        await asyncio.sleep(self._retry_s)  # back-off before reaching the service again
        self._retry_s = min(self._retry_s * 2, MAX_RETRY_S)

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
            while True:
                try:
                    self._session = await self._open()
                except TokenRefused:
                    raise
                except Exception as exc:  # anything that kept a session from opening
                    self._away(exc)
                    await self._pause()
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
                httpx2.AsyncClient(
                    headers=self._headers,
                    timeout=timeout,
                    transport=self._transport,
                    event_hooks={"response": [_fail_gateway_away]},
                ) as http,
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
            async with httpx2.AsyncClient(
                headers=self._headers, timeout=5.0, transport=self._transport
            ) as http:
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


async def _fail_gateway_away(response: httpx2.Response) -> None:
    """Raises ServiceAway when a gateway answered ``response`` for a service it cannot reach
    (``GATEWAY_AWAY``, with a body that is not a JSON-RPC message). Raised in a response hook,
    it closes the response and fails the request as a broken connection does, so the session
    ends and the call is sent again."""
    if response.status_code in GATEWAY_AWAY and not await _from_service(response):
        status = response.status_code
        raise ServiceAway(f"a gateway answered {status}", request=response.request)


async def _from_service(response: httpx2.Response) -> bool:
    """Whether ``response``'s body is a JSON-RPC message: the service answered, and the SDK
    passes its error on (it reads the body again from the response's cache)."""
    if not response.headers.get("content-type", "").lower().startswith("application/json"):
        return False
    try:
        message = json.loads(await response.aread())  # an error's body: a few hundred bytes
    except ValueError:
        return False
    return isinstance(message, dict) and "jsonrpc" in message


def _first(error: BaseException) -> str:
    """The first error an exception group holds (the transport's task groups wrap them)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return repr(error)[:200]


def _transport_failed(error: MCPError) -> bool:
    """Whether the SDK's client raised ``error`` for a lost connection or a session the
    service forgot, rather than passing on the service's answer."""
    if error.code == CONNECTION_CLOSED:
        return True
    return error.code == INVALID_REQUEST and error.message == SESSION_TERMINATED


def _refused(tool: str, error: MCPError) -> Refused:
    """The service's JSON-RPC error as a refusal: the reason its message starts with, else
    INVALID (the protocol rejected the call itself)."""
    text = f"{tool}: {error.message}"
    return Refused(_REFUSALS.get(error.message.partition(":")[0].strip(), Refusal.INVALID), text)


def _result(tool: str, result: CallToolResult) -> ToolResult:
    """A tool result as a ToolResult: a refusal's reason is the start of its text."""
    if not result.is_error:
        data = result.structured_content
        return Done(data if isinstance(data, dict) else {})
    text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
    text = text.removeprefix(f"Error executing tool {tool}: ")
    reason = _REFUSALS.get(text.partition(":")[0].strip(), Refusal.NOT_ALLOWED)
    return Refused(reason, text)
