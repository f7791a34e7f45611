"""Slack's Web API for one workspace held in memory: an aiohttp server on 127.0.0.1.

It answers every method threadwork calls (messages and threads, members, users, modals, App
Home, agent sessions and streaming, Socket Mode's connection) the way Slack does, and keeps
what it was sent: the workspace's messages, ephemeral replies, open modals, each person's App
Home and each thread's session. ``threadwork sandbox`` runs the service against it, and the
tests do too (``tests/slack/standin.py`` adds failure injection): one implementation.

With ``max_text`` set, a message whose text is longer is refused as ``msg_too_long``, and with
``page_limit`` thread and channel reads return at most that many messages, as Slack does.
Whoever watches it (``watch``) is called after every change.
"""

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from aiohttp import WSMsgType, web

from channels.sandbox.slack_streams import BOT_ID, BOT_USER, StreamingMethods

__all__ = ["APP_TOKEN", "BOT_ID", "BOT_USER", "TEAM_ID", "TOKEN", "Call", "SlackWebApi"]

TEAM_ID = "T1"
#: The tokens the tests' workspace accepts; the sandbox makes its own at each start.
TOKEN = "xoxb-test-token"  # noqa: S105  # a fixed test value, no credential
APP_TOKEN = "xapp-1-test-token"  # noqa: S105  # a fixed test value, no credential

Json = dict[str, Any]


@dataclass
class Call:
    """One Web API call as received: its method and its arguments, parsed."""

    method: str
    args: Json


def _wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class SlackWebApi(StreamingMethods):
    """The workspace's Web API. ``url`` is the base URL to hand to slack_sdk once started."""

    calls: list[Call] = field(default_factory=list)
    messages: list[Json] = field(default_factory=list)
    users: dict[str, Json] = field(default_factory=dict)
    channels_of: dict[str, list[str]] = field(default_factory=dict)
    #: Each channel's members (conversations.members); a channel not here is not found.
    members: dict[str, set[str]] = field(default_factory=dict)
    #: Agent sessions by (channel, thread_ts): title, initiator, username and status.
    sessions: dict[tuple[str, str], Json] = field(default_factory=dict)
    #: Replies only their ``user`` sees (chat.postEphemeral), oldest first.
    ephemerals: list[Json] = field(default_factory=list)
    #: Modals open now (views.open), by view id, each with the ``user`` it was opened for.
    views: dict[str, Json] = field(default_factory=dict)
    #: Each person's App Home as last published (views.publish).
    homes: dict[str, Json] = field(default_factory=dict)
    #: Whose action each trigger_id came from, so a modal opens for that person.
    triggers: dict[str, str] = field(default_factory=dict)
    #: The longest message text chat.postMessage and chat.update accept (None: any).
    max_text: int | None = None
    #: The most messages conversations.replies/history return per call, whatever ``limit``
    #: asks (Slack gives apps distributed outside the Marketplace 15); None: ``limit`` alone.
    page_limit: int | None = None
    #: Time as the service sees it, so message ts line up with leases (a FakeClock in tests).
    clock: Callable[[], datetime] = field(default=_wall_clock)
    #: The most calls ``calls`` keeps, the oldest dropped first (None: every call).
    max_calls: int | None = None
    #: The bot token and the app-level token this workspace accepts.
    token: str = TOKEN
    app_token: str = APP_TOKEN
    socket: web.WebSocketResponse | None = None
    socket_connected: asyncio.Event = field(default_factory=asyncio.Event)
    socket_acks: "asyncio.Queue[Json]" = field(default_factory=asyncio.Queue)
    url: str = ""
    _last_us: int = 0
    _views_opened: int = 0
    _watchers: list[Callable[[], None]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves the Web API; returns its base URL (``http://127.0.0.1:PORT/api/``)."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started above
        self.url = f"http://{host}:{bound}/api/"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def watch(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` after every change to the workspace."""
        self._watchers.append(callback)

    def changed(self) -> None:
        for callback in self._watchers:
            callback()

    def next_ts(self) -> str:
        """A message ts at the clock's time, strictly increasing like Slack's."""
        # In whole microseconds: float steps of 1e-6 at 1.7e9 s round two ts into one.
        now_us = (self.clock() - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        self._last_us = max(now_us, self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def resume_ts(self, ts: str) -> None:
        """Makes every later ts come after ``ts`` (the newest of a restored workspace)."""
        seconds, _, micros = ts.partition(".")
        self._last_us = max(self._last_us, int(seconds) * 1_000_000 + int(micros.ljust(6, "0")))

    def add_message(
        self,
        channel: str,
        user: str,
        text: str,
        thread_ts: str | None = None,
        bot_id: str | None = None,
    ) -> Json:
        """A message that exists in Slack: a person's post, or one whose event never came."""
        message = {"type": "message", "channel": channel, "ts": self.next_ts(), "user": user}
        message["text"] = text
        if thread_ts:
            message["thread_ts"] = thread_ts
        if bot_id:
            message["bot_id"] = bot_id
        self.messages.append(message)
        self.changed()
        return message

    def add_ephemeral(self, channel: str, user: str, text: str, command: str | None = None) -> Json:
        """A reply only ``user`` sees: the answer to the slash ``command`` they typed."""
        reply = {"channel": channel, "user": user, "text": text, "ts": self.next_ts()}
        if command:
            reply["command"] = command
        self.ephemerals.append(reply)
        self.changed()
        return reply

    def posts(self, channel: str | None = None) -> list[Json]:
        """Messages the bot posted, in order."""
        return [
            m
            for m in self.messages
            if m.get("user") == BOT_USER and (channel is None or m["channel"] == channel)
        ]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def join(self, user: str, channel: str) -> None:
        """Makes ``user`` a member of ``channel`` (the service hears it from an event)."""
        self.members.setdefault(channel, set()).add(user)

    def close_view(self, view_id: str) -> Json | None:
        """Closes a modal (submitted without errors, or dismissed); returns it."""
        view = self.views.pop(view_id, None)
        self.changed()
        return view

    # Serving ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        expected = self.app_token if method == "apps.connections.open" else self.token
        if request.headers.get("Authorization") != f"Bearer {expected}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        args = await self._args(request)
        self.calls.append(Call(method, args))
        if self.max_calls is not None and len(self.calls) > self.max_calls:
            del self.calls[0]
        return await self.answer(request, method, args)

    async def answer(self, request: web.Request, method: str, args: Json) -> web.StreamResponse:
        """Performs the call and answers it (the tests' stand-in may fail it instead)."""
        return web.json_response(self.perform(method, args))

    def perform(self, method: str, args: Json) -> Json:
        """The effect of one call on the workspace, and Slack's answer."""
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        body: Json = handler(args) if handler else {"ok": False, "error": "unknown_method"}
        self.changed()
        return body

    async def _args(self, request: web.Request) -> Json:
        args: Json = dict(request.query)
        raw = await request.text()
        if request.content_type == "application/json" and raw:
            args |= json.loads(raw)
        elif raw:
            args |= {k: v[0] for k, v in parse_qs(raw).items()}
        for key in ("blocks", "metadata", "view", "chunks"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        return args

    # Socket Mode ------------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        """Slack's side of a Socket Mode connection: hello, then envelopes out and acks in."""
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.socket = socket
        await socket.send_json({"type": "hello", "num_connections": 1, "debug_info": {}})
        self.socket_connected.set()
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await self.socket_acks.put(json.loads(message.data))
        return socket

    async def push(self, envelope: Json) -> None:
        assert self.socket is not None
        await self.socket.send_json(envelope)

    def _apps_connections_open(self, args: Json) -> Json:
        return {"ok": True, "url": self.url.replace("http://", "ws://").replace("/api/", "/socket")}

    # The Web API methods ----------------------------------------------------------------------

    def _auth_test(self, args: Json) -> Json:
        return {
            "ok": True,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "team_id": TEAM_ID,
            "user": "threadwork",
        }

    def _too_long(self, args: Json) -> bool:
        return self.max_text is not None and len(args.get("text") or "") > self.max_text

    def _chat_postMessage(self, args: Json) -> Json:
        if self._too_long(args):
            return {"ok": False, "error": "msg_too_long"}
        message = self._bot_message(
            args["channel"],
            text=args.get("text", ""),
            blocks=args.get("blocks"),
            metadata=args.get("metadata"),
        )
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        if args.get("username"):  # chat:write.customize: an agent's post under its own name
            message["username"] = args["username"]
        self.messages.append(message)
        return {"ok": True, "channel": args["channel"], "ts": message["ts"], "message": message}

    def _chat_update(self, args: Json) -> Json:
        if self._too_long(args):
            return {"ok": False, "error": "msg_too_long"}
        for message in self.messages:
            if message["channel"] == args["channel"] and message["ts"] == args["ts"]:
                message["text"] = args.get("text", message["text"])
                message["blocks"] = args.get("blocks", message.get("blocks"))
                return {"ok": True, "channel": args["channel"], "ts": args["ts"]}
        return {"ok": False, "error": "message_not_found"}

    def _chat_postEphemeral(self, args: Json) -> Json:
        reply = {"channel": args.get("channel"), "user": args.get("user")}
        reply |= {"text": args.get("text", ""), "ts": self.next_ts()}
        if args.get("thread_ts"):
            reply["thread_ts"] = args["thread_ts"]
        self.ephemerals.append(reply)
        return {"ok": True, "message_ts": reply["ts"]}

    def _conversations_replies(self, args: Json) -> Json:
        """The thread's first message, then its replies in (oldest, latest), oldest first."""
        root, oldest = args["ts"], float(args.get("oldest", 0))
        latest = float(args.get("latest") or "inf")
        thread = [
            m
            for m in self.messages
            if m["channel"] == args["channel"] and (m["ts"] == root or m.get("thread_ts") == root)
        ]
        found = [m for m in thread if m["ts"] == root or oldest < float(m["ts"]) < latest]
        return self._page(found, args)

    def _conversations_history(self, args: Json) -> Json:
        """The channel's top-level messages in (oldest, latest), newest first."""
        oldest, latest = float(args.get("oldest", 0)), float(args.get("latest") or "inf")
        top = [
            m
            for m in self.messages
            if m["channel"] == args["channel"]
            and "thread_ts" not in m
            and oldest < float(m["ts"]) < latest
        ]
        return self._page(list(reversed(top)), args)

    def _page(self, found: list[Json], args: Json) -> Json:
        """At most ``limit`` (and ``page_limit``) of ``found``, saying whether more are left."""
        size = min(int(args.get("limit") or 100), self.page_limit or 1000)
        page = found[:size]
        return {"ok": True, "messages": self._shown(page, args), "has_more": len(found) > size}

    def _shown(self, messages: list[Json], args: Json) -> list[Json]:
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        return [{k: v for k, v in m.items() if with_metadata or k != "metadata"} for m in messages]

    def _users_info(self, args: Json) -> Json:
        user = self.users.get(args["user"])
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": {"id": args["user"], **user}}

    def _users_conversations(self, args: Json) -> Json:
        ids = self.channels_of.get(args.get("user", ""), [])
        return {"ok": True, "channels": [{"id": c} for c in ids]}

    def _conversations_members(self, args: Json) -> Json:
        members = self.members.get(args.get("channel", ""))
        if members is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "members": sorted(members), "response_metadata": {"next_cursor": ""}}

    def _views_open(self, args: Json) -> Json:
        """Opens a modal for whoever's action the trigger_id came from."""
        self._views_opened += 1
        view = {"id": f"V{self._views_opened}", **args["view"]}
        self.views[view["id"]] = view | {"user": self.triggers.get(str(args.get("trigger_id")))}
        return {"ok": True, "view": view}

    def _views_publish(self, args: Json) -> Json:
        view = {"id": f"VH{args.get('user_id', '')}", **args["view"]}
        self.homes[str(args.get("user_id"))] = view
        return {"ok": True, "view": view}
