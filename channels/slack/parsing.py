"""Slack payloads become typed values here, once; nothing past this module reads raw dicts."""

import re
import shlex
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.errors import InvalidInput
from bot.task import TaskRef, storable

_USER_MENTION = re.compile(r"^<@(?P<id>[UW][A-Z0-9]+)(?:\|(?P<label>[^>]*))?>$")
_NUMBER = re.compile(r"^#?(?P<n>\d+)$")


def unescape(text: str) -> str:
    """Slack escapes &, < and > in message and command text; this undoes it, once, here (and
    drops NUL characters, which no database can store)."""
    plain = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return storable(plain)


@dataclass(frozen=True)
class SlashCommand:
    """A slash command invocation."""

    command: str
    text: str
    user_id: str
    channel_id: str
    trigger_id: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "SlashCommand":
        return cls(
            command=str(body.get("command", "")),
            text=unescape(str(body.get("text", ""))).strip(),
            user_id=str(body.get("user_id", "")),
            channel_id=str(body.get("channel_id", "")),
            trigger_id=str(body.get("trigger_id", "")),
        )


@dataclass(frozen=True)
class MemberEvent:
    """Someone joined or left a channel."""

    user_id: str
    channel_id: str

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> "MemberEvent | None":
        user, channel = event.get("user"), event.get("channel")
        if isinstance(user, str) and isinstance(channel, str):
            return cls(user, channel)
        return None


@dataclass(frozen=True)
class SessionStopped:
    """Someone pressed Stop on a thread's agent session (``agent_session_stopped``)."""

    channel_id: str
    thread_ts: str
    user_id: str
    #: The app's messages that were streaming, which Slack stopped.
    streams: tuple[str, ...]

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> "SessionStopped | None":
        """None when the event lacks the thread or the user, or its fields have the wrong types."""
        channel, thread_ts, user = event.get("channel"), event.get("thread_ts"), event.get("user")
        streams = event.get("streaming_message_ts") or []
        if not all(isinstance(v, str) and v for v in (channel, thread_ts, user)):
            return None
        if not isinstance(streams, list) or not all(isinstance(ts, str) for ts in streams):
            return None
        return cls(str(channel), str(thread_ts), str(user), tuple(streams[:50]))


@dataclass(frozen=True)
class CardAction:
    """A person's use of a card control: which, with what value, by whom, from where."""

    action_id: str
    value: str
    user_id: str
    channel_id: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "CardAction | None":
        """The first action of a ``block_actions`` payload; None when it lacks what a card
        control always carries (a user, an action id and a value or selected option)."""
        actions = body.get("actions")
        user = body.get("user")
        if not (isinstance(actions, list) and actions and isinstance(actions[0], dict)):
            return None
        if not (isinstance(user, dict) and isinstance(user.get("id"), str)):
            return None
        action = actions[0]
        selected = action.get("selected_option")
        value = selected.get("value") if isinstance(selected, dict) else action.get("value")
        if not isinstance(value, str) or not isinstance(action.get("action_id"), str):
            return None
        channel = body.get("channel")
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        return cls(
            str(action["action_id"]),
            value,
            str(user["id"]),
            channel_id if isinstance(channel_id, str) else None,
        )


@dataclass(frozen=True)
class MessageEvent:
    """A message posted in a channel, possibly in a thread."""

    channel_id: str
    ts: str
    thread_ts: str | None
    user_id: str | None
    bot_id: str | None
    text: str
    subtype: str | None

    @property
    def author(self) -> str:
        return self.user_id or self.bot_id or "unknown"

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> "MessageEvent":
        """The event's fields; one of the wrong type (Slack sends strings) counts as absent."""
        return cls(
            channel_id=_string(event.get("channel")) or "",
            ts=_string(event.get("ts")) or "",
            thread_ts=_string(event.get("thread_ts")),
            user_id=_string(event.get("user")),
            bot_id=_string(event.get("bot_id")),
            text=unescape(_string(event.get("text")) or ""),
            subtype=_string(event.get("subtype")),
        )


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class UserMention:
    """``<@U123>`` or ``<@U123|label>`` as Slack escapes a mention in a slash command."""

    user_id: str
    label: str | None


def parse_user_mention(token: str) -> UserMention | None:
    """Returns the mention ``token`` holds, or None when it is not a user mention."""
    match = _USER_MENTION.match(token.strip())
    if match is None:
        return None
    return UserMention(match["id"], match["label"] or None)


def parse_task_ref(token: str, channel_id: str) -> TaskRef:
    """Reads ``7``, ``#7`` (in this channel) or a full ``C123#7``."""
    match = _NUMBER.match(token.strip())
    if match:
        return TaskRef(channel_id, int(match["n"]))
    if "#" in token:
        return TaskRef.parse(token)
    raise InvalidInput(f"`{token}` is not a task number; write it as 7 or #7.")


def split_args(text: str) -> list[str]:
    """Splits command text into words, honouring quotes; unbalanced quotes are an error."""
    try:
        return shlex.split(text)
    except ValueError:
        raise InvalidInput("A quote is not closed.") from None


def split_options(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates ``key=value`` options from positional words."""
    positional, options = [], {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.isidentifier():
            options[key.lower()] = value
        else:
            positional.append(word)
    return positional, options


def error_code(exc: SlackApiError) -> str:
    """Slack's error code, or the HTTP status when the answer was not JSON."""
    data = exc.response.data
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return f"http_{exc.response.status_code}"
