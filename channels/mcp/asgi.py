"""Serves an ASGI app (the MCP endpoint) under one path of threadwork's aiohttp server.

Each aiohttp request becomes one ASGI HTTP call: the body is streamed to the app through
``receive``, and every ``http.response.body`` chunk goes to the client as soon as the app sends
it, which is what keeps MCP's ``text/event-stream`` answers live. The app's lifespan (the MCP
session manager's task group) runs in a background task between :meth:`AsgiMount.start` and
:meth:`AsgiMount.close`.

A client that hangs up is noticed at once while its body is being read or a chunk is written,
and otherwise within :data:`DISCONNECT_POLL` seconds by an app waiting on ``receive``. Either way
the app hears ``http.disconnect`` (and ``send`` raises :class:`ClientDisconnected`); it is
cancelled only if it has not ended :data:`CANCEL_GRACE` seconds after aiohttp cancelled its
handler (on shutdown, or on disconnect with ``handler_cancellation=True``).
"""

import asyncio
from typing import Any
from urllib.parse import unquote

import structlog
from aiohttp import web
from aiohttp.helpers import must_be_empty_body
from starlette.types import ASGIApp, Message

logger = structlog.get_logger(__name__)

#: Seconds between checks that the client is still connected, while the app awaits ``receive``.
DISCONNECT_POLL = 0.25
#: Seconds an app has to end by itself after ``http.disconnect`` when aiohttp cancels its handler.
CANCEL_GRACE = 1.0
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class LifespanError(RuntimeError):
    """The app's lifespan startup failed, timed out, or ended before it completed."""


class ClientDisconnected(OSError):
    """Raised by ``send`` once the client has gone (ASGI's server-specific ``OSError``)."""


class AsgiMount:
    """Serves an ASGI app under one path of an aiohttp server, with the app's lifespan."""

    def __init__(self, app: ASGIApp, path: str, *, lifespan_timeout: float = 5.0) -> None:
        self._app = app
        self._path = path.rstrip("/")
        self._lifespan = _Lifespan(app, lifespan_timeout)

    def routes(self) -> list[web.RouteDef]:
        """Routes sending every method on the path, ``path/`` and its subpaths to the app."""
        return [
            web.route("*", self._path, self._handle),
            web.route("*", self._path + "/{tail:.*}", self._handle),
        ]

    async def start(self) -> None:
        """Runs the app's lifespan startup; raises :class:`LifespanError` if it fails."""
        await self._lifespan.startup()

    async def close(self) -> None:
        """Runs the lifespan shutdown, cancelling the app if it takes too long; idempotent."""
        await self._lifespan.shutdown()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        exchange = _Exchange(request)
        call = asyncio.create_task(self._call(exchange, request), name="asgi-http")
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            # aiohttp cancels a handler on shutdown (or on disconnect, with
            # handler_cancellation=True); the app hears http.disconnect, as under uvicorn, since
            # cancelling it outright can lose state (MCP drops a session whose opening request
            # was cancelled).
            exchange.disconnect()
            await _finish(call, CANCEL_GRACE)
            raise
        return exchange.response()

    async def _call(self, exchange: "_Exchange", request: web.Request) -> None:
        try:
            await self._app(
                http_scope(request, self._lifespan.state), exchange.receive, exchange.send
            )
        except Exception:
            exchange.log_failure()
        else:
            exchange.log_unfinished()
        finally:
            exchange.finish()


async def _finish(task: "asyncio.Task[None]", grace: float) -> None:
    """Waits up to ``grace`` seconds for ``task`` to end by itself, then cancels it."""
    try:
        await asyncio.wait({task}, timeout=grace)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


def http_scope(request: web.BaseRequest, state: dict[str, Any]) -> dict[str, Any]:
    """The ASGI HTTP scope describing ``request``, with a copy of the lifespan ``state``."""
    raw_path = request.rel_url.raw_path
    transport = request.transport
    return {
        "type": "http",
        "asgi": dict(_ASGI),
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": request.rel_url.raw_query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": _address(transport, "peername"),
        "server": _address(transport, "sockname"),
        "state": dict(state),
    }


def _address(transport: asyncio.Transport | None, which: str) -> tuple[str, int] | None:
    """The (host, port) of one end of ``transport``, or None for a socket without one."""
    address = transport.get_extra_info(which) if transport is not None else None
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


class _Exchange:
    """One request and its response, spoken as ASGI ``receive`` and ``send``."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response: web.StreamResponse | None = None
        self._body_done = False
        self._complete = False
        self._disconnected = False
        self._ended = asyncio.Event()
        self._watch: asyncio.TimerHandle | None = None

    async def receive(self) -> Message:
        """The next chunk of the body, then ``http.disconnect`` once the exchange is over."""
        if not self._body_done:
            try:
                chunk = await self._request.content.readany()
            except ConnectionError:
                self.disconnect()
            else:
                self._body_done = self._request.content.at_eof()
                return {"type": "http.request", "body": chunk, "more_body": not self._body_done}
        if self._watch is None:
            self._check_connection()
        await self._ended.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """Starts, writes or finishes the response as ``message`` says."""
        if self._disconnected:
            raise ClientDisconnected("the client has disconnected")
        try:
            if message["type"] == "http.response.start":
                await self._start(message)
            elif message["type"] == "http.response.body":
                await self._write(message)
            else:
                raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
        except ConnectionError as exc:
            self.disconnect()
            raise ClientDisconnected("the client has disconnected") from exc

    async def _start(self, message: Message) -> None:
        if self._response is not None:
            raise RuntimeError("the response has already been started")
        response = web.StreamResponse(status=message["status"])
        for name, value in message.get("headers", ()):
            response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        self._response = response
        await response.prepare(self._request)

    async def _write(self, message: Message) -> None:
        response = self._response
        if response is None or self._complete:
            raise RuntimeError("a body message needs a started, unfinished response")
        body = message.get("body", b"")
        if body and not must_be_empty_body(self._request.method, response.status):
            await response.write(body)
        if not message.get("more_body", False):
            await response.write_eof()
            self._complete = True
            self._ended.set()

    def _check_connection(self) -> None:
        """Notices a closed connection now, and again every DISCONNECT_POLL s until the end."""
        self._watch = None
        if self._ended.is_set():
            return
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self.disconnect()
            return
        loop = asyncio.get_running_loop()
        self._watch = loop.call_later(DISCONNECT_POLL, self._check_connection)

    def disconnect(self) -> None:
        """Treats the client as gone: ``receive`` says ``http.disconnect``, ``send`` raises."""
        self._disconnected = True
        self._body_done = True
        self._ended.set()

    def finish(self) -> None:
        """Ends the exchange: a pending ``receive`` returns and the connection watch stops."""
        self._ended.set()
        if self._watch is not None:
            self._watch.cancel()

    def log_failure(self) -> None:
        """Logs the exception the app raised, unless it only followed the client's disconnect."""
        if self._disconnected:
            logger.debug("asgi.client_disconnected", path=self._request.path)
        else:
            logger.exception("asgi.app_failed", path=self._request.path, started=self._started)

    def log_unfinished(self) -> None:
        """Logs an app that returned without completing its response."""
        if not self._complete and not self._disconnected:
            logger.error("asgi.response_incomplete", path=self._request.path, started=self._started)

    @property
    def _started(self) -> bool:
        return self._response is not None

    def response(self) -> web.StreamResponse:
        """What aiohttp finishes: the app's response, or 500 if it never started one.

        A started response that the app did not complete is cut off by closing the connection,
        so that the client sees it truncated rather than whole.
        """
        if self._response is None:
            return web.Response(status=500, text="Internal Server Error")
        if not self._complete:
            self._request.protocol.force_close()
        return self._response


class _Lifespan:
    """Drives the ASGI lifespan protocol of an app in a background task."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.state: dict[str, Any] = {}
        self._app = app
        self._timeout = timeout
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._settled = asyncio.Event()  # startup completed or failed
        self._up = False
        self._failure: str | None = None
        self._error: Exception | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Starts the lifespan task and waits, bounded, for ``lifespan.startup.complete``."""
        if self._task is not None:
            raise RuntimeError("the lifespan has already been started")
        self._task = asyncio.create_task(self._run(), name="asgi-lifespan")
        self._inbox.put_nowait({"type": "lifespan.startup"})
        try:
            async with asyncio.timeout(self._timeout):
                await self._settled.wait()
        except TimeoutError:
            self._failure = f"startup did not complete within {self._timeout} s"
        if not self._up:
            await self._stop()
            raise LifespanError(f"ASGI lifespan startup failed: {self._failure}") from self._error

    async def shutdown(self) -> None:
        """Asks the app to shut down and waits, bounded, for it to return; then cancels it."""
        task = self._task
        if task is None:
            return
        if task.done():
            if self._error is None:
                logger.warning("asgi.lifespan_ended_early")
        else:
            self._inbox.put_nowait({"type": "lifespan.shutdown"})
            await asyncio.wait({task}, timeout=self._timeout)
            if not task.done():
                logger.warning("asgi.shutdown_timed_out", timeout=self._timeout)
            elif self._failure is not None and self._error is None:
                logger.warning("asgi.shutdown_failed", reason=self._failure)
        await self._stop()

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than await: the task's cancellation must not be mistaken for ours.
        await asyncio.wait({task})

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": dict(_ASGI), "state": self.state}
        try:
            await self._app(scope, self._inbox.get, self._send)
        except Exception as exc:
            self._error = exc
            self._failure = self._failure or repr(exc)
            if self._up:  # a failed startup is raised by startup() instead
                logger.exception("asgi.lifespan_failed")
        finally:
            if not self._settled.is_set():
                self._failure = self._failure or "the app returned before startup completed"
                self._settled.set()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            self._failure = message.get("message") or kind
        self._up = self._up or kind == "lifespan.startup.complete"
        if kind.startswith("lifespan.startup."):
            self._settled.set()
