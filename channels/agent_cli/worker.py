"""The worker (``threadwork worker``): waits for an external agent's work and runs a coding-agent
CLI on each dispatch attempt, up to ``concurrency`` at once.

Not to be confused with ``bot.workers``, the service's own processes heartbeating in the
``workers`` table: this worker is a client of the service, on any machine with a checkout.

It long-polls ``wait_for_work``: for any item while it has a free slot, for ``stop`` items
alone while it is full (so the dispatches wait for another worker of the same agent, or for
a slot here). A directive or re-dispatch starts an attempt (one for a newer epoch replaces the
task's running one); a ``stop`` item stops it. Every
``check_every_s`` while attempts run, it reads the tasks it holds (``list_my_tasks``) and stops
the attempts whose task moved on: canceled, reassigned, stopped, superseded (a check that fails
is logged, and the next one goes on; a refused token ends the worker). ``shutdown``
stops every command, releases each task (and those dispatched but not started yet), and ends
the session.
"""

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from bot.task import TaskRef
from bot.tools import Done
from bot.work import WakeReason
from channels.agent_cli.attempt import Attempt, Command, Stop
from channels.agent_cli.briefs import DISPATCHES, Held, WorkItem, held_tasks, work_items
from channels.agent_cli.link import Link, TokenRefused
from channels.agent_cli.workspaces import Workspaces

logger = structlog.get_logger(__name__)

#: How long one ``wait_for_work`` call waits on the service.
POLL_S = 30.0
#: How often the tasks of running attempts are read again, to stop the ones that moved on.
CHECK_EVERY_S = 2.0
#: What a full worker waits for.
STOPS_ONLY = [WakeReason.STOP.value]
#: At a shutdown, how long handing the tasks back may take (the commands are gone before).
SHUTDOWN_S = 15.0


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 1
    check_every_s: float = CHECK_EVERY_S
    poll_s: float = POLL_S


@dataclass
class _Running:
    attempt: Attempt
    task: asyncio.Task[object]


class Worker:
    """Runs ``command`` for the agent ``link`` is authenticated as."""

    def __init__(
        self, link: Link, workspaces: Workspaces, command: Command, settings: WorkerSettings
    ) -> None:
        self._link = link
        self._workspaces = workspaces
        self._command = command
        self._settings = settings
        self._running: dict[TaskRef, _Running] = {}
        #: Dispatches taken but not started yet (no free slot, or the task's old attempt is
        #: still ending), by task, in the order they came.
        self._pending: dict[TaskRef, WorkItem] = {}
        self._freed = asyncio.Event()
        self._closing = False

    @property
    def running(self) -> dict[TaskRef, Attempt]:
        return {ref: r.attempt for ref, r in self._running.items()}

    async def run(self) -> None:
        """Takes and runs work until cancelled (then call ``shutdown``), or until the service
        refuses the token (TokenRefused)."""
        loops = {
            asyncio.create_task(self._poll_loop(), name="worker-polls"),
            asyncio.create_task(self._check_loop(), name="worker-checks"),
        }
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a token refused ends the worker
        finally:
            for task in loops:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _poll_loop(self) -> None:
        while True:
            self._freed.clear()
            if len(self._running) < self._settings.concurrency:
                await self._poll(None)
            else:
                await self._poll_until_freed()

    async def _poll_until_freed(self) -> None:
        """Waits for stop items only, until one comes or a slot frees (the poll is then
        cancelled, and the service stops waiting with it)."""
        poll = asyncio.create_task(self._poll(STOPS_ONLY), name="worker-poll-stops")
        freed = asyncio.create_task(self._freed.wait(), name="worker-freed")
        await asyncio.wait({poll, freed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (freed, poll):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if poll.done() and not poll.cancelled():
            poll.result()  # a token refused ends the worker

    async def _poll(self, reasons: list[str] | None) -> None:
        arguments: dict[str, object] = {"timeout_s": self._settings.poll_s}
        if reasons is not None:
            arguments["reasons"] = reasons
        result = await self._link.call("wait_for_work", arguments)
        if not isinstance(result, Done):
            logger.warning("worker.poll_refused", refusal=result.text[:300])
            await asyncio.sleep(self._settings.check_every_s)  # back-off before asking again
            return
        for item in work_items(result.data):
            self._take(item)
        self._start_pending()

    def _take(self, item: WorkItem) -> None:
        """Acts on one item: a dispatch is queued (replacing an older attempt), a stop stops."""
        current = self._running.get(item.ref)
        if item.reason == WakeReason.STOP:
            if current is not None and current.attempt.epoch < item.epoch:
                current.attempt.stop(Stop.MOVED_ON)
            queued = self._pending.get(item.ref)
            if queued is not None and queued.epoch < item.epoch:
                del self._pending[item.ref]
            return
        if item.reason not in DISPATCHES:
            return  # a person's message, or a wait that ended: the running command goes on
        if current is not None and current.attempt.epoch >= item.epoch:
            return
        if current is not None:
            current.attempt.stop(Stop.MOVED_ON)  # superseded by this dispatch
        queued = self._pending.get(item.ref)
        if queued is None or queued.epoch < item.epoch:
            self._pending[item.ref] = item

    def _start_pending(self) -> None:
        """Starts queued dispatches while slots are free and their task has no attempt left."""
        for ref, item in list(self._pending.items()):
            if self._closing or len(self._running) >= self._settings.concurrency:
                return
            if ref in self._running:
                continue  # its older attempt is still ending
            del self._pending[ref]
            attempt = Attempt(ref, item.epoch, self._link, self._workspaces, self._command)
            task: asyncio.Task[object] = asyncio.create_task(attempt.run(), name=f"attempt-{ref}")
            self._running[ref] = _Running(attempt, task)
            task.add_done_callback(functools.partial(self._ended, ref))

    def _ended(self, ref: TaskRef, done: asyncio.Task[object]) -> None:
        running = self._running.get(ref)
        if running is not None and running.task is done:
            del self._running[ref]
        if not done.cancelled() and done.exception() is not None:
            logger.error("worker.attempt_failed", task=str(ref), exc_info=done.exception())
        self._freed.set()
        self._start_pending()

    async def _check_loop(self) -> None:
        """Stops the attempts whose task moved on, every ``check_every_s`` while any runs; a
        check that fails is logged and the next one goes on (a refused token ends it)."""
        while True:
            await asyncio.sleep(self._settings.check_every_s)  # the check's period
            if not self._running:
                continue
            try:
                await self._check()
            except TokenRefused:
                raise
            except Exception:
                logger.exception("worker.check_failed")

    async def _check(self) -> None:
        """Stops the attempts that ran before the call and whose task moved on by its answer
        (one started meanwhile is newer than the answer, which cannot speak for it)."""
        before = dict(self._running)
        result = await self._link.call("list_my_tasks", {})
        if not isinstance(result, Done):
            return
        still = {ref: r.attempt for ref, r in before.items() if self._running.get(ref) is r}
        for attempt in moved_on(still, held_tasks(result.data)):
            logger.info("worker.moved_on", task=str(attempt.ref), epoch=attempt.epoch)
            attempt.stop(Stop.MOVED_ON)

    async def shutdown(self) -> None:
        """Stops every command and releases every task taken, then ends the session. The
        releases get ``SHUTDOWN_S`` in all (the service may be away): the commands are gone
        first, whatever happens to them, and an unreleased task is left to its lease."""
        self._closing = True
        for running in self._running.values():
            running.attempt.stop(Stop.SHUTDOWN)
        tasks = [r.task for r in self._running.values()]
        try:
            async with asyncio.timeout(SHUTDOWN_S):
                if tasks:
                    await asyncio.wait(tasks)
                await self._release_pending()
        except TimeoutError:
            logger.warning(
                "worker.release_timed_out", tasks=len(self._running) + len(self._pending)
            )
            for task in tasks:
                task.cancel()  # each attempt ends its command's group on its way out
            if tasks:
                await asyncio.wait(tasks)
        await self._link.close()

    async def _release_pending(self) -> None:
        """Hands back the dispatches taken but never started."""
        for ref, item in list(self._pending.items()):
            await self._link.call("release_task", {"task": str(ref), "epoch": item.epoch})
            logger.info("worker.released", task=str(ref), epoch=item.epoch)
            del self._pending[ref]


def moved_on(attempts: Mapping[TaskRef, Attempt], mine: Mapping[TaskRef, Held]) -> list[Attempt]:
    """The ``attempts`` whose task moved on by ``mine`` (a ``list_my_tasks`` answer read after
    they started): no longer held, or held at a newer epoch. An older epoch held means the
    answer is older than the attempt, not that the task moved on."""
    return [
        attempt
        for ref, attempt in attempts.items()
        if (held := mine.get(ref)) is None or held.epoch > attempt.epoch
    ]
