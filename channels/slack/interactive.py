"""Interactivity: the card's menu and buttons, the message shortcut and the modals."""

import json
from typing import Any

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import DomainError, NotAllowed
from bot.status import parse_status
from bot.task import Actor, TaskRef
from channels.slack.parsing import CardAction, error_code, unescape
from channels.slack.render import inert_reply
from channels.slack.services import SlackServices

logger = structlog.get_logger(__name__)

CREATE_TASK_SHORTCUT = "create_task_from_message"
CREATE_TASK_VIEW = "create_task_modal"
NO_ASSIGNEE = "-"


async def on_card_action(
    body: dict[str, Any], services: SlackServices, client: AsyncWebClient
) -> None:
    """Runs the card control a person used, as coming from the channel the card is in (a
    control of another channel's task is refused); a refusal comes back to them alone."""
    used = CardAction.from_body(body)
    if used is None:
        logger.warning("interactive.malformed_action", type=body.get("type"))
        return
    actor, board = Actor.user(used.user_id), services.board
    where = used.channel_id or ""  # no channel said: matches no task's channel
    try:
        if used.action_id == "task_assign":
            ref_text, _, agent = used.value.partition(" ")
            await board.assign_task(TaskRef.parse(ref_text), agent, used.user_id, in_channel=where)
        elif used.action_id == "task_cancel":
            await board.cancel_task(TaskRef.parse(used.value), actor, in_channel=where)
        elif used.action_id == "task_stop":
            stopped = await board.stop_task(
                TaskRef.parse(used.value), used.user_id, in_channel=where
            )
            if not stopped.stopped:
                text = f"{stopped.task.ref} was not being worked on; there was nothing to stop."
                await _tell(client, used.channel_id, used.user_id, text)
        elif used.action_id == "task_status_reopen":
            await board.reopen_task(TaskRef.parse(used.value), actor, in_channel=where)
        else:
            target = parse_status(used.action_id.removeprefix("task_status_"))
            await board.update_task_status(
                TaskRef.parse(used.value), target, actor, in_channel=where
            )
    except DomainError as exc:
        await _tell(client, used.channel_id, used.user_id, f":warning: {inert_reply(exc.message)}")


async def _tell(client: AsyncWebClient, channel: str | None, user_id: str, text: str) -> None:
    if channel is None:
        return
    try:
        await client.chat_postEphemeral(channel=channel, user=user_id, text=text)
    except SlackApiError as exc:
        logger.warning("interactive.reply_failed", error=error_code(exc))


async def open_create_task(
    body: dict[str, Any], services: SlackServices, client: AsyncWebClient
) -> None:
    """Opens the "Create task from message" form, prefilled from the message."""
    message = body.get("message") or {}
    text = unescape(str(message.get("text", ""))).strip()  # Slack sends it escaped
    meta = {
        "channel": body["channel"]["id"],
        "thread_ts": message.get("thread_ts") or message.get("ts"),
    }
    agents = [a for a in await services.registry.list_agents() if a.enabled][:99]
    options = [{"text": {"type": "plain_text", "text": "Nobody yet"}, "value": NO_ASSIGNEE}] + [
        {"text": {"type": "plain_text", "text": a.display_name[:75]}, "value": a.name}
        for a in agents
    ]
    title = (text.splitlines()[0] if text else "")[:150]
    view = {
        "type": "modal",
        "callback_id": CREATE_TASK_VIEW,
        "private_metadata": json.dumps(meta),
        "title": {"type": "plain_text", "text": "Create task"},
        "submit": {"type": "plain_text", "text": "Create"},
        "blocks": [
            _input(
                "title",
                "Title",
                {"type": "plain_text_input", "action_id": "value", "initial_value": title},
            ),
            _input(
                "description",
                "Description",
                {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "initial_value": text[:2900],
                },
                optional=True,
            ),
            _input(
                "assignee",
                "Assign to",
                {
                    "type": "static_select",
                    "action_id": "value",
                    "options": options,
                    "initial_option": options[0],
                },
            ),
        ],
    }
    await client.views_open(trigger_id=body["trigger_id"], view=view)


def _input(
    block_id: str, label: str, element: dict[str, Any], optional: bool = False
) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": block_id,
        "label": {"type": "plain_text", "text": label},
        "element": element,
        "optional": optional,
    }


def view_value(view: dict[str, Any], block_id: str) -> str:
    """The submitted value of an input block, for text inputs and selects alike ("" when the
    form did not send one as Slack does)."""
    block = ((view.get("state") or {}).get("values") or {}).get(block_id)
    state = block.get("value") if isinstance(block, dict) else None
    if not isinstance(state, dict):
        return ""
    selected = state.get("selected_option")
    if isinstance(selected, dict):
        return str(selected.get("value") or "")
    return str(state.get("value") or "")


#: A form whose hidden metadata is not what threadwork wrote when it opened it.
STALE_FORM: dict[str, Any] = {"response_action": "errors"}
STALE_FORM_TEXT = "This form is out of date; close it and open it again."


def form_metadata(view: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str] | None:
    """The ``keys`` threadwork stored in a form's ``private_metadata``, each a string (or
    empty); None when the metadata is not what threadwork wrote."""
    try:
        meta = json.loads(str(view.get("private_metadata") or ""))
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    values = {key: meta.get(key) for key in keys}
    if not all(v is None or isinstance(v, str) for v in values.values()):
        return None
    if not values.get(keys[0]):
        return None
    return {key: value or "" for key, value in values.items()}


async def submit_create_task(
    body: dict[str, Any], services: SlackServices
) -> dict[str, Any] | None:
    """Creates (and maybe assigns) the task; returns field errors for the form, else None."""
    view = body["view"]
    meta = form_metadata(view, ("channel", "thread_ts"))
    if meta is None:
        return STALE_FORM | {"errors": {"title": STALE_FORM_TEXT}}
    user_id = str(body["user"]["id"])
    agent = view_value(view, "assignee")
    try:
        task = await services.board.create_task(
            meta["channel"],
            view_value(view, "title"),
            Actor.user(user_id),
            description=view_value(view, "description"),
            thread_ts=meta["thread_ts"] or None,
        )
    except DomainError as exc:
        return {"response_action": "errors", "errors": {"title": exc.message}}
    try:
        if agent != NO_ASSIGNEE:
            await services.board.assign_task(task.ref, agent, user_id)
    except DomainError as exc:
        logger.warning("create_task.assign_refused", task=str(task.ref), error=exc.message)
    return None


async def submit_agent_key(body: dict[str, Any], services: SlackServices) -> dict[str, Any] | None:
    """Stores the key typed into the admin's form, for admins only. Never logs it."""
    user_id = str(body["user"]["id"])
    meta = form_metadata(body["view"], ("agent",))
    if meta is None:
        return STALE_FORM | {"errors": {"api_key": STALE_FORM_TEXT}}
    name = meta["agent"]
    try:
        key = view_value(body["view"], "api_key")
        await services.admin.set_api_key(Actor.user(user_id), name, key)
    except NotAllowed:
        return {"response_action": "errors", "errors": {"api_key": "Only admins can set keys."}}
    except DomainError as exc:
        return {"response_action": "errors", "errors": {"api_key": exc.message}}
    logger.info("agent.api_key_set", agent=name, by=user_id)
    return None
