"""What an agent does to a task it holds: post, add artifacts, report liveness, wait, spend tokens.

Every call is claim-gated like a status change: the agent must hold the claim and, when it
passes one, the current lease epoch (else ``superseded``). Posts and artifacts are progress and
renew the lease; a heartbeat says the agent is alive but is not progress.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot import outbox
from bot.clock import Clock
from bot.errors import ConfigurationError, Conflict, IllegalTransition, InvalidInput
from bot.guards import check_claim, require_task
from bot.metrics import Metrics, NoMetrics
from bot.outbox import OutboxKind, OutboxMessage
from bot.policy import load_policy_book
from bot.ports import Store, Unit
from bot.ports.tool_requests import RecordedRequest
from bot.session import SessionStatus, session_status
from bot.signal import Notify, ignore
from bot.task import (
    Actor,
    EventKind,
    LeasePolicy,
    NewEvent,
    Task,
    TaskRef,
    ThreadMessage,
    storable,
)
from bot.tool_requests import ToolRequest, prune, record_result, recorded_before, tool_request
from bot.work import (
    MAX_ARTIFACTS_PER_TASK,
    Artifact,
    Usage,
    WakeReason,
    check_artifact,
    token_kinds,
)

#: Releases of one attempt that dispatch the task again at once; later ones wait for the lapse.
MAX_RELEASES_PER_ATTEMPT = 3
#: Heartbeat events are recorded at most this often per task.
HEARTBEAT_EVERY = timedelta(seconds=15)
MAX_POST_CHARS = 3500
#: The most of a command's output a liveness report keeps (its last lines win).
MAX_OUTPUT_TAIL_CHARS = 2000


@dataclass(frozen=True)
class Release:
    """A released task, and whether it was dispatched again at once (else at its lapse)."""

    task: Task
    redispatched: bool


class AgentWork:
    """The agent-side use cases, each one transaction."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        new_key: Callable[[], str] = outbox.new_key,
        notify: Notify = ignore,
        metrics: Metrics | None = None,
        *,
        policy: LeasePolicy | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_key = new_key
        self._notify = notify
        self._metrics = metrics or NoMetrics()
        #: The global lease policy, for the directive a released task is dispatched with.
        self._policy = policy

    @asynccontextmanager
    async def _held(
        self, ref: TaskRef, agent: str, epoch: int | None
    ) -> AsyncIterator[tuple[Unit, Task]]:
        """A transaction on a task ``agent`` holds the claim for (at ``epoch``, when given)."""
        async with self._keyed(ref, agent, epoch, None) as (unit, task, _first):
            yield unit, task

    @asynccontextmanager
    async def _keyed(
        self, ref: TaskRef, agent: str, epoch: int | None, request: ToolRequest | None
    ) -> AsyncIterator[tuple[Unit, Task, RecordedRequest | None]]:
        """As ``_held``, for a call that may be keyed by ``request``. When its key was used
        before, the first call is yielded too and the claim is not checked: the caller returns
        that call's outcome and writes nothing (the call was made; its answer was lost)."""
        async with self._store.transaction() as unit:
            task = await require_task(unit, ref)
            first = await recorded_before(unit, agent, request, task.id, self._clock())
            if first is None:
                check_claim(task, agent, epoch)
            else:  # read again: a repeat that waited for the first call's commit sees its effect
                task = await require_task(unit, ref)
            yield unit, task, first
        self._notify(frozenset(unit.queued))

    async def post_update(
        self,
        ref: TaskRef,
        agent: str,
        text: str,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Posts ``text`` in the thread under the agent's name; counts as progress. Sent again
        with its ``idempotency_key``, it posts nothing and returns the task."""
        text = storable(text).strip()
        if not text:
            raise InvalidInput("An update needs some text.")
        request = tool_request(
            idempotency_key, "post_update", task=str(ref), text=text, epoch=epoch
        )
        async with self._keyed(ref, agent, epoch, request) as (unit, task, first):
            if first is not None:
                return task
            now = self._clock()
            renewed = await self._progress(unit, task, now)
            await unit.enqueue([self._post(task, agent, text[:MAX_POST_CHARS])], now)
            await record_result(unit, agent, request, {"epoch": renewed.lease_epoch})
            return renewed

    async def add_artifact(
        self,
        ref: TaskRef,
        agent: str,
        name: str,
        kind: str,
        uri: str | None = None,
        content: str | None = None,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> Artifact:
        """Records an artifact (a link or content), announces it in the thread; progress. Sent
        again with its ``idempotency_key``, it returns the artifact first recorded."""
        name, kind = storable(name), storable(kind)
        uri = storable(uri) if uri is not None else None
        content = storable(content) if content is not None else None
        check_artifact(name, kind, uri, content)
        request = tool_request(
            idempotency_key,
            "add_artifact",
            task=str(ref),
            name=name,
            kind=kind,
            uri=uri,
            content=content,
            epoch=epoch,
        )
        async with self._keyed(ref, agent, epoch, request) as (unit, task, first):
            if first is not None:
                return await _first_artifact(unit, first)
            if await unit.count_artifacts(task.id) >= MAX_ARTIFACTS_PER_TASK:
                raise InvalidInput(
                    f"{ref} already has {MAX_ARTIFACTS_PER_TASK} artifacts, the most a task keeps."
                )
            now = self._clock()
            artifact = await unit.insert_artifact(
                task.id, name.strip(), kind.strip(), uri, content, agent, now
            )
            data = {
                "artifact_id": artifact.id,
                "name": artifact.name,
                "kind": artifact.kind,
                "uri": uri,
            }
            await unit.append_events(
                [NewEvent(task.id, EventKind.ARTIFACT_ADDED, Actor.agent(agent), now, data)]
            )
            await self._progress(unit, task, now)
            where = f" <{uri}>" if uri else f" ({len(content or '')} characters stored)"
            note = f":paperclip: Added artifact *{artifact.name}* ({artifact.kind}){where}"
            # The notice is rendered from these fields, so the name stays inert and the URI
            # is linked only if safe; ``note`` is what the thread stores.
            notice = data | {"content_chars": None if content is None else len(content)}
            await unit.enqueue([self._post(task, agent, note, artifact=notice)], now)
            await record_result(unit, agent, request, {"artifact_id": artifact.id})
            return artifact

    async def heartbeat(self, ref: TaskRef, agent: str, epoch: int) -> bool:
        """Marks the agent alive while it generates; at most one event and card update per 15 s."""
        async with self._store.transaction() as unit:
            task = await require_task(unit, ref)
            now = self._clock()
            due = task.alive_at is None or now - task.alive_at >= HEARTBEAT_EVERY
            if not due or not await unit.set_alive(task.id, agent, epoch, now):
                return False
            await unit.append_events(
                [NewEvent(task.id, EventKind.HEARTBEAT, Actor.agent(agent), now, {})]
            )
            refreshed = await unit.get_task_by_id(task.id)
            assert refreshed is not None
            await unit.enqueue([outbox.card_update(refreshed, self._new_key())], now)
        self._notify(frozenset(unit.queued))
        return True

    async def record_tool_call(
        self, ref: TaskRef, agent: str, epoch: int, data: dict[str, object]
    ) -> bool:
        """Records a call of one of the agent's tool servers in the task's events, and that the
        agent is alive: liveness, never progress (the lease is not renewed). False, recording
        nothing, when the run no longer holds the task at ``epoch``."""
        async with self._store.transaction() as unit:
            task = await require_task(unit, ref)
            now = self._clock()
            if not await unit.set_alive(task.id, agent, epoch, now):
                return False
            event = NewEvent(task.id, EventKind.TOOL_CALLED, Actor.agent(agent), now, data)
            await unit.append_events([event])
        return True

    async def report_unavailable_tools(
        self, ref: TaskRef, agent: str, epoch: int, failures: dict[str, str], text: str
    ) -> bool:
        """Posts ``text`` in the thread, saying which of the agent's tool servers did not start
        (``failures``: label -> why), once per task: a later run whose same servers fail says
        nothing again. A notice, not progress (the lease is not renewed). False when it was
        said before, or the run no longer holds the task."""
        async with self._store.transaction() as unit:
            task = await require_task(unit, ref)
            if task.claimed_by != agent or task.lease_epoch != epoch:
                return False
            # The same servers again: said already, whatever their errors say this time (a
            # server's stderr often holds times or paths that differ at every start).
            told = [
                e
                for e in await unit.list_events(task.id)
                if e.kind == EventKind.TOOLS_UNAVAILABLE
                and sorted(e.data.get("failures") or {}) == sorted(failures)
            ]
            if told:
                return False
            now = self._clock()
            data = {"failures": failures, "epoch": epoch}
            event = NewEvent(task.id, EventKind.TOOLS_UNAVAILABLE, Actor.agent(agent), now, data)
            await unit.append_events([event])
            await unit.enqueue([self._post(task, agent, storable(text)[:MAX_POST_CHARS])], now)
        self._notify(frozenset(unit.queued))
        return True

    async def report_liveness(self, ref: TaskRef, agent: str, epoch: int, output_tail: str) -> bool:
        """Marks the agent's attempt alive with the last lines its command printed (the card's
        output tail): at most one event and card update per 15 s per attempt, never progress
        (a command that only prints is still caught by the lease). False when it was too soon
        and nothing was written."""
        tail = storable(output_tail)[-MAX_OUTPUT_TAIL_CHARS:]
        async with self._held(ref, agent, epoch) as (unit, task):
            now = self._clock()
            # A new attempt's first report is always due; then one per HEARTBEAT_EVERY.
            recent = task.alive_at is not None and now - task.alive_at < HEARTBEAT_EVERY
            if recent and task.output_tail_epoch == epoch:
                return False
            alive = await unit.record_output_tail(task.id, agent, epoch, tail, now)
            if alive is None:
                raise Conflict(f"{ref} changed meanwhile; try again.")
            data = {"output_lines": len(tail.splitlines())}
            event = NewEvent(task.id, EventKind.HEARTBEAT, Actor.agent(agent), now, data)
            await unit.append_events([event])
            await unit.enqueue([outbox.card_update(alive, self._new_key())], now)
        return True

    async def release_task(
        self, ref: TaskRef, agent: str, epoch: int, idempotency_key: str | None = None
    ) -> Release:
        """Hands back an attempt the agent's worker cannot finish (it is shutting down): the
        task is dispatched to the agent again at once, at a new epoch and without counting an
        attempt, so another worker takes it now rather than when the lease lapses. Whatever
        the old attempt still sends is refused as superseded. Only a task under a lease can be
        released; sent again with its ``idempotency_key``, it releases nothing more.

        An attempt is released at once ``MAX_RELEASES_PER_ATTEMPT`` times; a release after
        those wakes no one and leaves the lease running from the last progress, so workers that
        always hand a task back cannot keep it circling: its lapse counts the attempt, and the
        last one blocks the task."""
        if self._policy is None:
            raise ConfigurationError("releasing a task needs the lease policy")
        request = tool_request(idempotency_key, "release_task", task=str(ref), epoch=epoch)
        async with self._keyed(ref, agent, epoch, request) as (unit, task, first):
            if first is not None:
                return Release(task, bool((first.result or {}).get("redispatched", True)))
            if not task.leased:
                raise IllegalTransition(
                    f"{ref} is {task.status}; only a task under a lease can be released."
                )
            now = self._clock()
            # Past its free releases, an attempt is handed to the lease: no one is woken, and
            # the lapse re-dispatches it as a counted attempt (or blocks it after the last).
            at_lapse = await _releases(unit, task) >= MAX_RELEASES_PER_ATTEMPT
            [fresh] = await unit.next_epochs(1)
            renewed = (task.last_progress_at or now) if at_lapse else now
            released = await unit.compare_and_set(
                task.id,
                {"status": task.status, "lease_epoch": epoch, "claimed_by": agent},
                {"lease_epoch": fresh, "last_progress_at": renewed, "awaiting_input_since": None},
                now,
            )
            if released is None:
                raise Conflict(f"{ref} changed while it was being released; try again.")
            data: dict[str, object] = {
                "agent": agent,
                "attempt": task.attempts,
                "epoch": epoch,
                "new_epoch": fresh,
            }
            if at_lapse:
                data["at_lapse"] = True
            event = NewEvent(task.id, EventKind.RELEASED, Actor.agent(agent), now, data)
            await unit.append_events([event])
            effects = [outbox.card_update(released, self._new_key())]
            if not at_lapse:
                await unit.enqueue_wakeups([(task.id, agent, WakeReason.REDISPATCH, fresh)], now)
                policy = (await load_policy_book(unit, self._policy)).for_channel(task.channel_id)
                again = outbox.directive(
                    released, policy, self._new_key(), redispatch=True, released=True
                )
                effects.insert(0, again)
            await unit.enqueue(effects, now)
            await record_result(
                unit, agent, request, {"epoch": fresh, "redispatched": not at_lapse}
            )
            return Release(released, not at_lapse)

    async def await_input(self, ref: TaskRef, agent: str, epoch: int, question: str) -> Task:
        """Pauses the lease until a person answers in the thread; the card shows it waits."""
        async with self._held(ref, agent, epoch) as (unit, task):
            now = self._clock()
            waiting = await unit.compare_and_set(
                task.id,
                {"lease_epoch": epoch, "claimed_by": agent},
                {"awaiting_input_since": now, "last_progress_at": now},
                now,
            )
            if waiting is None:
                raise Conflict(f"{ref} changed while asking for input.")
            data = {"question": question[:500]}
            await unit.append_events(
                [NewEvent(task.id, EventKind.AWAITING_INPUT, Actor.agent(agent), now, data)]
            )
            waits = outbox.notice(waiting, outbox.Notice.WAITING, self._new_key())
            await unit.enqueue([waits, outbox.card_update(waiting, self._new_key())], now)
            return waiting

    async def record_stream(
        self,
        ref: TaskRef,
        agent: str,
        epoch: int,
        ts: str,
        text: str,
        session: SessionStatus | None = None,
    ) -> Task:
        """Stores a message the agent streamed into the thread, now complete, as its post:
        progress, once (the stream's chunks renewed nothing), if the run still holds the task.

        ``session`` is the session status the end of the stream set (the platform sets one
        when a stream stops); if the task maps to another by now, a card update puts it right.
        """
        text = storable(text).strip()
        async with self._store.transaction() as unit:
            task = await require_task(unit, ref)
            now = self._clock()
            # The message is in the thread whatever happened meanwhile: it is stored, and it is
            # progress only while the run still holds the task (its last step may have moved
            # the task to blocked, or a person stopped it).
            held = task.claimed_by == agent and task.lease_epoch == epoch
            renewed = await self._progress(unit, task, now) if held else task
            posted = ThreadMessage(task.id, task.channel_id, ts, f"agent:{agent}", text, now)
            await unit.save_message(posted)
            if session is not None:
                await unit.record_session(task.id, session, now, create=False)
                running = await unit.run_pending(task.id, task.lease_epoch)
                if session_status(renewed, built_in=True, running=running) != session:
                    await unit.enqueue([outbox.card_update(renewed, self._new_key())], now)
        self._notify(frozenset(unit.queued))
        return renewed

    async def end_run(self, wakeup_id: int, session_unknown: bool = False) -> None:
        """A built-in run ended: its wake-up is done, and the card and the session show that
        nobody works on the task now (unless another wake-up is already waiting).

        ``session_unknown``: the run ended a stream early, which leaves the session at the
        platform's default (active); it is recorded so, and the card update tells it again."""
        async with self._store.transaction() as unit:
            now = self._clock()
            await unit.finish_wakeups([wakeup_id], now)
            task_id = await unit.wakeup_task(wakeup_id)
            task = None if task_id is None else await unit.get_task_by_id(task_id)
            if task is not None and session_unknown:
                await unit.record_session(task.id, SessionStatus.ACTIVE, now, create=False)
            if task is not None and (task.leased or session_unknown):
                await unit.enqueue([outbox.card_update(task, self._new_key())], now)
        self._notify(frozenset(unit.queued))

    async def record_usage(self, ref: TaskRef, agent: str, epoch: int, usage: Usage) -> bool:
        """Adds a model call's tokens to the task (spent whether or not the run may go on);
        returns whether ``agent`` still holds the claim at ``epoch``, read in the same
        transaction, so a run learns it was superseded without another round trip."""
        async with self._store.transaction() as unit:
            task = await require_task(unit, ref)
            await unit.add_usage(task.id, usage, self._clock())
        for kind, count in token_kinds(usage).items():
            self._metrics.model_tokens(kind, count)
        return task.claimed_by == agent and task.lease_epoch == epoch

    async def prune_tool_requests(self) -> int:
        """Forgets agents' idempotency keys older than a day; returns how many."""
        async with self._store.transaction() as unit:
            return await prune(unit, self._clock())

    async def _progress(self, unit: Unit, task: Task, now: datetime) -> Task:
        """Renews the lease (the claim was checked in this transaction)."""
        renewed = await unit.compare_and_set(
            task.id,
            {"lease_epoch": task.lease_epoch, "claimed_by": task.claimed_by},
            {"last_progress_at": now},
            now,
        )
        if renewed is None:
            raise Conflict(f"{task.ref} changed meanwhile; try again.")
        return renewed

    def _post(
        self, task: Task, agent: str, text: str, artifact: dict[str, object] | None = None
    ) -> OutboxMessage:
        payload: dict[str, object] = {"ref": str(task.ref), "agent": agent, "text": text}
        if artifact is not None:
            payload["artifact"] = artifact
        return OutboxMessage(self._new_key(), task.id, OutboxKind.AGENT_POST, payload)


async def _first_artifact(unit: Unit, first: RecordedRequest) -> Artifact:
    """The artifact the first call with a key recorded."""
    artifact_id = (first.result or {}).get("artifact_id")
    artifact = await unit.get_artifact(artifact_id) if isinstance(artifact_id, int) else None
    if artifact is None:
        raise Conflict("The artifact this idempotency_key added cannot be read; try again.")
    return artifact


#: The events that start an attempt: a person's dispatch (assign, reopen, unblock), the lapse's.
_ATTEMPT_STARTS = frozenset({EventKind.DISPATCHED, EventKind.REDISPATCHED})


async def _releases(unit: Unit, task: Task) -> int:
    """How many times the task's current attempt was released: the releases since the event
    that started it (a dispatch numbers its attempt 1 again, so the number alone would count
    an earlier round's releases)."""
    released = 0
    for event in reversed(await unit.list_events(task.id)):
        if event.kind in _ATTEMPT_STARTS:
            break
        released += event.kind == EventKind.RELEASED
    return released
