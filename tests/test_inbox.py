"""The reply inbox: acknowledged posts are all stored, several per transaction under load."""

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from bot.board import Board
from bot.inbox import MAX_PENDING, ReplyInbox
from bot.registry import AgentRegistry
from bot.supervisor import Supervisor
from bot.task import Actor, IncomingReply, Task
from bot.thread_posts import ThreadPosts
from store.database import is_transient
from store.repository import SqlStore
from tests.conftest import FakeClock


def post(n: int, user: str = "U_CODER", thread: str = "100.0") -> IncomingReply:
    return IncomingReply("C1", thread, f"{200 + n}.000100", user, None, f"post {n}")


@pytest.fixture
async def task(board: Board, registry: AgentRegistry, store: SqlStore) -> Task:
    await registry.add_agent("coder", slack_user_id="U_CODER")
    created = await board.create_task("C1", "Batch me", Actor.user("U_ALICE"))
    async with store.transaction() as unit:
        await unit.record_card(created.id, "100.0")
    return await board.assign_task(created.ref, "coder", "U_ALICE")


class CountingWrites:
    """The real batch use case, with each call's batch size noted."""

    def __init__(self, thread_posts: ThreadPosts) -> None:
        self.thread_posts = thread_posts
        self.batches: list[int] = []

    async def __call__(self, replies: Sequence[IncomingReply]) -> None:
        self.batches.append(len(replies))
        await self.thread_posts.record_thread_replies(replies)


async def stored_ts(store: SqlStore, task: Task) -> list[str]:
    async with store.read() as reader:
        return [m.ts for m in await reader.list_messages(task.id)]


async def test_posts_put_while_a_write_runs_are_stored_together_by_the_next(
    thread_posts: ThreadPosts, store: SqlStore, task: Task, clock: FakeClock
) -> None:
    supervisor = Supervisor()
    counting = CountingWrites(thread_posts)
    inbox = ReplyInbox(counting, supervisor, max_batch=50)
    clock.advance(90)
    for n in range(120):
        await inbox.put(post(n))
    assert inbox.pending == 120  # nothing is written before the writer gets to run
    await supervisor.drain()
    assert inbox.pending == 0
    assert counting.batches == [50, 50, 20]
    assert await stored_ts(store, task) == [post(n).ts for n in range(120)]
    async with store.read() as reader:
        renewed = await reader.get_task_by_id(task.id)
    assert renewed is not None
    assert renewed.last_progress_at == clock.now


class SlowFirstWrite:
    """The batch use case, the first call held until released; notes batch sizes."""

    def __init__(self, thread_posts: ThreadPosts) -> None:
        self.thread_posts = thread_posts
        self.batches: list[int] = []
        self.release = asyncio.Event()
        self.written = asyncio.Event()

    async def __call__(self, replies: Sequence[IncomingReply]) -> None:
        self.batches.append(len(replies))
        await self.release.wait()
        await self.thread_posts.record_thread_replies(replies)
        self.written.set()


async def test_every_post_that_waited_through_a_long_write_is_stored_by_the_next_one(
    thread_posts: ThreadPosts, store: SqlStore, task: Task
) -> None:
    # Under load a transaction lasts as long as many requests (each of its statements waits
    # for the event loop): the next one must take all that arrived meanwhile, or the posts
    # would outgrow the writer and the acks would end up waiting for room.
    store_replies = SlowFirstWrite(thread_posts)
    supervisor = Supervisor()
    inbox = ReplyInbox(store_replies, supervisor)
    await inbox.put(post(0))
    await asyncio.sleep(0)  # the writer takes the first post and waits on the store
    for n in range(1, MAX_PENDING):
        await inbox.put(post(n))
    store_replies.release.set()
    async with asyncio.timeout(10):
        await supervisor.drain()
    assert store_replies.batches == [1, MAX_PENDING - 1]
    assert len(await stored_ts(store, task)) == MAX_PENDING


async def test_a_post_alone_is_written_at_once(
    thread_posts: ThreadPosts, store: SqlStore, task: Task
) -> None:
    supervisor = Supervisor()
    counting = CountingWrites(thread_posts)
    inbox = ReplyInbox(counting, supervisor)
    for n in range(3):
        await inbox.put(post(n))
        await supervisor.drain()
    assert counting.batches == [1, 1, 1]
    assert len(await stored_ts(store, task)) == 3


async def test_a_full_inbox_makes_put_wait_until_a_batch_is_taken(
    thread_posts: ThreadPosts, store: SqlStore, task: Task
) -> None:
    release = asyncio.Event()
    written: list[int] = []

    async def slow(replies: Sequence[IncomingReply]) -> None:
        await release.wait()
        written.append(len(replies))
        await thread_posts.record_thread_replies(replies)

    supervisor = Supervisor()
    inbox = ReplyInbox(slow, supervisor, max_batch=2, max_pending=2)
    await inbox.put(post(0))
    await inbox.put(post(1))
    await asyncio.sleep(0)  # the writer takes both and waits on the store
    await inbox.put(post(2))
    await inbox.put(post(3))
    blocked = asyncio.create_task(inbox.put(post(4)))
    for _ in range(10):  # let every task run as far as it can
        await asyncio.sleep(0)
    assert not blocked.done()  # two waiting, the limit: the fifth must wait
    release.set()
    await blocked
    await supervisor.drain()
    assert written == [2, 2, 1]
    assert len(await stored_ts(store, task)) == 5


async def test_a_failing_batch_is_retried_post_by_post_and_only_the_bad_post_is_dropped(
    thread_posts: ThreadPosts, store: SqlStore, task: Task
) -> None:
    attempts: list[list[str]] = []

    async def rejects_one(replies: Sequence[IncomingReply]) -> None:
        attempts.append([r.ts for r in replies])
        if any(r.text == "poison" for r in replies):
            raise RuntimeError("this post cannot be stored")
        await thread_posts.record_thread_replies(replies)

    supervisor = Supervisor()
    inbox = ReplyInbox(rejects_one, supervisor)
    bad = IncomingReply("C1", "100.0", "300.000100", "U_CODER", None, "poison")
    for item in (post(0), bad, post(1)):
        await inbox.put(item)
    await supervisor.drain()
    assert attempts == [
        [post(0).ts, bad.ts, post(1).ts],
        [post(0).ts],
        [bad.ts],
        [post(1).ts],
    ]
    assert await stored_ts(store, task) == [post(0).ts, post(1).ts]


async def test_while_the_database_is_unavailable_the_batch_is_retried_whole_with_growing_waits(
    thread_posts: ThreadPosts, store: SqlStore, task: Task
) -> None:
    outages = 3
    waits: list[float] = []

    async def flaky(replies: Sequence[IncomingReply]) -> None:
        nonlocal outages
        if outages:
            outages -= 1
            raise ConnectionRefusedError("the database is restarting")
        await thread_posts.record_thread_replies(replies)

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    supervisor = Supervisor()
    inbox = ReplyInbox(
        flaky, supervisor, is_transient=lambda e: isinstance(e, OSError), sleep=no_sleep
    )
    for n in range(3):
        await inbox.put(post(n))
    await supervisor.drain()
    assert waits == [0.1, 0.2, 0.4]
    assert await stored_ts(store, task) == [post(n).ts for n in range(3)]


def test_connection_and_locking_errors_are_transient_and_a_bad_statement_is_not() -> None:
    cause = Exception("driver error")
    assert is_transient(OperationalError("BEGIN IMMEDIATE", {}, cause))  # database is locked
    assert is_transient(InterfaceError("SELECT 1", {}, cause))
    assert is_transient(ConnectionResetError("connection reset by peer"))
    invalidated = DBAPIError("SELECT 1", {}, cause, connection_invalidated=True)
    assert is_transient(invalidated)
    assert not is_transient(IntegrityError("INSERT", {}, cause))
    assert not is_transient(ValueError("naive datetime given to a UTCDateTime column"))
