"""Socket Mode: the same gateway, fed by a WebSocket instead of HTTP (no public URL needed)."""

import json

import structlog
from slack_bolt.response import BoltResponse
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from channels.slack.gateway import SlackGateway

logger = structlog.get_logger(__name__)


def envelope_reply(envelope_id: str, response: BoltResponse) -> SocketModeResponse:
    """The acknowledgement for an envelope, carrying the listener's reply when there is one."""
    if not response.body:
        return SocketModeResponse(envelope_id=envelope_id)
    content_type = response.headers.get("content-type", [""])[0]
    if content_type.startswith("application/json"):
        return SocketModeResponse(envelope_id=envelope_id, payload=json.loads(response.body))
    return SocketModeResponse(envelope_id=envelope_id, payload={"text": response.body})


def build_socket_client(
    app_token: str, web_client: AsyncWebClient, gateway: SlackGateway
) -> SocketModeClient:
    """A Socket Mode client whose every envelope goes through ``gateway``; not yet connected."""
    client = SocketModeClient(app_token=app_token, web_client=web_client)

    async def on_request(socket: SocketModeClient, request: SocketModeRequest) -> None:
        response = await gateway.handle_socket(request.payload)
        if response.status == 200:
            await socket.send_socket_mode_response(envelope_reply(request.envelope_id, response))
        elif response.status < 500:
            # Refused (malformed, or nothing listens for it): a redelivery would be refused
            # the same way, so it is acknowledged, with no reply, and not retried.
            logger.warning("socket_mode.refused", status=response.status)
            await socket.send_socket_mode_response(SocketModeResponse(request.envelope_id))
        else:
            logger.warning("socket_mode.unacknowledged", status=response.status)

    client.socket_mode_request_listeners.append(on_request)  # type: ignore[arg-type]  # the SDK types its listeners loosely
    return client
