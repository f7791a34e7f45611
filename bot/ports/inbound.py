"""The ids of inbound chat events already processed, so a redelivery is seen once."""

from datetime import datetime
from typing import Protocol


class InboundEventIds(Protocol):
    """The ids of inbound chat events already processed; each call is its own transaction."""

    async def remember_inbound_event(self, event_id: str, at: datetime) -> bool:
        """Records ``event_id``; False when it was recorded before (a redelivery)."""
        ...

    async def forget_inbound_event(self, event_id: str) -> None:
        """Forgets an event whose processing failed, so the platform's retry is processed."""
        ...

    async def prune_inbound_event_ids(self, before: datetime) -> int:
        """Forgets the ids received before ``before``; returns how many."""
        ...
