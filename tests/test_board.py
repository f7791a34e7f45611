"""The loop's use cases on both backends: each one transaction, with events and outbox rows."""

from datetime import timedelta

import pytest

from bot.board import Board
from bot.errors import (
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    NotClaimHolder,
    NotFound,
    Superseded,
)
from bot.outbox import OutboxKind
from bot.registry import AgentRegistry
from bot.root import Core
from bot.signal import ChangeSignal, Queued
from bot.status import TaskStatus
from bot.task import (
    Actor,
    EventKind,
    IncomingReply,
    Task,
    TaskRef,
    ThreadMessage,
)
from bot.thread_posts import ThreadPosts
from bot.work import WakeReason
from store.repository import SqlStore
from tests.conftest import FakeClock

ALICE = "U_ALICE"
CODER = Actor.agent("coder")


async def snapshot(store: SqlStore, task: Task) -> tuple[object, ...]:
    """Everything a refused call must leave untouched."""
    async with store.read() as reader:
        row = await reader.get_task_by_id(task.id)
        events = await reader.list_events(task.id)
    return row, events, await store.list_outbox(task.id)


async def kinds(store: SqlStore, task: Task) -> list[EventKind]:
    async with store.read() as reader:
        return [e.kind for e in await reader.list_events(task.id)]


@pytest.fixture
async def task(board: Board, registry: AgentRegistry) -> Task:
    await registry.add_agent("coder", slack_user_id="U_CODER")
    await registry.add_agent("reviewer")
    return await board.create_task("C1", "Fix  the login   bug", Actor.user(ALICE))


async def test_creating_a_task_numbers_it_per_channel_and_enqueues_its_card(
    board: Board, store: SqlStore
) -> None:
    first = await board.create_task("C1", "one", Actor.user(ALICE))
    second = await board.create_task("C1", "two", Actor.user(ALICE))
    other = await board.create_task("C2", "three", Actor.user(ALICE))
    assert [str(first.ref), str(second.ref), str(other.ref)] == ["C1#1", "C1#2", "C2#1"]
    assert first.status == TaskStatus.TODO
    assert [row.kind for row in await store.list_outbox(first.id)] == [OutboxKind.CARD_POST]
    assert await kinds(store, first) == [EventKind.CREATED]


async def test_a_title_is_required_and_its_whitespace_collapsed(board: Board, task: Task) -> None:
    assert task.title == "Fix the login bug"
    with pytest.raises(InvalidInput, match="needs a title"):
        await board.create_task("C1", "   ", Actor.user(ALICE))


async def test_assigning_claims_the_task_and_enqueues_a_directive_on_behalf_of_the_assigner(
    board: Board, store: SqlStore, task: Task, clock: FakeClock
) -> None:
    assigned = await board.assign_task(task.ref, "coder", ALICE)
    assert (assigned.assignee, assigned.claimed_by, assigned.assigned_by) == (
        "coder",
        "coder",
        ALICE,
    )
    assert (assigned.attempts, assigned.lease_epoch) == (1, 1)
    assert assigned.last_progress_at == clock.now
    async with store.read() as reader:
        events = await reader.list_events(task.id)
    assert [e.kind for e in events] == [EventKind.CREATED, EventKind.ASSIGNED, EventKind.DISPATCHED]
    assert events[1].actor == Actor.user(ALICE)
    assert events[1].data["agent"] == "coder"
    rows = await store.list_outbox(task.id)
    assert [r.kind for r in rows] == [
        OutboxKind.CARD_POST,
        OutboxKind.DIRECTIVE,
        OutboxKind.CARD_UPDATE,
    ]
    directive = rows[1].payload
    assert directive["on_behalf_of"] == ALICE
    assert directive["agent"] == "coder"
    assert (directive["attempt"], directive["max_attempts"], directive["epoch"]) == (1, 2, 1)
    assert directive["ref"] == "C1#1"


async def test_reassigning_to_another_agent_bumps_the_epoch(board: Board, task: Task) -> None:
    first = await board.assign_task(task.ref, "coder", "U_BOB")
    second = await board.assign_task(task.ref, "reviewer", ALICE)  # ALICE created the task
    assert second.lease_epoch == first.lease_epoch + 1
    assert (second.assignee, second.claimed_by, second.assigned_by) == (
        "reviewer",
        "reviewer",
        ALICE,
    )
    assert second.attempts == 1


async def test_only_an_owner_may_take_a_task_away_from_its_agent(
    board: Board, store: SqlStore, task: Task
) -> None:
    await board.assign_task(task.ref, "coder", ALICE)
    before = await snapshot(store, task)
    with pytest.raises(NotAllowed, match="Only the creator of C1#1, whoever assigned it"):
        await board.assign_task(task.ref, "reviewer", "U_BOB")
    assert await snapshot(store, task) == before
    again = await board.assign_task(task.ref, "coder", "U_BOB")  # the same agent: not closing
    assert again.assignee == "coder"


async def test_assigning_to_an_unknown_or_disabled_agent_changes_nothing(
    board: Board, store: SqlStore, task: Task
) -> None:
    before = await snapshot(store, task)
    with pytest.raises(NotFound, match="no agent named `ghost`"):
        await board.assign_task(task.ref, "ghost", ALICE)
    async with store.transaction() as unit:
        await unit.set_agent_enabled("reviewer", False, task.created_at)
    with pytest.raises(InvalidInput, match="disabled"):
        await board.assign_task(task.ref, "reviewer", ALICE)
    with pytest.raises(NotFound, match="no task C1#99"):
        await board.assign_task(TaskRef("C1", 99), "coder", ALICE)
    assert await snapshot(store, task) == before


async def test_only_the_claim_holders_post_renews_the_lease(
    board: Board, thread_posts: ThreadPosts, store: SqlStore, task: Task, clock: FakeClock
) -> None:
    assigned = await board.assign_task(task.ref, "coder", ALICE)
    clock.advance(120)
    assert await thread_posts.renew_lease(task.id, "reviewer") is False
    async with store.read() as reader:
        unchanged = await reader.get_task_by_id(task.id)
    assert unchanged is not None
    assert unchanged.last_progress_at == assigned.last_progress_at
    assert await thread_posts.renew_lease(task.id, "coder") is True
    async with store.read() as reader:
        renewed = await reader.get_task_by_id(task.id)
    assert renewed is not None
    assert renewed.last_progress_at == clock.now


async def test_a_thread_message_is_stored_once_and_renews_only_for_the_assignee(
    board: Board, thread_posts: ThreadPosts, store: SqlStore, task: Task, clock: FakeClock
) -> None:
    await board.assign_task(task.ref, "coder", ALICE)
    clock.advance(60)
    human = ThreadMessage(task.id, "C1", "100.1", "U_BOB", "how is it going?", clock.now)
    assert await thread_posts.record_thread_message(human, agent=None) is True
    clock.advance(60)
    agent_post = ThreadMessage(task.id, "C1", "100.2", "U_CODER", "halfway there", clock.now)
    assert await thread_posts.record_thread_message(agent_post, agent="coder") is True
    renewed_at = clock.now
    clock.advance(60)
    assert await thread_posts.record_thread_message(agent_post, agent="coder") is False
    async with store.read() as reader:
        current = await reader.get_task_by_id(task.id)
        messages = await reader.list_messages(task.id)
    assert current is not None
    assert current.last_progress_at == renewed_at
    assert [(m.ts, m.author) for m in messages] == [("100.1", "U_BOB"), ("100.2", "U_CODER")]


async def test_an_agent_holding_the_claim_moves_the_status_and_that_counts_as_progress(
    board: Board, store: SqlStore, task: Task, clock: FakeClock
) -> None:
    assigned = await board.assign_task(task.ref, "coder", ALICE)
    clock.advance(300)
    working = await board.update_task_status(
        task.ref, TaskStatus.IN_PROGRESS, CODER, epoch=assigned.lease_epoch
    )
    assert working.status == TaskStatus.IN_PROGRESS
    assert working.last_progress_at == clock.now
    review = await board.update_task_status(task.ref, TaskStatus.IN_REVIEW, CODER, note="PR #12")
    assert (review.status, review.claimed_by) == (TaskStatus.IN_REVIEW, "coder")
    async with store.read() as reader:
        events = await reader.list_events(task.id)
    assert events[-1].kind == EventKind.STATUS_CHANGED
    assert events[-1].data == {"from": "in_progress", "to": "in_review", "note": "PR #12"}
    assert events[-1].actor == CODER


async def test_a_late_write_from_a_superseded_run_is_refused_and_changes_nothing(
    board: Board, store: SqlStore, task: Task
) -> None:
    old = await board.assign_task(task.ref, "coder", ALICE)
    await board.assign_task(task.ref, "coder", ALICE)
    before = await snapshot(store, task)
    with pytest.raises(Superseded) as refused:
        await board.update_task_status(
            task.ref, TaskStatus.IN_PROGRESS, CODER, epoch=old.lease_epoch
        )
    assert refused.value.code == "superseded"
    assert await snapshot(store, task) == before


async def test_an_agent_without_the_claim_cannot_move_the_status(
    board: Board, store: SqlStore, task: Task
) -> None:
    await board.assign_task(task.ref, "coder", ALICE)
    before = await snapshot(store, task)
    with pytest.raises(NotClaimHolder, match="not claimed by `reviewer`"):
        await board.update_task_status(task.ref, TaskStatus.IN_PROGRESS, Actor.agent("reviewer"))
    assert await snapshot(store, task) == before


async def test_an_illegal_transition_is_refused_and_changes_nothing(
    board: Board, store: SqlStore, task: Task
) -> None:
    await board.update_task_status(task.ref, TaskStatus.DONE, Actor.user(ALICE))
    before = await snapshot(store, task)
    with pytest.raises(IllegalTransition, match="reopen it first"):
        await board.update_task_status(task.ref, TaskStatus.IN_PROGRESS, Actor.user(ALICE))
    with pytest.raises(IllegalTransition, match="reopen it before assigning"):
        await board.assign_task(task.ref, "coder", ALICE)
    assert await snapshot(store, task) == before


async def test_cancel_clears_the_claim_keeps_the_assignee_and_reopen_redispatches(
    board: Board, store: SqlStore, task: Task
) -> None:
    assigned = await board.assign_task(task.ref, "coder", ALICE)
    canceled = await board.cancel_task(task.ref, Actor.user(ALICE), reason="not needed")
    assert (canceled.status, canceled.claimed_by, canceled.assignee) == (
        TaskStatus.CANCELED,
        None,
        "coder",
    )
    reopened = await board.reopen_task(task.ref, Actor.user("U_BOB"))
    assert (reopened.status, reopened.claimed_by) == (TaskStatus.TODO, "coder")
    assert reopened.lease_epoch == assigned.lease_epoch + 1
    assert (await kinds(store, task))[-3:] == [
        EventKind.CANCELED,
        EventKind.REOPENED,
        EventKind.DISPATCHED,
    ]
    with pytest.raises(IllegalTransition, match="Only done or canceled"):
        await board.reopen_task(task.ref, Actor.user(ALICE))


async def test_an_agent_blocking_itself_clears_the_claim_and_a_person_unblocking_redispatches(
    board: Board, store: SqlStore, task: Task
) -> None:
    await board.assign_task(task.ref, "coder", ALICE)
    blocked = await board.update_task_status(
        task.ref, TaskStatus.BLOCKED, CODER, note="need database credentials"
    )
    assert (blocked.claimed_by, blocked.assignee) == (None, "coder")
    with pytest.raises(NotClaimHolder, match="claim was cleared"):
        await board.update_task_status(task.ref, TaskStatus.IN_PROGRESS, CODER)
    unblocked = await board.update_task_status(task.ref, TaskStatus.IN_PROGRESS, Actor.user(ALICE))
    assert (unblocked.status, unblocked.claimed_by, unblocked.attempts) == (
        TaskStatus.IN_PROGRESS,
        "coder",
        1,
    )
    directives = [r for r in await store.list_outbox(task.id) if r.kind == OutboxKind.DIRECTIVE]
    assert len(directives) == 2


async def test_assigning_a_blocked_task_puts_it_back_to_todo(board: Board, task: Task) -> None:
    await board.assign_task(task.ref, "coder", ALICE)
    await board.update_task_status(task.ref, TaskStatus.BLOCKED, CODER, note="stuck")
    reassigned = await board.assign_task(task.ref, "reviewer", ALICE)
    assert (reassigned.status, reassigned.claimed_by) == (TaskStatus.TODO, "reviewer")


async def test_a_compare_and_set_on_a_stale_read_matches_nothing(
    board: Board, store: SqlStore, task: Task, clock: FakeClock
) -> None:
    assigned = await board.assign_task(task.ref, "coder", ALICE)
    async with store.transaction() as unit:
        won = await unit.compare_and_set(
            task.id, {"lease_epoch": assigned.lease_epoch}, {"lease_epoch": 9}, clock.now
        )
        lost = await unit.compare_and_set(
            task.id,
            {"lease_epoch": assigned.lease_epoch, "claimed_by": "coder"},
            {"attempts": 2},
            clock.now,
        )
    assert won is not None
    assert won.lease_epoch == 9
    assert lost is None


def reply(ts: str, user: str, text: str = "", thread: str = "100.0") -> IncomingReply:
    return IncomingReply("C1", thread, ts, user, None, text)


async def test_a_thread_reply_is_stored_once_and_renews_only_for_the_claim_holder(
    board: Board, thread_posts: ThreadPosts, store: SqlStore, task: Task, clock: FakeClock
) -> None:
    await board.assign_task(task.ref, "coder", ALICE)
    async with store.transaction() as unit:
        await unit.record_card(task.id, "100.0")
    assert await thread_posts.record_thread_replies([reply("1.1", "U_CODER", thread="999.0")]) == []
    clock.advance(30)
    person = await thread_posts.record_thread_replies([reply("101.0", "U_BOB", "status?")])
    assert [(r.task_id, r.renewed) for r in person] == [(task.id, False)]
    clock.advance(30)
    agent = await thread_posts.record_thread_replies([reply("102.0", "U_CODER", "on it")])
    assert [(r.task_id, r.renewed) for r in agent] == [(task.id, True)]
    assert await thread_posts.record_thread_replies([reply("102.0", "U_CODER", "on it")]) == []
    async with store.read() as reader:
        current = await reader.get_task_by_id(task.id)
        messages = await reader.list_messages(task.id)
    assert current is not None
    assert current.last_progress_at == clock.now
    assert [m.author for m in messages] == ["U_BOB", "U_CODER"]


async def test_one_batch_of_replies_over_several_threads_is_judged_per_task(
    board: Board,
    thread_posts: ThreadPosts,
    registry: AgentRegistry,
    store: SqlStore,
    task: Task,
    clock: FakeClock,
) -> None:
    other = await board.create_task("C1", "Second", Actor.user(ALICE))
    await board.assign_task(task.ref, "coder", ALICE)
    await board.assign_task(other.ref, "reviewer", ALICE)
    await registry.add_agent("helper", slack_user_id="U_HELPER")
    async with store.transaction() as unit:
        await unit.record_card(task.id, "100.0")
        await unit.record_card(other.id, "200.0")
        await unit.consume_wakeups("coder", clock.now)
        await unit.consume_wakeups("reviewer", clock.now)
    await thread_posts.record_thread_replies([reply("101.0", "U_CODER", "seen before")])
    before = await current(store, other)
    clock.advance(60)
    stored = await thread_posts.record_thread_replies(
        [
            reply("101.0", "U_CODER", "seen before"),  # a redelivery: already stored
            reply("102.0", "U_CODER", "progress"),  # the holder: renews task
            reply("102.0", "U_CODER", "progress"),  # the same post twice in one batch
            reply("103.0", "U_BOB", "any news?"),  # a person: wakes the holder
            reply("1.0", "U_CODER", "not a task thread", thread="555.0"),
            reply("201.0", "U_HELPER", "drive-by", thread="200.0"),  # an agent not holding it
        ]
    )
    assert sorted((r.task_id, r.renewed) for r in stored) == [
        (task.id, False),  # the person's post renews nothing
        (task.id, True),
        (other.id, False),
    ]
    assert (await current(store, task)).last_progress_at == clock.now
    assert (await current(store, other)).last_progress_at == before.last_progress_at
    async with store.transaction() as unit:
        woken = await unit.consume_wakeups("coder", clock.now)
        assert await unit.consume_wakeups("reviewer", clock.now) == []
        assert [m.ts for m in await unit.list_messages(task.id)] == ["101.0", "102.0", "103.0"]
        assert [m.author for m in await unit.list_messages(other.id)] == ["U_HELPER"]
    assert [(w.task_id, w.reason) for w in woken] == [(task.id, WakeReason.MESSAGE)]


async def current(store: SqlStore, task: Task) -> Task:
    async with store.read() as reader:
        row = await reader.get_task_by_id(task.id)
    assert row is not None
    return row


async def test_only_a_commit_that_queued_work_tells_outbox_delivery_and_the_runner(
    core: Core,
    store: SqlStore,
    board: Board,
    thread_posts: ThreadPosts,
    registry: AgentRegistry,
    clock: FakeClock,
) -> None:
    told: list[set[Queued]] = []
    pending: set[Queued] = set()
    core.signal.subscribe(lambda: pending.add(Queued.OUTBOX), to=Queued.OUTBOX)
    core.signal.subscribe(lambda: pending.add(Queued.WAKEUPS), to=Queued.WAKEUPS)
    core.signal.subscribe(lambda: pending.add(Queued.DIRECTORY), to=Queued.DIRECTORY)

    def commit_seen() -> None:  # called last on every notify: what this commit queued
        told.append(set(pending))
        pending.clear()

    core.signal.subscribe(commit_seen)
    await registry.add_agent("coder", slack_user_id="U_CODER")
    task = await board.create_task("C1", "Watch the signal", Actor.user(ALICE))
    await board.assign_task(task.ref, "coder", ALICE)
    outbox, wakeups, directory = Queued.OUTBOX, Queued.WAKEUPS, Queued.DIRECTORY
    # The agent (what delivery renders with, nobody's work); a card; a directive, a card and a
    # wake-up.
    assert told == [{directory}, {outbox}, {outbox, wakeups}]
    async with store.transaction() as unit:
        await unit.record_card(task.id, "100.0")
    clock.advance(10)
    await thread_posts.record_thread_replies([reply("101.0", "U_CODER", "working")])
    assert len(told) == 3  # a renewed lease is nobody's work
    await thread_posts.record_thread_replies([reply("102.0", "U_BOB", "how is it going?")])
    assert told[3:] == [{wakeups}]  # the holder has a wake-up; outbox delivery has nothing


def test_a_subscriber_is_called_only_for_what_it_subscribed_to() -> None:
    signal = ChangeSignal()
    calls: list[str] = []
    signal.subscribe(lambda: calls.append("delivery"), to=Queued.OUTBOX)
    signal.subscribe(lambda: calls.append("runner"), to=Queued.WAKEUPS)
    signal.subscribe(lambda: calls.append("watcher"))
    signal.notify(frozenset({Queued.OUTBOX}))
    signal.notify(frozenset({Queued.WAKEUPS}))
    signal.notify(frozenset())
    assert calls == ["delivery", "watcher", "runner", "watcher", "watcher"]


async def test_stale_tasks_are_counted_by_each_channels_own_cutoff(
    board: Board, registry: AgentRegistry, store: SqlStore, clock: FakeClock
) -> None:
    await registry.add_agent("coder", slack_user_id="U_CODER")
    for channel in ("C1", "C2", "C3"):
        created = await board.create_task(channel, "Lease me", Actor.user(ALICE))
        await board.assign_task(created.ref, "coder", ALICE)
    clock.advance(120)
    now = clock.now
    async with store.read() as reader:
        assert await reader.count_stale_tasks(now - timedelta(seconds=600)) == 0
        assert await reader.count_stale_tasks(now - timedelta(seconds=60)) == 3
        shorter_in_c2 = {"C2": now - timedelta(seconds=60)}
        assert await reader.count_stale_tasks(now - timedelta(seconds=600), shorter_in_c2) == 1
        longer_in_c3 = {"C3": now - timedelta(seconds=600)}
        assert await reader.count_stale_tasks(now - timedelta(seconds=60), longer_in_c3) == 2


async def test_a_post_renews_when_either_its_user_or_its_bot_is_the_claim_holder(
    board: Board,
    thread_posts: ThreadPosts,
    registry: AgentRegistry,
    store: SqlStore,
    task: Task,
    clock: FakeClock,
) -> None:
    await registry.add_agent("helper", slack_user_id="U_HELPER")
    await registry.add_agent("botty", slack_bot_id="B_BOTTY")
    await board.assign_task(task.ref, "botty", ALICE)
    async with store.transaction() as unit:
        await unit.record_card(task.id, "100.0")
    clock.advance(60)
    # Posted by a bot user that is also registered as another agent: its bot id holds the claim.
    post = IncomingReply("C1", "100.0", "101.0", "U_HELPER", "B_BOTTY", "progress")
    [stored] = await thread_posts.record_thread_replies([post])
    assert stored.renewed is True
    assert (await current(store, task)).last_progress_at == clock.now


async def test_the_viewers_board_keeps_room_for_open_tasks_however_many_finished(
    board: Board, store: SqlStore, clock: FakeClock
) -> None:
    old = await board.create_task("C1", "Long-running", Actor.user(ALICE))
    clock.advance(3600)
    newer = await board.create_task("C1", "Newer", Actor.user(ALICE))
    finished = []
    for n in range(3):
        clock.advance(60)
        done = await board.create_task("C1", f"Quick {n}", Actor.user(ALICE))
        finished.append(
            await board.update_task_status(done.ref, TaskStatus.DONE, Actor.user(ALICE))
        )
    forgotten = await board.create_task("C9", "Someone else's", Actor.user("U_BOB"))
    async with store.read() as reader:
        shown = await reader.list_tasks_for_viewer(
            ALICE, [], finished_since=clock.now - timedelta(days=7), limit=2
        )
    assert [t.id for t in shown] == [newer.id, old.id, finished[2].id, finished[1].id]
    assert forgotten.id not in [t.id for t in shown]


async def test_epochs_are_unique_across_tasks_so_one_tasks_epoch_never_fences_another(
    core: Core, board: Board, registry: AgentRegistry, clock: FakeClock
) -> None:
    await registry.add_agent("coder")
    refs = []
    for title in ("First", "Second", "Third"):
        task = await board.create_task("C1", title, Actor.user(ALICE))
        refs.append((await board.assign_task(task.ref, "coder", ALICE)).ref)
    epochs = [(await require(core, ref)).lease_epoch for ref in refs]
    assert len(set(epochs)) == 3
    with pytest.raises(Superseded):
        await board.update_task_status(
            refs[1], TaskStatus.IN_PROGRESS, Actor.agent("coder"), epoch=epochs[0]
        )
    clock.advance(601)
    report = await core.reconciler.reconcile_stale_tasks()
    assert sorted(report.redispatched) == sorted(refs)
    after = [(await require(core, ref)).lease_epoch for ref in refs]
    assert len(set(after) | set(epochs)) == 6
    assert min(after) > max(epochs)


async def require(core: Core, ref: TaskRef) -> Task:
    async with core.store.read() as reader:
        task = await reader.get_task(ref)
    assert task is not None
    return task
