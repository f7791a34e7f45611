"""The front door for Slack requests, shared by HTTP and Socket Mode.

Checks the signature over the raw bytes (HTTP) before reading them, refuses malformed bodies
with 400 instead of Bolt's 500, acknowledges a replayed request or a redelivered event without
processing it again, and forgets one whose processing failed so that Slack's retry is processed
after all.
"""

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.clock import Clock
from bot.metrics import Metrics, NoMetrics
from bot.ports.inbound import InboundEventIds
from channels.slack.payloads import payload_problem

logger = structlog.get_logger(__name__)

#: How long an event id is remembered: far longer than Slack's retries (minutes) take.
EVENT_ID_MEMORY = timedelta(days=1)
#: How old a request's timestamp may be (either way) for its signature to count: Slack's window.
SIGNATURE_WINDOW_S = 5 * 60


def _error(status: int, message: str) -> BoltResponse:
    return BoltResponse(status=status, body=json.dumps({"error": message}))


@dataclass(frozen=True)
class SlackSignature:
    """Slack's v0 request signature: HMAC-SHA256 of ``v0:{timestamp}:{raw body}``."""

    signing_secret: str = field(repr=False)
    #: Wall-clock seconds; the window is Slack's clock against ours, never a test's fake clock.
    now: Callable[[], float] = time.time

    def verify(self, raw: bytes, timestamp: str, signature: str) -> bool:
        """Whether ``signature`` signs ``raw`` at ``timestamp``, within the last five minutes.

        Computed over the bytes as received, so a body that is not UTF-8 is judged by its
        signature like any other, never decoded first.
        """
        if not (timestamp.isascii() and timestamp.isdigit() and signature.isascii()):
            return False
        if abs(self.now() - int(timestamp)) > SIGNATURE_WINDOW_S:
            return False
        signed = b"v0:" + timestamp.encode() + b":" + raw
        digest = hmac.new(self.signing_secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(f"v0={digest}".encode(), signature.encode())


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


def _replay_key(body: dict[str, Any], signature: str | None) -> str | None:
    """The key that makes a signed request run once: slash commands and interactions.

    Events API callbacks carry an event id for that (or are idempotent, as messages are), and
    Slack's retries of them are signed afresh, so only requests without one need remembering.
    The signature covers the timestamp and the body, so it names the request on its own.
    """
    if signature is None or "event_id" in body:
        return None
    return f"request:{signature}"


def parse_body(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """The request as Slack meant it, or None when it is not a Slack payload at all."""
    try:
        text = raw.decode("utf-8")
        if content_type.startswith("application/json"):
            body = json.loads(text)
            return body if isinstance(body, dict) and "type" in body else None
        form = {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
        if "payload" in form:
            payload = json.loads(form["payload"])
            return payload if isinstance(payload, dict) and "type" in payload else None
        return form if "command" in form or "ssl_check" in form else None
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class SlackGateway:
    """Hands a raw Slack request to Bolt, exactly once per event or request."""

    app: AsyncApp
    event_ids: InboundEventIds
    clock: Clock
    signature: SlackSignature | None = None
    metrics: Metrics = field(default_factory=NoMetrics)

    async def handle_http(self, raw: bytes, query: str, headers: Mapping[str, str]) -> BoltResponse:
        """An Events API, slash command or interactivity request over HTTP.

        The signature is checked before anything reads the body: an unsigned request gets 401
        whatever its bytes, a signed one that is not a Slack payload gets 400.
        """
        signature = headers.get("X-Slack-Signature", "")
        if not self._signed_by_slack(raw, headers.get("X-Slack-Request-Timestamp", ""), signature):
            logger.warning("slack.bad_signature")
            return _error(401, "invalid signature or stale timestamp")
        body = parse_body(raw, headers.get("Content-Type", ""))
        if body is None:
            return _error(400, "not a Slack payload")
        return await self.process(body, query, dict(headers), signature=signature)

    def _signed_by_slack(self, raw: bytes, timestamp: str, signature: str) -> bool:
        return self.signature is not None and self.signature.verify(raw, timestamp, signature)

    async def handle_socket(self, body: dict[str, Any]) -> BoltResponse:
        """A Socket Mode envelope's payload (already authenticated by the connection)."""
        return await self.process(body)

    async def process(
        self,
        body: dict[str, Any],
        query: str = "",
        headers: dict[str, str | Sequence[str]] | None = None,
        signature: str | None = None,
    ) -> BoltResponse:
        """Hands a parsed payload to Bolt, once per event (and per signed request)."""
        problem = payload_problem(body)
        if problem is not None:
            logger.warning("slack.malformed_payload", type=str(body.get("type")), problem=problem)
            return _error(400, f"malformed Slack payload: {problem}")
        event_id = _event_id(body)
        once = event_id or _replay_key(body, signature)
        fresh = not once or await self.event_ids.remember_inbound_event(once, self.clock())
        if "event_id" in body:
            self.metrics.event_received(duplicate=not fresh)
        if not fresh:
            if event_id:
                logger.info("slack.redelivery_ignored", event_id=event_id)
            else:
                logger.warning("slack.replay_ignored", type=str(body.get("type")))
            return BoltResponse(status=200, body="")
        try:
            response = await self._dispatch(body, query, headers)
        except Exception:
            logger.exception("slack.dispatch_failed", type=str(body.get("type")))
            response = _error(500, "internal error; Slack's retry will be processed")
        if once and response.status >= 500:
            await self.event_ids.forget_inbound_event(once)
        return response

    async def _dispatch(
        self, body: dict[str, Any], query: str, headers: dict[str, str | Sequence[str]] | None
    ) -> BoltResponse:
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
            logger.warning("slack.malformed_payload", type=str(body.get("type")))
            return _error(400, "malformed Slack payload: an id field has the wrong type")
        return await self.app.async_dispatch(request)

    async def prune_inbound_event_ids(self) -> int:
        """Forgets event ids (and request signatures) older than a day; Slack retries within
        minutes, and a signature is good for five."""
        return await self.event_ids.prune_inbound_event_ids(self.clock() - EVENT_ID_MEMORY)
