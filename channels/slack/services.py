"""What the Slack listeners need, bundled once by the composition root."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.access import Access
from bot.admin import AdminDesk
from bot.board import Board
from bot.budget import Budget
from bot.clock import Clock
from bot.inbox import ReplyInbox
from bot.queries import TaskQueries
from bot.registry import AgentRegistry
from bot.supervisor import Supervisor
from channels.slack.parsing import error_code

logger = structlog.get_logger(__name__)

ADMIN_CACHE_SECONDS = 300.0


@dataclass
class AdminCheck:
    """Implements ``bot.access.AdminList``: THREADWORK_ADMINS, plus the workspace's admins and
    owners (users.info) when THREADWORK_WORKSPACE_ADMINS is on."""

    client: AsyncWebClient
    configured: frozenset[str]
    workspace_admins: bool = False
    monotonic: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, bool]] = field(default_factory=dict)

    async def is_admin(self, user_id: str) -> bool:
        if user_id in self.configured:
            return True
        if not self.workspace_admins:
            return False
        cached = self._cache.get(user_id)
        if cached and self.monotonic() - cached[0] < ADMIN_CACHE_SECONDS:
            return cached[1]
        try:
            response = await self.client.users_info(user=user_id)
        except SlackApiError as exc:
            logger.warning("admin_check.users_info_failed", user=user_id, error=error_code(exc))
            return False
        user = response.get("user") or {}
        allowed = bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))
        self._cache[user_id] = (self.monotonic(), allowed)
        return allowed


@dataclass
class SlackServices:
    """The use cases and helpers the listeners call."""

    board: Board
    registry: AgentRegistry
    queries: TaskQueries
    access: Access
    clock: Clock
    #: The Web API client, for the few listeners that call Slack themselves (forms, handles).
    client: AsyncWebClient
    supervisor: Supervisor
    inbox: ReplyInbox
    #: The admins' use cases; each checks its caller is an admin.
    admin: AdminDesk
    #: Slack's thread-read budget, shared by every replica (None: reads are not counted).
    history: Budget | None = None
