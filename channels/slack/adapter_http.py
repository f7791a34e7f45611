"""POST /slack/events: events, slash commands and interactivity, all on Bolt's single path."""

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response

from channels.slack.gateway import SlackGateway

EVENTS_PATH = "/slack/events"


def slack_routes(gateway: SlackGateway) -> list[web.RouteDef]:
    async def events(request: web.Request) -> web.Response:
        raw = await request.read()  # bytes: the signature is checked before any decoding
        response = await gateway.handle_http(raw, request.query_string, request.headers)
        return await to_aiohttp_response(response)

    return [web.post(EVENTS_PATH, events)]
