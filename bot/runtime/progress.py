"""What a built-in agent's tool calls did, as short lines for the people in the thread.

The lines go into the step's stream between the model's words (``bot.runtime.stream``): a tick
for a change made, an ellipsis for reading, a cross for a refusal, naming its reason.
"""

from bot.runtime.model import ToolCall
from bot.tools import Refused, ToolResult

#: What each reading tool is doing, as people would say it.
READING = {
    "get_task": "reading the thread",
    "list_my_tasks": "looking at its tasks",
}


def progress_line(call: ToolCall, result: ToolResult) -> str:
    """One line saying what ``call`` did, e.g. ``✓ moved to in_progress``."""
    if isinstance(result, Refused):
        return f"✗ {call.name} refused: {result.reason.value}"
    if call.name in READING:
        return f"… {READING[call.name]}"
    if call.name == "update_task_status":
        return f"✓ moved to {result.data.get('status')}"
    if call.name == "add_artifact":
        return f"✓ added artifact {result.data.get('name')}"
    if call.name == "post_update":
        return "✓ posted an update"
    return f"✓ {call.name}"
