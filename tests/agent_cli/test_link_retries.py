"""The worker's link sends a call again after the connection broke, with the key it first sent:
against the real service (its MCP endpoint over HTTP, on both backends), an answer lost after the
service made the call does not make it twice."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from bot.outbox import OutboxKind
from bot.root import Overrides, Service, open_service
from bot.settings import Settings
from bot.task import Actor, Task
from bot.tools import Done
from channels.agent_cli.link import Link, keyed
from tests.agent_cli.tool_calls import tool_call
from tests.conftest import TEST_SECRET_KEY, FakeClock, SequentialKeys

ALICE = "U_ALICE"


class LosesAnswers(httpx2.AsyncBaseTransport):
    """The network, except that the answer to the first call of ``tool`` is lost after the
    service made the call, as when the connection drops on the way back. Records the arguments
    of every call of ``tool`` that reached the service."""

    def __init__(self, tool: str) -> None:
        self._tool = tool
        self._network = httpx2.AsyncHTTPTransport()
        self.calls: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        call = tool_call(await request.aread())
        arguments = call.arguments if call is not None and call.tool == self._tool else None
        response = await self._network.handle_async_request(request)
        if arguments is None:
            return response
        self.calls.append(arguments)
        if len(self.calls) > 1:
            return response
        await response.aread()  # the service answered: the call was made
        await response.aclose()
        raise httpx2.ReadError("the connection dropped before the answer came", request=request)

    async def aclose(self) -> None:
        """Left open when the link's HTTP client closes; the test closes it (``close``)."""

    async def close(self) -> None:
        await self._network.aclose()


@dataclass
class World:
    service: Service
    token: str
    task: Task

    @property
    def url(self) -> str:
        assert self.service.mcp_url is not None
        return self.service.mcp_url

    async def posts(self) -> list[str]:
        rows = await self.service.core.store.list_outbox(self.task.id)
        return [str(r.payload["text"]) for r in rows if r.kind == OutboxKind.AGENT_POST]


@pytest.fixture
async def world(database_url: str, clock: FakeClock, keys: SequentialKeys) -> AsyncIterator[World]:
    """The service as ``serve`` builds it, with task C1#1 assigned to ``coder``."""
    settings = Settings(DATABASE_URL=database_url, THREADWORK_SECRET_KEY=TEST_SECRET_KEY)
    overrides = Overrides(clock=clock, new_key=keys, port=0, worker="link-test", run_loops=False)
    async with open_service(settings, overrides) as service:
        core = service.core
        await core.registry.add_agent("coder")
        token = await core.registry.issue_token("coder")
        created = await core.board.create_task("C1", "Fix the flaky test", Actor.user(ALICE))
        task = await core.board.assign_task(created.ref, "coder", ALICE)
        yield World(service, token, task)


async def test_a_post_whose_answer_was_lost_is_sent_again_with_its_key_and_posted_once(
    world: World,
) -> None:
    network = LosesAnswers("post_update")
    link = Link(world.url, world.token, transport=network)
    arguments = {"task": str(world.task.ref), "text": "Tests pass", "epoch": world.task.lease_epoch}
    try:
        async with asyncio.timeout(20):
            result = await link.call("post_update", arguments)
    finally:
        await link.close()
        await network.close()

    assert [a["text"] for a in network.calls] == ["Tests pass", "Tests pass"]  # sent twice
    assert await world.posts() == ["Tests pass"]  # made once
    assert isinstance(result, Done)
    assert result.data["task"] == str(world.task.ref)
    [first, again] = [a.get("idempotency_key") for a in network.calls]
    assert first is not None
    assert first == again


def test_each_call_that_changes_things_gets_a_key_of_its_own_and_reads_get_none() -> None:
    post = {"task": "C1#1", "text": "hi", "epoch": 3}
    first, second = keyed("post_update", post), keyed("post_update", post)
    assert first["idempotency_key"] != second["idempotency_key"]
    assert "idempotency_key" not in post  # the caller's arguments are left as they were
    for tool in ("add_artifact", "update_task_status", "release_task"):
        assert "idempotency_key" in keyed(tool, {"task": "C1#1"})
    for tool in ("get_task", "list_my_tasks", "wait_for_work", "report_liveness"):
        assert "idempotency_key" not in keyed(tool, {"task": "C1#1"})


def test_a_call_sent_again_keeps_the_key_it_was_first_sent_with() -> None:
    first = keyed("update_task_status", {"task": "C1#1", "status": "in_review"})
    assert keyed("update_task_status", first) == first
