"""The sandbox's Slack workspace: who is in it, which channels, and what each person sees.

Two channels (``#general``, and ``#private-ops``, private, which the member is not in), two
people (an admin and a member) and the app's bot user. The workspace's messages, replies,
sessions and App Homes are kept in a JSON file beside the database, so a restart shows them
again, as Slack would.
"""

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from channels.sandbox.slack_api import BOT_USER, Json, SlackWebApi

GENERAL = "C0GENERAL"
PRIVATE_OPS = "C0PRIVOPS"
ADMIN = "U0ADA"
MEMBER = "U0MIKA"
#: The Web API calls kept for the page's "Under the hood" panel (the oldest are dropped).
KEPT_CALLS = 200


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    real_name: str
    #: A threadwork admin (THREADWORK_ADMINS).
    admin: bool


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    private: bool
    topic: str
    members: frozenset[str]


PEOPLE = (
    Person(ADMIN, "ada", "Ada (admin)", admin=True),
    Person(MEMBER, "mika", "Mika (member)", admin=False),
)
CHANNELS = (
    Channel(
        GENERAL,
        "general",
        private=False,
        topic="Everyone is here. Try /task new Write the release notes",
        members=frozenset({ADMIN, MEMBER, BOT_USER}),
    ),
    Channel(
        PRIVATE_OPS,
        "private-ops",
        private=True,
        topic="Private: Ada and threadwork only. Mika cannot see its tasks.",
        members=frozenset({ADMIN, BOT_USER}),
    ),
)


def person(user_id: str) -> Person | None:
    return next((p for p in PEOPLE if p.id == user_id), None)


def seeded_api(clock: Callable[[], datetime], token: str) -> SlackWebApi:
    """The workspace's Web API with its people and channels, accepting ``token``."""
    users = {p.id: {"name": p.name, "real_name": p.real_name, "is_admin": False} for p in PEOPLE}
    users[BOT_USER] = {"name": "threadwork", "real_name": "threadwork", "is_bot": True}
    return SlackWebApi(
        users=users,
        members={c.id: set(c.members) for c in CHANNELS},
        channels_of={p.id: [c.id for c in CHANNELS if p.id in c.members] for p in PEOPLE},
        clock=clock,
        token=token,
        max_calls=KEPT_CALLS,
    )


def visible_channels(user_id: str) -> list[Channel]:
    """The channels ``user_id`` sees in the sidebar: public ones, and private ones they are in."""
    return [c for c in CHANNELS if not c.private or user_id in c.members]


def view_for(api: SlackWebApi, user_id: str) -> Json:
    """Everything ``user_id`` sees: their channels' messages, their own ephemeral replies,
    the threads' agent sessions, their App Home and the modals open for them."""
    channels = visible_channels(user_id)
    seen = {c.id for c in channels}
    return {
        "me": user_id,
        "people": [asdict(p) for p in PEOPLE],
        "channels": [
            {"id": c.id, "name": c.name, "private": c.private, "topic": c.topic} for c in channels
        ],
        "messages": [_shown(m) for m in api.messages if m["channel"] in seen],
        "ephemerals": [e for e in api.ephemerals if e["user"] == user_id and e["channel"] in seen],
        "sessions": [
            {
                "channel": channel,
                "thread_ts": ts,
                "status": s.get("status"),
                "title": s.get("title"),
            }
            | {"username": s.get("username")}
            for (channel, ts), s in api.sessions.items()
            if channel in seen
        ],
        "home": api.homes.get(user_id),
        "modals": [v for v in api.views.values() if v.get("user") == user_id],
    }


def _shown(message: Json) -> Json:
    """A message as the page shows it (its metadata is the app's, not for people)."""
    return {k: v for k, v in message.items() if k != "metadata"}


@dataclass
class WorkspaceFile:
    """Keeps the workspace beside the database, in ``<database>.slack.json``."""

    path: Path

    @classmethod
    def beside(cls, database: Path) -> "WorkspaceFile":
        return cls(database.with_name(database.name + ".slack.json"))

    def load(self, api: SlackWebApi) -> bool:
        """Restores what the file keeps into ``api``; False when there is no file yet."""
        if not self.path.exists():
            return False
        kept: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        api.messages[:] = kept.get("messages", [])
        api.ephemerals[:] = kept.get("ephemerals", [])
        api.homes.update(kept.get("homes", {}))
        for session in kept.get("sessions", []):
            api.sessions[(session.pop("channel"), session.pop("thread_ts"))] = session
        for message in api.messages:
            api.resume_ts(str(message["ts"]))
        return True

    def save(self, api: SlackWebApi) -> None:
        """Writes the workspace (to a new file, then renamed over the old one)."""
        kept = {
            "messages": api.messages,
            "ephemerals": api.ephemerals,
            "homes": api.homes,
            "sessions": [
                {"channel": channel, "thread_ts": ts, **session}
                for (channel, ts), session in api.sessions.items()
            ],
        }
        fresh = self.path.with_name(self.path.name + ".new")
        fresh.write_text(json.dumps(kept), encoding="utf-8")
        os.replace(fresh, self.path)

    def secret_key(self, new_key: Callable[[], str]) -> str:
        """The sandbox's THREADWORK_SECRET_KEY, made once and kept beside the workspace (only
        this user may read it), so agent keys stored in one run open in the next."""
        key_file = self.path.with_name(self.path.name.replace(".slack.json", ".secret-key"))
        if key_file.exists():
            return key_file.read_text(encoding="utf-8").strip()
        key = new_key()
        key_file.touch(mode=0o600)
        key_file.write_text(key, encoding="utf-8")
        return key
