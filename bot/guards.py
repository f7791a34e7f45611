"""The checks a task's use cases make before they write: the task and the agent exist, the
agent holds the claim, and the status it asks for is one an agent may set.

Each raises a domain error a person can read; none writes anything.
"""

from bot.agents import Agent
from bot.errors import IllegalTransition, InvalidInput, NotClaimHolder, NotFound, Superseded
from bot.ports import Reader
from bot.status import TaskStatus
from bot.task import Task, TaskRef


async def require_task(reader: Reader, ref: TaskRef) -> Task:
    """Returns the task ``ref`` names or raises NotFound."""
    task = await reader.get_task(ref)
    if task is None:
        raise NotFound(f"There is no task {ref}.")
    return task


async def require_agent(reader: Reader, name: str) -> Agent:
    """Returns the enabled agent called ``name`` or raises saying why it cannot take work."""
    agent = await reader.get_agent(name)
    if agent is None:
        raise NotFound(f"There is no agent named `{name}`; `/task-admin agent list` shows them.")
    if not agent.enabled:
        raise InvalidInput(f"Agent `{name}` is disabled and cannot take tasks.")
    return agent


def check_agent_may_set(status: TaskStatus, note: str | None, may_close: bool) -> None:
    """Agents move work up to in_review, or to blocked with a reason; people close and cancel."""
    if status == TaskStatus.CANCELED:
        raise IllegalTransition("Agents cannot cancel tasks; a person can.")
    if status == TaskStatus.DONE and not may_close:
        raise IllegalTransition(
            "Only a person can mark a task done in this channel; move it to in_review instead."
        )
    if status == TaskStatus.BLOCKED and not (note and note.strip()):
        raise InvalidInput("Say why the task is blocked: pass a `note` with the reason.")


def check_claim(task: Task, agent: str, epoch: int | None) -> None:
    """Raises unless ``agent`` holds the claim on ``task`` at ``epoch`` (when given). A call
    fenced with an epoch that was replaced (a re-dispatch, a reassignment, a Stop) is refused as
    superseded first, whoever holds the claim now."""
    if epoch is not None and epoch != task.lease_epoch and task.assignee == agent:
        raise Superseded(
            f"superseded: epoch {epoch} of {task.ref} was replaced by epoch {task.lease_epoch}; "
            "this run no longer holds the task."
        )
    if task.claimed_by != agent:
        if task.assignee == agent:
            raise NotClaimHolder(
                f"{task.ref} is {task.status} and its claim was cleared; "
                "a person must reassign or unblock it before you can change it."
            )
        raise NotClaimHolder(
            f"{task.ref} is not claimed by `{agent}`; only its assignee can change it."
        )
    if epoch is not None and epoch != task.lease_epoch:
        raise Superseded(
            f"superseded: epoch {epoch} of {task.ref} was replaced by epoch {task.lease_epoch}; "
            "this run no longer holds the task."
        )
