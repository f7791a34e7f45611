"""People's actions in the sandbox, sent to the service as Slack sends them: signed requests.

Each action becomes the Events API callback, slash command or interactivity payload Slack would
send, signed with the sandbox's own signing secret (v0 HMAC-SHA256), and posted to the
service's ``/slack/events``: the same gateway, listeners and replies as with Slack. What Slack
itself does first (store a person's message, end the streams a Stop ends) is done to the
workspace before the request goes out. Every request is logged for the "Under the hood" panel.
"""

import hashlib
import hmac
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

from channels.sandbox.slack_api import BOT_USER, TEAM_ID, Json, SlackWebApi
from channels.sandbox.workspace import CHANNELS, PEOPLE, person

#: The slash commands the app declares (manifest.yml).
COMMANDS = ("/task", "/task-admin")
#: Requests kept for the page's panel.
KEPT_REQUESTS = 100
_MENTION = re.compile(r"(?<![\w<])@(?P<name>[a-z0-9][a-z0-9._-]*)")


def slack_escaped(text: str, mention_labels: bool = False) -> str:
    """``text`` as Slack sends it: ``&``, ``<`` and ``>`` escaped, and ``@name`` of the
    app or a person turned into a mention (``<@U…>``, or ``<@U…|name>`` in a slash command)."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    ids = {p.name: p.id for p in PEOPLE} | {"threadwork": BOT_USER}

    def mention(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in ids:
            return match[0]
        return f"<@{ids[name]}|{name}>" if mention_labels else f"<@{ids[name]}>"

    return _MENTION.sub(mention, escaped)


@dataclass(frozen=True)
class Sent:
    """One request the sandbox sent to the gateway, as the panel lists it."""

    kind: str
    status: int
    ms: float
    at: float


@dataclass
class EventSource:
    """Sends people's actions to the service's gateway at ``url``, signed with ``secret``."""

    api: SlackWebApi
    secret: str = field(repr=False)
    http: aiohttp.ClientSession
    #: The service's ``/slack/events``, known once it listens.
    url: str = ""
    sent: deque[Sent] = field(default_factory=lambda: deque(maxlen=KEPT_REQUESTS))
    _ids: "itertools.count[int]" = field(default_factory=lambda: itertools.count(1))

    # Messages and events ----------------------------------------------------------------------

    async def message(
        self, user: str, channel: str, text: str, thread_ts: str | None = None
    ) -> Json:
        """A person's post: stored in the channel (or thread), then announced as a message
        event, and as an ``app_mention`` too when it mentions the app."""
        stored = self.api.add_message(channel, user, slack_escaped(text), thread_ts=thread_ts)
        kind = "group" if any(c.id == channel and c.private for c in CHANNELS) else "channel"
        await self.event({"type": "message", "channel_type": kind} | stored)
        if f"<@{BOT_USER}>" in stored["text"]:
            await self.event(stored | {"type": "app_mention"})
        return stored

    async def open_home(self, user: str) -> None:
        """The person opened the app's Home tab."""
        await self.event(
            {"type": "app_home_opened", "user": user, "channel": f"D{user}", "tab": "home"}
        )

    async def stop(self, user: str, channel: str, thread_ts: str) -> None:
        """The person pressed Stop on the thread's agent session: Slack ends its streams, then
        tells the app which."""
        streams = self.api.stop_streams(channel, thread_ts)
        self.api.changed()
        event = {"type": "agent_session_stopped", "channel": channel, "thread_ts": thread_ts}
        await self.event(event | {"user": user, "streaming_message_ts": streams})

    async def event(self, event: Json) -> int:
        """One Events API callback; returns the HTTP status."""
        n = next(self._ids)
        body = {
            "token": "sandbox",
            "team_id": TEAM_ID,
            "api_app_id": "A0SANDBOX",
            "type": "event_callback",
            "event_id": f"Ev{int(time.time())}{n:06d}",
            "event_time": int(time.time()),
            "event": event | {"event_ts": self.api.next_ts()},
            "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER, "is_bot": True}],
        }
        status, _ = await self._post(str(event["type"]), json.dumps(body), "application/json")
        return status

    # Slash commands ---------------------------------------------------------------------------

    async def command(self, user: str, channel: str, line: str) -> str:
        """A slash command typed in ``channel``; its reply, shown to ``user`` alone, is kept in
        the workspace and returned."""
        command, _, text = line.strip().partition(" ")
        if command not in COMMANDS:
            reply = f"`{command}` is not a valid command. Try `/task help` or `/task-admin help`."
            self.api.add_ephemeral(channel, user, reply, command=line)
            return reply
        trigger = self._trigger(user)
        form = {
            "token": "sandbox",
            "team_id": TEAM_ID,
            "channel_id": channel,
            "user_id": user,
            "user_name": _name(user),
            "command": command,
            "text": slack_escaped(text.strip(), mention_labels=True),
            "trigger_id": trigger,
            "response_url": f"http://sandbox.invalid/commands/{trigger}",
        }
        status, raw = await self._post(command, urlencode(form), _FORM)
        reply = _reply_text(status, raw)
        if reply:
            self.api.add_ephemeral(channel, user, reply, command=line)
        return reply

    # Interactivity ----------------------------------------------------------------------------

    async def action(self, user: str, channel: str, message_ts: str, action: Json) -> None:
        """A click on a button, or a choice in a menu, of a message's blocks."""
        message = self._message(channel, message_ts)
        payload = self._interaction("block_actions", user)
        payload |= {
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "channel": {"id": channel},
            "message": message,
            "actions": [action | {"action_ts": self.api.next_ts()}],
        }
        await self.interact(payload)

    async def shortcut(self, user: str, channel: str, message_ts: str, callback_id: str) -> None:
        """A message shortcut ("Create task from message") used on a message."""
        payload = self._interaction("message_action", user)
        payload |= {
            "callback_id": callback_id,
            "channel": {"id": channel},
            "message": self._message(channel, message_ts),
            "message_ts": message_ts,
        }
        await self.interact(payload)

    async def submit(self, user: str, view_id: str, values: dict[str, Json]) -> Json:
        """Submits an open modal with the person's ``values`` (by block, then action id);
        returns the field errors to show, or closes the modal and returns none."""
        view = self.api.views.get(view_id)
        if view is None:
            return {}
        sent = {k: view[k] for k in ("id", "type", "callback_id", "private_metadata", "title")}
        payload = self._interaction("view_submission", user)
        payload["view"] = sent | {"state": {"values": values}}
        status, raw = await self.interact(payload)
        answer: Json = json.loads(raw) if status == 200 and raw.strip() else {}
        if answer.get("response_action") == "errors":
            return dict(answer.get("errors") or {})
        self.api.close_view(view_id)
        return {}

    async def interact(self, payload: Json) -> tuple[int, str]:
        """One interactivity request, its payload form-encoded as Slack sends it."""
        return await self._post(
            str(payload["type"]), urlencode({"payload": json.dumps(payload)}), _FORM
        )

    def _interaction(self, kind: str, user: str) -> Json:
        return {
            "type": kind,
            "token": "sandbox",
            "api_app_id": "A0SANDBOX",
            "team": {"id": TEAM_ID, "domain": "sandbox"},
            "user": {"id": user, "username": _name(user), "team_id": TEAM_ID},
            "trigger_id": self._trigger(user),
            "response_url": f"http://sandbox.invalid/actions/{next(self._ids)}",
        }

    def _message(self, channel: str, ts: str) -> Json:
        for message in self.api.messages:
            if message["channel"] == channel and message["ts"] == ts:
                return {k: v for k, v in message.items() if k != "metadata"}
        return {"type": "message", "ts": ts, "text": ""}

    def _trigger(self, user: str) -> str:
        """A trigger id for an action of ``user``: a modal it opens opens for them."""
        trigger = f"{next(self._ids)}.sandbox.{time.monotonic_ns()}"
        self.api.triggers[trigger] = user
        return trigger

    # Signing and sending ----------------------------------------------------------------------

    def signed(self, body: str) -> dict[str, str]:
        """The headers Slack sends: v0 HMAC-SHA256 of ``v0:timestamp:body``."""
        ts = str(int(time.time()))
        digest = hmac.new(self.secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256)
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest.hexdigest()}"}

    async def _post(self, kind: str, body: str, content_type: str) -> tuple[int, str]:
        started = time.perf_counter()
        headers = {"Content-Type": content_type} | self.signed(body)
        async with self.http.post(self.url, data=body.encode(), headers=headers) as response:
            raw = await response.text()
        ms = (time.perf_counter() - started) * 1000
        self.sent.appendleft(Sent(kind, response.status, round(ms, 1), time.time()))
        self.api.changed()
        return response.status, raw


_FORM = "application/x-www-form-urlencoded"


def _name(user: str) -> str:
    found = person(user)
    return found.name if found else user


def _reply_text(status: int, raw: str) -> str:
    """The ephemeral text a slash command's answer carries (Bolt answers with JSON)."""
    if status != 200:
        return f":warning: the app answered HTTP {status}."
    try:
        answer: Any = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return raw
    return str(answer.get("text") or "") if isinstance(answer, dict) else ""
