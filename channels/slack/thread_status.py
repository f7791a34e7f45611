"""The "is working…" indicator under a task's thread while a built-in agent runs."""

from slack_sdk.web.async_client import AsyncWebClient

from bot.task import Task


class SlackThreadStatus:
    """Implements ``bot.runtime.runner.ThreadStatus`` with assistant.threads.setStatus."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client

    async def set_status(self, task: Task, status: str) -> None:
        if task.thread_ts is None:
            return
        await self._client.assistant_threads_setStatus(
            channel_id=task.channel_id, thread_ts=task.thread_ts, status=status
        )
