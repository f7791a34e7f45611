"""A local stand-in for Slack's Web API: an aiohttp server on 127.0.0.1 that records every call.

It serves the methods threadwork uses, keeps the messages it was sent (threads, metadata), and
can be told to answer the next calls of a method with a 429 (Retry-After), a 500, or a 500 after
performing the call (as when Slack acts but the answer is lost), or with one of Slack's error
codes (``{"ok": false, "error": "not_in_channel"}``). With ``max_text`` set, a message whose
text is longer is refused as ``msg_too_long``, as Slack does.
"""

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from aiohttp import WSMsgType, web

BOT_USER = "UBOT"
BOT_ID = "BBOT"
TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-test-token"


#: A "status" that closes the connection without any answer.
DROP = 0


class ConnectionDropped(Exception):
    """Raised to hang up on the client mid-request."""


@dataclass
class Call:
    method: str
    args: dict[str, Any]


@dataclass
class Failure:
    status: int
    retry_after: int | None = None
    #: Perform the call first, then fail: the caller cannot know it happened.
    after_effect: bool = False
    #: Answer Slack's ``{"ok": false, "error": ...}`` with this code (and ``status``).
    error: str | None = None


@dataclass
class SlackStandIn:
    """The fake Slack. ``url`` is the Web API base URL to hand to slack_sdk."""

    calls: list[Call] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    channels_of: dict[str, list[str]] = field(default_factory=dict)
    #: Each channel's members (conversations.members); a channel not here is not found.
    members: dict[str, set[str]] = field(default_factory=dict)
    failures: dict[str, deque[Failure]] = field(default_factory=dict)
    #: Agent sessions by (channel, thread_ts): title, initiator, username and status.
    sessions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: The longest message text chat.postMessage and chat.update accept (None: any).
    max_text: int | None = None
    #: The most messages conversations.replies/history return per call, whatever ``limit``
    #: asks (Slack gives apps distributed outside the Marketplace 15); None: ``limit`` alone.
    page_limit: int | None = None
    #: Seconds every answer is held back after the call took effect (a slow Slack: a process
    #: killed meanwhile cannot know whether its call landed).
    delay: float = 0.0
    #: Time as the service sees it, so message ts line up with leases (a FakeClock in tests).
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _last_us: int = 0
    socket: web.WebSocketResponse | None = None
    socket_connected: asyncio.Event = field(default_factory=asyncio.Event)
    socket_acks: "asyncio.Queue[dict[str, Any]]" = field(default_factory=asyncio.Queue)
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started above
        self.url = f"http://127.0.0.1:{port}/api/"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail(
        self,
        method: str,
        status: int = 200,
        *,
        retry_after: int | None = None,
        times: int = 1,
        after_effect: bool = False,
        error: str | None = None,
    ) -> None:
        queue = self.failures.setdefault(method, deque())
        queue.extend(Failure(status, retry_after, after_effect, error) for _ in range(times))

    def next_ts(self) -> str:
        """A message ts at the clock's time, strictly increasing like Slack's."""
        # In whole microseconds: float steps of 1e-6 at 1.7e9 s round two ts into one.
        now_us = (self.clock() - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        self._last_us = max(now_us, self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def add_message(
        self,
        channel: str,
        user: str,
        text: str,
        thread_ts: str | None = None,
        bot_id: str | None = None,
    ) -> dict[str, Any]:
        """A message that exists in Slack (e.g. one whose event never reached threadwork)."""
        message = {
            "type": "message",
            "channel": channel,
            "ts": self.next_ts(),
            "user": user,
            "text": text,
        }
        if thread_ts:
            message["thread_ts"] = thread_ts
        if bot_id:
            message["bot_id"] = bot_id
        self.messages.append(message)
        return message

    def posts(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Messages the bot posted, in order."""
        return [
            m
            for m in self.messages
            if m.get("user") == BOT_USER and (channel is None or m["channel"] == channel)
        ]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        expected = APP_TOKEN if method == "apps.connections.open" else TOKEN
        if request.headers.get("Authorization") != f"Bearer {expected}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        args = await self._args(request)
        self.calls.append(Call(method, args))
        failure = self._next_failure(method)
        try:
            if failure and not failure.after_effect:
                return self._failure_response(failure)
            handler = getattr(self, "_" + method.replace(".", "_"), None)
            body = handler(args) if handler else {"ok": False, "error": "unknown_method"}
            if failure:
                return self._failure_response(failure)
            if self.delay:
                await asyncio.sleep(self.delay)
        except ConnectionDropped:
            assert request.transport is not None
            request.transport.close()
            raise web.HTTPServiceUnavailable from None
        return web.json_response(body)

    async def _args(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        raw = await request.text()
        if request.content_type == "application/json" and raw:
            args |= json.loads(raw)
        elif raw:
            args |= {k: v[0] for k, v in parse_qs(raw).items()}
        for key in ("blocks", "metadata", "view"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        return args

    def _next_failure(self, method: str) -> Failure | None:
        queue = self.failures.get(method)
        return queue.popleft() if queue else None

    def _failure_response(self, failure: Failure) -> web.Response:
        if failure.status == DROP:
            raise ConnectionDropped
        if failure.error is not None:
            return web.json_response({"ok": False, "error": failure.error}, status=failure.status)
        if failure.status == 429:
            headers = {"Retry-After": str(failure.retry_after or 1)}
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers=headers
            )
        return web.Response(status=failure.status, text="upstream trouble")

    # The Web API methods -------------------------------------------------------------------

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

    async def push(self, envelope: dict[str, Any]) -> None:
        assert self.socket is not None
        await self.socket.send_json(envelope)

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.url.replace("http://", "ws://").replace("/api/", "/socket")}

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "team_id": "T1",
            "user": "threadwork",
        }

    def _too_long(self, args: dict[str, Any]) -> bool:
        return self.max_text is not None and len(args.get("text") or "") > self.max_text

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._too_long(args):
            return {"ok": False, "error": "msg_too_long"}
        message = {
            "type": "message",
            "channel": args["channel"],
            "ts": self.next_ts(),
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "text": args.get("text", ""),
            "blocks": args.get("blocks"),
            "metadata": args.get("metadata"),
        }
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        self.messages.append(message)
        return {"ok": True, "channel": args["channel"], "ts": message["ts"], "message": message}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._too_long(args):
            return {"ok": False, "error": "msg_too_long"}
        for message in self.messages:
            if message["channel"] == args["channel"] and message["ts"] == args["ts"]:
                message["text"] = args.get("text", message["text"])
                message["blocks"] = args.get("blocks", message.get("blocks"))
                return {"ok": True, "channel": args["channel"], "ts": args["ts"]}
        return {"ok": False, "error": "message_not_found"}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self.next_ts()}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
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

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
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

    def _page(self, found: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
        """At most ``limit`` (and ``page_limit``) of ``found``, saying whether more are left."""
        size = min(int(args.get("limit") or 100), self.page_limit or 1000)
        page = found[:size]
        return {"ok": True, "messages": self._shown(page, args), "has_more": len(found) > size}

    def _shown(self, messages: list[dict[str, Any]], args: dict[str, Any]) -> list[dict[str, Any]]:
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        return [{k: v for k, v in m.items() if with_metadata or k != "metadata"} for m in messages]

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(args["user"])
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": {"id": args["user"], **user}}

    def _users_conversations(self, args: dict[str, Any]) -> dict[str, Any]:
        ids = self.channels_of.get(args.get("user", ""), [])
        return {"ok": True, "channels": [{"id": c} for c in ids]}

    def _conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        members = self.members.get(args.get("channel", ""))
        if members is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "members": sorted(members), "response_metadata": {"next_cursor": ""}}

    def join(self, user: str, channel: str) -> None:
        """Makes ``user`` a member of ``channel`` (the service hears it from an event)."""
        self.members.setdefault(channel, set()).add(user)

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "view": {"id": "V1", **args["view"]}}

    # Agent sessions and streaming ---------------------------------------------------------

    def session_statuses(self, channel: str, thread_ts: str) -> list[str]:
        """Every status one thread's session showed, in order: set by agents.sessions.setStatus,
        or by chat.stopStream (its ``session_status``, else Slack's default, active)."""
        return list(self.sessions.get((channel, thread_ts), {}).get("history", []))

    def _show(self, key: tuple[str, str], status: str) -> None:
        session = self.sessions.setdefault(key, {"title": None})
        session["status"] = status
        history = session.setdefault("history", [])
        if not history or history[-1] != status:  # the same status again shows no change
            history.append(status)

    def _agents_sessions_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        """Creates the thread's session if needed (its title, initiator and name are kept from
        that first call, as Slack does) and sets its status."""
        status = args.get("status")
        if status not in ("processing", "active", "suspended", "closed"):
            return {"ok": False, "error": "invalid_status"}
        if not args.get("thread_ts"):
            return {"ok": False, "error": "thread_ts_required"}
        key = (str(args.get("channel_id")), str(args["thread_ts"]))
        session = self.sessions.setdefault(
            key,
            {k: args.get(k) for k in ("title", "initiator_user_id", "username", "icon_emoji")},
        )
        self._show(key, status)
        return {"ok": True, "status": status, "agent_status": status, "title": session["title"]}

    def _agents_sessions_rename(self, args: dict[str, Any]) -> dict[str, Any]:
        session = self.sessions.get((str(args.get("channel_id")), str(args.get("thread_ts"))))
        if session is None:
            return {"ok": False, "error": "session_not_found"}
        session["title"] = args["title"]
        return {"ok": True, "title": args["title"]}

    def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        """Posts a message in streaming state; its text grows with each append."""
        if not args.get("recipient_user_id") or not args.get("recipient_team_id"):
            missing = "user" if not args.get("recipient_user_id") else "team"
            return {"ok": False, "error": f"missing_recipient_{missing}_id"}
        message = {
            "type": "message",
            "channel": args["channel"],
            "ts": self.next_ts(),
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "thread_ts": args["thread_ts"],
            "text": _streamed(args),
            "streaming": True,
            "username": args.get("username"),
        }
        self.messages.append(message)
        return {"ok": True, "channel": args["channel"], "ts": message["ts"]}

    def _streaming(self, args: dict[str, Any]) -> dict[str, Any]:
        """The message a stream call names, its text grown by the call's; or Slack's error."""
        for message in self.messages:
            if message["channel"] == args["channel"] and message["ts"] == args["ts"]:
                if not message.get("streaming"):
                    return {"ok": False, "error": "message_not_in_streaming_state"}
                message["text"] += _streamed(args)
                return message
        return {"ok": False, "error": "message_not_found"}

    def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        if message.get("ok") is False:
            return message
        return {"ok": True, "channel": args["channel"], "ts": args["ts"]}

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        if message.get("ok") is False:
            return message
        message["streaming"] = False
        key = (str(message["channel"]), str(message["thread_ts"]))
        self._show(key, str(args.get("session_status") or "active"))
        return {"ok": True, "channel": args["channel"], "ts": args["ts"], "message": message}

    def stop_streams(self, channel: str, thread_ts: str) -> list[str]:
        """Ends every stream in the thread, as a click on Stop does; returns their ts."""
        stopped = []
        for message in self.messages:
            if message.get("streaming") and (message["channel"], message.get("thread_ts")) == (
                channel,
                thread_ts,
            ):
                message["streaming"] = False
                stopped.append(str(message["ts"]))
        return stopped

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "view": {"id": "V2", **args["view"]}}


def _streamed(args: dict[str, Any]) -> str:
    """The text a stream call carries: its ``markdown_text`` and its markdown chunks, and a
    line per task update chunk (its title), as Slack renders them in the message."""
    text = str(args.get("markdown_text") or "")
    for chunk in args.get("chunks") or []:
        if chunk.get("type") == "markdown_text":
            text += str(chunk.get("text", ""))
        elif chunk.get("type") == "task_update":
            text += f"\n{chunk.get('title', '')}"
    return text
