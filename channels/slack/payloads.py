"""The shape a Slack payload must have before Bolt and the listeners read it.

Slack always sends these fields; a payload without them is malformed (or forged by someone
holding the signing secret), and gets 400 at the gateway instead of a ``KeyError`` (500) deep in
a listener. Each check names the first thing missing, for the log and the 400's body.
"""

from typing import Any

#: Interactivity payload types, all of which come from a person: each carries ``user.id``.
INTERACTIONS = frozenset(
    {
        "block_actions",
        "block_suggestion",
        "view_submission",
        "view_closed",
        "message_action",
        "shortcut",
        "interactive_message",
        "dialog_submission",
        "dialog_cancellation",
    }
)


def payload_problem(body: dict[str, Any]) -> str | None:
    """What is wrong with ``body``'s shape, or None when Bolt and the listeners can read it."""
    if not _id_fields_well_typed(body):
        return "a channel or user is not an id"
    if "command" in body:
        return _command_problem(body)
    if body.get("type") in INTERACTIONS:
        return _interaction_problem(body)
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


def _command_problem(body: dict[str, Any]) -> str | None:
    for key in ("user_id", "channel_id"):
        if not body.get(key):
            return f"a slash command without {key}"
    return None


def _interaction_problem(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if not (isinstance(user, dict) and isinstance(user.get("id"), str) and user["id"]):
        return "an interaction without user.id"
    for part in ("view", "message", "container", "team", "channel", "state"):
        if part in body and not isinstance(body[part], dict):
            return f"an interaction whose {part} is not an object"
    kind = body["type"]
    if kind == "block_actions":
        return _actions_problem(body.get("actions"))
    if kind in ("view_submission", "view_closed"):
        return _view_problem(body.get("view"), submitted=kind == "view_submission")
    if kind == "message_action":
        channel = body.get("channel")
        if not (isinstance(channel, dict) and channel.get("id")):
            return "a message shortcut without channel.id"
        if not _has_string(body, "trigger_id"):
            return "a message shortcut without trigger_id"
        if not isinstance(body.get("message", {}), dict):
            return "a message shortcut whose message is not an object"
    return None


def _actions_problem(actions: object) -> str | None:
    """Each action names itself and carries its value (a button's, or a menu's choice)."""
    if not (isinstance(actions, list) and actions):
        return "block_actions without actions"
    for action in actions:
        if not (isinstance(action, dict) and isinstance(action.get("action_id"), str)):
            return "an action without action_id"
        if not (
            _has_string(action, "value") or _has_string(action.get("selected_option"), "value")
        ):
            return "an action without value or selected_option.value"
    return None


def _view_problem(view: object, submitted: bool) -> str | None:
    if not (isinstance(view, dict) and isinstance(view.get("callback_id"), str)):
        return "a view without callback_id"
    if not isinstance(view.get("type"), str):
        return "a view without type"
    if not isinstance(view.get("private_metadata", ""), str):
        return "a view whose private_metadata is not a string"
    state = view.get("state", {})
    if submitted and not (isinstance(state, dict) and isinstance(state.get("values"), dict)):
        return "a view submission without state.values"
    return None


def _has_string(part: object, key: str) -> bool:
    return isinstance(part, dict) and isinstance(part.get(key), str)
