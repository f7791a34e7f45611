"""The sandbox's page and its endpoints, served by the service's own HTTP server.

``/`` is a static page (HTML, JavaScript and CSS shipped in the package, no build step). It
follows the workspace over server-sent events (``/sandbox/stream``): what the person viewing it
sees, at each change, and the "Under the hood" panel about once a second. What they do comes
back as small JSON posts, each turned into the request Slack would send (``events``). The posts
must be JSON from this page's own origin, and every endpoint answers only a loopback host name,
so another site can neither drive the sandbox nor read it (by DNS rebinding).
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bot.runtime.scripted_model import ScriptedModel
from channels.sandbox.events import EventSource
from channels.sandbox.hood import Hood
from channels.sandbox.slack_api import Call, Json
from channels.sandbox.workspace import person, view_for, visible_channels

STATIC = Path(__file__).parent / "static"
#: How often the panel refreshes, and the least time between two updates of the page.
HOOD_EVERY_S = 1.0
COALESCE_S = 0.05
CALLS_SHOWN = 30

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Changes:
    """A version number that goes up at every change, and a wait for the next one."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def after(self, version: int, at_most_s: float) -> None:
        """Returns once the version is past ``version``, or after ``at_most_s`` seconds."""
        if self.version != version:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most_s):
                await self._event.wait()


class BadRequest(web.HTTPBadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(text=json.dumps({"error": reason}), content_type="application/json")


@dataclass
class SandboxPage:
    """Serves the page, its stream and its actions over the workspace and the service."""

    events: EventSource
    demo: ScriptedModel
    #: The service's side of the panel, once the service runs.
    hood: Hood | None = None
    changes: Changes = field(default_factory=Changes)
    _closing: bool = False

    def routes(self) -> list[web.AbstractRouteDef]:
        posts: dict[str, Handler] = {
            "say": self._say,
            "action": self._action,
            "shortcut": self._shortcut,
            "submit": self._submit,
            "dismiss": self._dismiss,
            "home": self._home,
            "stop": self._stop,
            "demo": self._demo,
        }
        return [
            web.get("/", self._index),
            web.get("/sandbox/stream", _loopback_only(self._stream)),
            web.static("/sandbox/static", STATIC),
            *(web.post(f"/sandbox/{name}", _json_only(h)) for name, h in posts.items()),
        ]

    def close(self) -> None:
        """Ends every open stream (the page reconnects to whatever runs next)."""
        self._closing = True
        self.changes.bump()

    async def _index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    # The stream -------------------------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        user = _person(request.query.get("as"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        seen, hood_due = -1, 0.0
        with contextlib.suppress(ConnectionError):
            while not self._closing:
                if self.changes.version != seen:
                    seen = self.changes.version
                    await _send(response, "workspace", view_for(self.events.api, user))
                if time.monotonic() >= hood_due:
                    await _send(response, "hood", await self._hood(user))
                    hood_due = time.monotonic() + HOOD_EVERY_S
                await self.changes.after(seen, max(0.0, hood_due - time.monotonic()))
                await asyncio.sleep(COALESCE_S)  # a burst of changes (a stream) is sent once
        return response

    async def _hood(self, user: str) -> Json:
        """The panel as ``user`` may see it: nothing of a channel they are not in."""
        seen = {c.id for c in visible_channels(user)}
        service = await self.hood.read(seen) if self.hood is not None else {}
        calls = [c for c in self.events.api.calls[-CALLS_SHOWN:] if _in(c, seen)]
        return service | {
            "calls": [_call(c) for c in reversed(calls)],
            "requests": [asdict(s) for s in self.events.sent],
            "demo": {"hung": self.demo.hung},
        }

    # Actions ----------------------------------------------------------------------------------

    async def _say(self, request: web.Request) -> web.StreamResponse:
        """A line typed in the composer: a slash command, or a message (in a thread or not)."""
        body = await _body(request)
        user, channel = _person(body.get("as")), _channel(body)
        text = _text(body, "text")
        if text.startswith("/"):
            return web.json_response({"reply": await self.events.command(user, channel, text)})
        thread_ts = body.get("thread_ts") or None
        await self.events.message(user, channel, text, thread_ts=_optional(thread_ts))
        return web.json_response({"ok": True})

    async def _action(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        action = body.get("action")
        if not isinstance(action, dict) or not isinstance(action.get("action_id"), str):
            raise BadRequest("action must be an object with an action_id")
        await self.events.action(_person(body.get("as")), _channel(body), _text(body, "ts"), action)
        return web.json_response({"ok": True})

    async def _shortcut(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        user, channel = _person(body.get("as")), _channel(body)
        callback = _text(body, "callback_id")
        await self.events.shortcut(user, channel, _text(body, "ts"), callback)
        return web.json_response({"ok": True})

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        values = body.get("values")
        if not isinstance(values, dict):
            raise BadRequest("values must be an object")
        errors = await self.events.submit(_person(body.get("as")), _text(body, "view_id"), values)
        return web.json_response({"errors": errors})

    async def _dismiss(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        view = self.events.api.views.get(_text(body, "view_id"))
        if view is not None and view.get("user") == _person(body.get("as")):
            self.events.api.close_view(str(view["id"]))
        return web.json_response({"ok": True})

    async def _home(self, request: web.Request) -> web.StreamResponse:
        await self.events.open_home(_person((await _body(request)).get("as")))
        return web.json_response({"ok": True})

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        user, channel = _person(body.get("as")), _channel(body)
        await self.events.stop(user, channel, _text(body, "thread_ts"))
        return web.json_response({"ok": True})

    async def _demo(self, request: web.Request) -> web.StreamResponse:
        """Hangs the demo agent's model (it stops answering mid-word), or lets it answer."""
        if (await _body(request)).get("hung"):
            self.demo.hang()
        else:
            self.demo.answer()
        self.changes.bump()
        return web.json_response({"hung": self.demo.hung})


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _loopback_only(handler: Handler) -> Handler:
    """Answers only requests addressed to a loopback name (a rebound DNS name is refused)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if urlsplit(f"//{request.host}").hostname not in LOOPBACK:
            raise web.HTTPForbidden(text="the sandbox answers 127.0.0.1 and localhost only")
        return await handler(request)

    return guarded


def _json_only(handler: Handler) -> Handler:
    """Accepts only JSON posted from the page's own origin (a form on another site can
    neither send JSON nor pass as this origin), to a loopback name."""

    @_loopback_only
    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            raise BadRequest("send JSON")
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="another origin")
        try:
            return await handler(request)
        except ValueError:
            raise BadRequest("not JSON") from None

    return guarded


async def _body(request: web.Request) -> dict[str, Any]:
    """The posted JSON, which must be an object (``[]`` or ``"x"`` is refused)."""
    body = await request.json()
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object")
    return body


async def _send(response: web.StreamResponse, event: str, data: Any) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


def _person(value: object) -> str:
    if not isinstance(value, str) or person(value) is None:
        raise BadRequest("as must be one of the workspace's people")
    return value


def _channel(body: dict[str, Any]) -> str:
    channel = _text(body, "channel")
    if channel not in {c.id for c in visible_channels(_person(body.get("as")))}:
        raise BadRequest("no such channel for this person")
    return channel


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{key} must be a non-empty string")
    return value


def _optional(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _in(call: Call, channel_ids: set[str]) -> bool:
    """Whether ``call`` is about no channel, or about one of ``channel_ids``."""
    channel = call.args.get("channel") or call.args.get("channel_id")
    return not channel or channel in channel_ids


def _call(call: Call) -> Json:
    """A Web API call the service made, in a line: its method and what it was about."""
    args = call.args
    detail = [str(args[k]) for k in ("channel", "channel_id", "user_id", "ts") if args.get(k)]
    metadata = args.get("metadata")
    if isinstance(metadata, dict) and metadata.get("event_type"):
        detail.append(str(metadata["event_type"]))
    if args.get("status"):
        detail.append(f"status={args['status']}")
    text = str(args.get("text") or args.get("markdown_text") or "")
    return {"method": call.method, "detail": " ".join(detail), "text": text[:80]}
