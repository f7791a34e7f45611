"""Channel membership as Slack says it, for the core's authorization (``bot.access.Membership``).

Members of a channel come from ``conversations.members``, cached per channel for a short TTL
and kept current between reads by ``member_joined_channel`` / ``member_left_channel`` events.
A channel Slack will not list (a private channel the app is not in, an error) has no members
here, and is asked again at the next check: being unable to check is never a reason to show a
task.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from channels.slack.parsing import error_code

logger = structlog.get_logger(__name__)

#: How long a channel's member list is trusted without asking Slack again.
MEMBERS_TTL_SECONDS = 60.0
#: Pages of conversations.members read for one channel, at most (1,000 members a page).
MAX_PAGES = 20


@dataclass
class _Members:
    users: set[str]
    read_at: float


class SlackMembership:
    """Implements ``bot.access.Membership`` with conversations.members and member events."""

    def __init__(
        self,
        client: AsyncWebClient,
        ttl: float = MEMBERS_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._monotonic = monotonic
        self._channels: dict[str, _Members] = {}

    async def is_member(self, user_id: str, channel_id: str) -> bool:
        members = self._channels.get(channel_id)
        if members is None or self._monotonic() - members.read_at >= self._ttl:
            users = await self._read(channel_id)
            if users is None:
                return False  # not cached: the next check asks Slack again
            members = _Members(users, self._monotonic())
            self._channels[channel_id] = members
        return user_id in members.users

    def joined(self, user_id: str, channel_id: str) -> None:
        """A ``member_joined_channel`` event: the user is a member from now on."""
        members = self._channels.get(channel_id)
        if members is not None:
            members.users.add(user_id)

    def left(self, user_id: str, channel_id: str) -> None:
        """A ``member_left_channel`` event: the user is no longer a member."""
        members = self._channels.get(channel_id)
        if members is not None:
            members.users.discard(user_id)

    async def _read(self, channel_id: str) -> set[str] | None:
        users: set[str] = set()
        cursor: str | None = None
        try:
            for _ in range(MAX_PAGES):
                response = await self._client.conversations_members(
                    channel=channel_id, limit=1000, cursor=cursor
                )
                users.update(str(u) for u in response.get("members") or [])
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
        except SlackApiError as exc:
            logger.warning("membership.unreadable", channel=channel_id, error=error_code(exc))
            return None
        return users
