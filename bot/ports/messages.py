"""The messages stored from task threads: read, and recorded once each."""

from collections.abc import Sequence
from typing import Protocol

from bot.task import ThreadMessage


class MessageReads(Protocol):
    """The messages stored from task threads."""

    async def list_messages(self, task_id: int) -> list[ThreadMessage]: ...


class MessageWrites(Protocol):
    """Messages stored from task threads, once each."""

    async def record_message(self, message: ThreadMessage) -> bool:
        """Stores a thread message; False when (channel, ts) was already stored."""
        ...

    async def save_message(self, message: ThreadMessage) -> None:
        """Stores a thread message, or replaces the stored text of (channel, ts): a streamed
        message's event may be seen before the stream completes."""
        ...

    async def record_messages(self, messages: Sequence[ThreadMessage]) -> set[tuple[str, str]]:
        """Stores thread messages in one statement; the (channel, ts) of those new here."""
        ...
