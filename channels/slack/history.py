"""Reads of Slack threads and channels, a page at a time, each page paid for from one budget.

conversations.replies and conversations.history are Tier 3 (about 50 a minute) for internal and
Marketplace apps, but 1 a minute with at most 15 messages a call for apps distributed outside
the Marketplace. Every read takes a token from the budget shared by every replica first; when
there is none, ``HistorySpent`` says how long to wait, and nothing was asked of Slack. Slack's
own 429 on a read says the same, with its Retry-After.

A page is never taken for everything: Slack may return fewer messages than asked, so a reader
goes on only from where the page it got ends, for as long as Slack says ``has_more``. A thread
reads oldest first (``oldest`` moves up); a channel reads newest first (``latest`` moves down).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.budget import Budget

#: Messages asked for per call: the most an app distributed outside the Marketplace may ask
#: for, so the same request is valid for every kind of app.
PAGE_LIMIT = 15

Message = dict[str, Any]


class HistorySpent(Exception):
    """No read may be made now: the budget is spent (``reason`` "history_budget") or Slack
    answered 429 ("ratelimited"); ``retry_after`` seconds until one may."""

    def __init__(self, retry_after: float, reason: str = "history_budget") -> None:
        super().__init__(f"{reason}: a read is due in {retry_after:.1f}s")
        self.retry_after = retry_after
        self.reason = reason


@dataclass(frozen=True)
class Page:
    """One answer of Slack's: its messages, and whether more lie beyond them."""

    messages: list[Message]
    has_more: bool


@dataclass
class Window:
    """The part of a conversation still to be read, by message ts (both ends exclusive)."""

    oldest: str
    latest: str | None = None

    def after_replies(self, page: Page) -> bool:
        """Moves ``oldest`` past a thread page (oldest first); False when it did not move."""
        newer = [m["ts"] for m in page.messages if float(m["ts"]) > float(self.oldest)]
        if not newer:
            return False
        self.oldest = max(newer, key=float)
        return True

    def after_history(self, page: Page) -> bool:
        """Moves ``latest`` below a channel page (newest first); False when it did not move."""
        older = [m["ts"] for m in page.messages if self.latest is None or _before(m, self.latest)]
        if not older:
            return False
        self.latest = min(older, key=float)
        return True


def _before(message: Message, ts: str) -> bool:
    return float(message["ts"]) < float(ts)


class HistoryPages:
    """Budgeted page reads of conversations.replies and conversations.history."""

    def __init__(self, client: AsyncWebClient, budget: Budget) -> None:
        self._client = client
        self._budget = budget
        #: Pages read so far (each one a call to Slack).
        self.reads = 0

    async def replies(
        self, channel: str, thread_ts: str, window: Window, metadata: bool = False
    ) -> Page:
        """The thread's next page after ``window.oldest`` (with its first message, which
        Slack always includes); raises HistorySpent when the budget has no read."""
        await self._take()
        with _rate_limited():
            response = await self._client.conversations_replies(
                channel=channel,
                ts=thread_ts,
                oldest=window.oldest,
                include_all_metadata=metadata,
                limit=PAGE_LIMIT,
            )
        return _page(response.data)

    async def history(self, channel: str, window: Window, metadata: bool = False) -> Page:
        """The channel's next page (its top-level messages, newest first) inside ``window``;
        raises HistorySpent when the budget has no read."""
        await self._take()
        with _rate_limited():
            response = await self._client.conversations_history(
                channel=channel,
                oldest=window.oldest,
                latest=window.latest,  # None: up to now (the SDK leaves None out)
                include_all_metadata=metadata,
                limit=PAGE_LIMIT,
            )
        return _page(response.data)

    async def _take(self) -> None:
        wait = await self._budget.take()
        if wait is not None:
            raise HistorySpent(wait)
        self.reads += 1


@contextmanager
def _rate_limited() -> Iterator[None]:
    """Slack's 429 on a read comes out as HistorySpent, with its Retry-After."""
    try:
        yield
    except SlackApiError as exc:
        if exc.response.status_code != 429:
            raise
        headers = exc.response.headers or {}
        retry_after = headers.get("Retry-After", headers.get("retry-after", 1))
        raise HistorySpent(float(retry_after), reason="ratelimited") from exc


def _page(data: Any) -> Page:
    body = data if isinstance(data, dict) else {}
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict) and "ts" in m]
    return Page(messages, bool(body.get("has_more")))
