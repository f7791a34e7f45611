"""A built-in agent's words streamed into its task's thread: chat.startStream, appendStream and
stopStream, under the agent's name.

Slack addresses a stream in a channel to a person of a team: the task's assigner, in the
workspace ``auth.test`` names (asked once). Whatever Slack or the network answers instead
becomes ``StreamUnavailable``, and the run posts the words through the outbox. The words are
escaped here, as every agent's words are (``render.escape``), so nothing in them pings or
links; what the core stores stays plain.
"""

from collections.abc import Awaitable, Iterator

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.runtime.stream import Stream, StreamUnavailable
from bot.session import SessionStatus
from bot.task import Task
from channels.slack.parsing import error_code
from channels.slack.render import escape

logger = structlog.get_logger(__name__)

#: The most characters Slack takes in one call's ``markdown_text``.
MAX_STREAM_CHARS = 12_000
AGENT_ICON = ":robot_face:"


def escaped_pieces(text: str, limit: int = MAX_STREAM_CHARS) -> Iterator[str]:
    """``text`` escaped, in pieces of at most ``limit`` characters that never cut an entity."""
    piece: list[str] = []
    size = 0
    for char in text:
        shown = escape(char)
        if piece and size + len(shown) > limit:
            yield "".join(piece)
            piece, size = [], 0
        piece.append(shown)
        size += len(shown)
    if piece:
        yield "".join(piece)


class SlackStream:
    """Implements ``bot.runtime.stream.Stream`` on one streaming message."""

    def __init__(self, client: AsyncWebClient, channel: str, ts: str) -> None:
        self._client = client
        self._channel = channel
        self.ts = ts

    async def append(self, text: str) -> None:
        for piece in escaped_pieces(text):
            await _call(
                self._client.chat_appendStream(
                    channel=self._channel, ts=self.ts, markdown_text=piece
                )
            )

    async def stop(self, session: SessionStatus | None = None) -> str:
        status = session.value if session is not None else None
        await _call(
            self._client.chat_stopStream(channel=self._channel, ts=self.ts, session_status=status)
        )
        return self.ts


class SlackThreadStreams:
    """Implements ``bot.runtime.stream.ThreadStreams`` with chat.startStream."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._team_id: str | None = None

    async def start(self, task: Task, agent: str, display_name: str) -> Stream:
        if task.thread_ts is None or task.assigned_by is None:
            raise StreamUnavailable("no thread or no assigner to address the stream to")
        team = await self._team()
        response = await _call(
            self._client.chat_startStream(
                channel=task.channel_id,
                thread_ts=task.thread_ts,
                recipient_user_id=task.assigned_by,
                recipient_team_id=team,
                username=display_name,
                icon_emoji=AGENT_ICON,
            )
        )
        logger.debug("stream.started", agent=agent, channel=task.channel_id, ts=response["ts"])
        return SlackStream(self._client, task.channel_id, str(response["ts"]))

    async def _team(self) -> str:
        """The workspace's team id, asked of auth.test the first time it is needed."""
        if self._team_id is None:
            response = await _call(self._client.auth_test())
            self._team_id = str(response["team_id"])
        return self._team_id


async def _call(request: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """Awaits one Web API call; Slack's refusals and network failures come out as
    StreamUnavailable, named by Slack's error code or the exception's class (never a secret)."""
    try:
        return await request
    except SlackApiError as exc:
        raise StreamUnavailable(error_code(exc)) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StreamUnavailable(type(exc).__name__) from exc
