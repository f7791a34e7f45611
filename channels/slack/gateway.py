"""The front door for Slack requests, shared by HTTP and Socket Mode.

Checks the signature (HTTP), refuses malformed bodies with 400 instead of Bolt's 500, drops
redeliveries of an event already processed, and forgets an event whose processing failed so that
Slack's retry is processed after all.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier

from bot.clock import Clock
from bot.ports import InboundEventIds

logger = structlog.get_logger(__name__)

#: How long an event id is remembered: far longer than Slack's retries (minutes) take.
EVENT_ID_MEMORY = timedelta(days=1)


def _error(status: int, message: str) -> BoltResponse:
    return BoltResponse(status=status, body=json.dumps({"error": message}))


def _event_id(body: dict[str, Any]) -> str | None:
    """The id that makes processing an event idempotent, when the event needs one.

    Message events need none: storing a message is unique on (channel, ts) in the same
    transaction that acts on it, so a redelivery changes nothing and costs one transaction less.
    """
    if not body.get("event_id"):
        return None
    if (body.get("event") or {}).get("type") == "message":
        return None
    return str(body["event_id"])


def parse_body(raw: str, content_type: str) -> dict[str, Any] | None:
    """The request as Slack meant it, or None when it is not a Slack payload at all."""
    try:
        if content_type.startswith("application/json"):
            body = json.loads(raw)
            return body if isinstance(body, dict) and "type" in body else None
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if "payload" in form:
            payload = json.loads(form["payload"])
            return payload if isinstance(payload, dict) and "type" in payload else None
        return form if "command" in form or "ssl_check" in form else None
    except (ValueError, UnicodeDecodeError):
        return None


def _id_fields_well_typed(body: dict[str, Any]) -> bool:
    """Whether every channel and user in the payload (and its event) is an id or an object
    with a string id, as Slack sends them; Bolt's own extraction raises on anything else."""
    parts = [body]
    event = body.get("event")
    if isinstance(event, dict):
        parts += [event] + [event[k] for k in ("item", "message") if isinstance(event.get(k), dict)]
    elif event is not None:
        return False
    for part in parts:
        for key in ("channel", "user"):
            value = part.get(key)
            if value is None or isinstance(value, str):
                continue
            if not (isinstance(value, dict) and isinstance(value.get("id", ""), str)):
                return False
    return True


@dataclass
class SlackGateway:
    """Hands a raw Slack request to Bolt, exactly once per event."""

    app: AsyncApp
    event_ids: InboundEventIds
    clock: Clock
    verifier: SignatureVerifier | None = None

    async def handle_http(self, raw: str, query: str, headers: Mapping[str, str]) -> BoltResponse:
        """An Events API, slash command or interactivity request over HTTP."""
        if not self._signed_by_slack(raw, headers):
            logger.warning("slack.bad_signature")
            return _error(401, "invalid signature or stale timestamp")
        body = parse_body(raw, headers.get("Content-Type", ""))
        if body is None:
            return _error(400, "not a Slack payload")
        return await self.process(body, query, dict(headers))

    def _signed_by_slack(self, raw: str, headers: Mapping[str, str]) -> bool:
        """Slack's v0 signature over the raw body, from within the last five minutes."""
        timestamp = headers.get("X-Slack-Request-Timestamp", "")
        signature = headers.get("X-Slack-Signature", "")
        if self.verifier is None or not timestamp.isdigit() or not signature:
            return False
        return self.verifier.is_valid(body=raw, timestamp=timestamp, signature=signature)

    async def handle_socket(self, body: dict[str, Any]) -> BoltResponse:
        """A Socket Mode envelope's payload (already authenticated by the connection)."""
        return await self.process(body)

    async def process(
        self,
        body: dict[str, Any],
        query: str = "",
        headers: dict[str, str | Sequence[str]] | None = None,
    ) -> BoltResponse:
        """Hands a parsed payload to Bolt, once per event."""
        if not _id_fields_well_typed(body):
            return _error(400, "malformed Slack payload: a channel or user is not an id")
        event_id = _event_id(body)
        if event_id and not await self.event_ids.remember_inbound_event(event_id, self.clock()):
            logger.info("slack.redelivery_ignored", event_id=event_id)
            return BoltResponse(status=200, body="")
        # Bolt gets the body parsed here, never the raw text. Its own parser takes any form body
        # containing the word "payload" for an interactivity payload and returns nothing, so a
        # slash command saying "payload" (or sent from a channel or by a user so named) would
        # be lost. A parsed body is what Bolt's "socket_mode" takes; Bolt reads the mode only to
        # skip its signature check, which the gateway has done, and to copy the request.
        try:
            request = AsyncBoltRequest(body=body, query=query, headers=headers, mode="socket_mode")
        except (TypeError, AttributeError, ValueError):
            # Building the request reads ids (channel, user, team ...) out of the payload; one
            # of the wrong type (a number for a channel) is a malformed payload, not our error.
            logger.warning("slack.malformed_payload", type=body.get("type"))
            return _error(400, "malformed Slack payload: an id field has the wrong type")
        response = await self.app.async_dispatch(request)
        if event_id and response.status >= 500:
            await self.event_ids.forget_inbound_event(event_id)
        return response

    async def prune_inbound_event_ids(self) -> int:
        """Forgets event ids older than a day; Slack retries within minutes."""
        return await self.event_ids.prune_inbound_event_ids(self.clock() - EVENT_ID_MEMORY)
