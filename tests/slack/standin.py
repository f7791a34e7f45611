"""The Slack stand-in of the tests: the sandbox's Web API (``channels.sandbox.slack_api``, one
implementation), plus failure injection.

It can be told to answer the next calls of a method with a 429 (Retry-After), a 500, or a 500
after performing the call (as when Slack acts but the answer is lost), or with one of Slack's
error codes (``{"ok": false, "error": "not_in_channel"}``), and to hold every answer back.
"""

import asyncio
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from channels.sandbox.slack_api import APP_TOKEN, BOT_ID, BOT_USER, TOKEN, Call, Json, SlackWebApi

__all__ = [
    "APP_TOKEN",
    "BOT_ID",
    "BOT_USER",
    "DROP",
    "TOKEN",
    "Call",
    "ConnectionDropped",
    "Failure",
    "SlackStandIn",
]

#: A "status" that closes the connection without any answer.
DROP = 0


class ConnectionDropped(Exception):
    """Raised to hang up on the client mid-request."""


@dataclass
class Failure:
    status: int
    retry_after: int | None = None
    #: Perform the call first, then fail: the caller cannot know it happened.
    after_effect: bool = False
    #: Answer Slack's ``{"ok": false, "error": ...}`` with this code (and ``status``).
    error: str | None = None


@dataclass
class SlackStandIn(SlackWebApi):
    """The workspace's Web API, answering as told by ``fail`` and ``delay``."""

    failures: dict[str, deque[Failure]] = field(default_factory=dict)
    #: Seconds every answer is held back after the call took effect (a slow Slack: a process
    #: killed meanwhile cannot know whether its call landed).
    delay: float = 0.0

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

    async def answer(self, request: web.Request, method: str, args: Json) -> web.StreamResponse:
        failure = self._next_failure(method)
        try:
            if failure and not failure.after_effect:
                return self._failure_response(failure)
            body = self.perform(method, args)
            if failure:
                return self._failure_response(failure)
            if self.delay:
                await asyncio.sleep(self.delay)
        except ConnectionDropped:
            assert request.transport is not None
            request.transport.close()
            raise web.HTTPServiceUnavailable from None
        return web.json_response(body)

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
