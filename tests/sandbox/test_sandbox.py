"""The sandbox in-process: the service it runs, the demo agent's script, its page's endpoints.

Each test opens a sandbox on a free port and a fresh database, and acts as the page does: people's
actions go through the event source as signed requests into the service's gateway. Waits are
bounded and woken by the workspace's own change notifications.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from channels.sandbox.main import Sandbox, SandboxOptions, open_sandbox
from channels.sandbox.slack_api import Json
from channels.sandbox.workspace import ADMIN, GENERAL, MEMBER, PRIVATE_OPS

WAIT_S = 20.0
POLL_S = 0.02
OPEN_ROWS = ("pending", "in_flight")


@pytest.fixture
def options(tmp_path: Path) -> SandboxOptions:
    return SandboxOptions(port=0, db=tmp_path / "sandbox.db", demo_word_s=0.0)


@pytest.fixture
async def sandbox(options: SandboxOptions) -> AsyncIterator[Sandbox]:
    async with open_sandbox(options, {}) as running:
        yield running
        await settled(running)


async def until(sandbox: Sandbox, found: Callable[[], Any]) -> Any:
    """Waits (at most WAIT_S) for ``found()`` to be truthy; woken by each change to the
    workspace, which the service changes with every Web API call."""
    changed = asyncio.Event()
    sandbox.api.watch(changed.set)
    async with asyncio.timeout(WAIT_S):
        while not (value := found()):
            await changed.wait()
            changed.clear()
    return value


async def settled(sandbox: Sandbox) -> None:
    """Waits for the agent runs under way to end and the outbox to be delivered, so that the
    sandbox closes with nothing in flight and the next test's assertions are its own. The
    outbox is polled, with a bound."""
    async with asyncio.timeout(WAIT_S):
        await sandbox.service.supervisor.drain()
        while True:
            async with sandbox.service.core.store.read() as reader:
                counts = await reader.count_outbox()
            if not any(n for state, n in counts.items() if state.value in OPEN_ROWS):
                return
            await asyncio.sleep(POLL_S)


def card(sandbox: Sandbox, title: str) -> Json | None:
    return next(
        (m for m in sandbox.api.messages if m.get("blocks") and title in m.get("text", "")), None
    )


def status(sandbox: Sandbox, title: str) -> str | None:
    """The status the task's card shows (its text ends with it)."""
    found = card(sandbox, title)
    return str(found["text"]).rpartition("— ")[2] if found else None


def thread_texts(sandbox: Sandbox, root: Json) -> list[str]:
    return [
        str(m["text"])
        for m in sandbox.api.messages
        if m.get("thread_ts") == root["ts"] and m["ts"] != root["ts"]
    ]


async def assigned(sandbox: Sandbox, title: str, agent: str = "demo") -> Json:
    """A task made and assigned with slash commands in #general, as a person types them."""
    reply = await sandbox.events.command(ADMIN, GENERAL, f"/task new {title}")
    number = reply.split("#")[1].split("*")[0]
    await until(sandbox, lambda: card(sandbox, title))
    await sandbox.events.command(ADMIN, GENERAL, f"/task assign {number} {agent}")
    return await until(sandbox, lambda: card(sandbox, title))


async def test_demo_works_the_task_to_in_review_streaming_every_step(sandbox: Sandbox) -> None:
    root = await assigned(sandbox, "Write the release notes")
    await until(sandbox, lambda: status(sandbox, "release notes") == "in_review")
    texts = thread_texts(sandbox, root)
    assert any(t.startswith("Plan for “Write the release notes”") for t in texts)
    assert any(t.startswith("Step 2 of 2") for t in texts)
    appends = sandbox.api.calls_to("chat.appendStream")
    assert len({c.args["ts"] for c in appends}) == 4, "plan, two steps and the hand-over"
    assert appends[0].args["markdown_text"].strip() == "Plan", "its words come as they are said"
    assert "processing" in sandbox.api.session_statuses(GENERAL, root["ts"])


async def test_demo_asks_when_the_title_is_a_question_and_goes_on_once_answered(
    sandbox: Sandbox,
) -> None:
    root = await assigned(sandbox, "Should the notes cover the beta?")
    await until(sandbox, lambda: "suspended" in sandbox.api.session_statuses(GENERAL, root["ts"]))
    assert any(t.endswith("or everything since the last one?") for t in thread_texts(sandbox, root))

    await sandbox.events.message(MEMBER, GENERAL, "Only this release, please", root["ts"])
    await until(sandbox, lambda: status(sandbox, "cover the beta") == "in_review")
    assert any(
        "Thanks, I read: “Only this release, please”" in t for t in thread_texts(sandbox, root)
    )


async def test_a_mention_in_a_thread_makes_it_a_task_assigned_to_the_agent_named(
    sandbox: Sandbox,
) -> None:
    said = await sandbox.events.message(MEMBER, GENERAL, "The export button is broken")
    await sandbox.events.message(
        MEMBER, GENERAL, "@threadwork assign this to demo", thread_ts=said["ts"]
    )
    await until(sandbox, lambda: status(sandbox, "The export button is broken") == "in_review")


async def test_a_model_key_in_the_environment_adds_a_real_agent(options: SandboxOptions) -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-not-a-real-key"}
    async with open_sandbox(options, env) as sandbox:
        agents = {a.name: a.kind.value for a in await sandbox.service.core.registry.list_agents()}
        assert agents == {"claude": "claude", "demo": "scripted", "local-agent": "external"}
        assert "claude" in sandbox.banner()
        await settled(sandbox)


async def test_a_restart_shows_the_workspace_and_its_tasks_again(options: SandboxOptions) -> None:
    async with open_sandbox(options, {}) as first:
        await first.events.command(ADMIN, GENERAL, "/task new Keep me")
        await until(first, lambda: card(first, "Keep me"))
        await settled(first)
        kept = len(first.api.messages)
    async with open_sandbox(options, {}) as second:
        assert card(second, "Keep me") is not None
        assert len(second.api.messages) == kept, "a restart seeds nothing again"
        listed = await second.events.command(ADMIN, GENERAL, "/task list")
        assert "Keep me" in listed
        await settled(second)


async def test_local_agent_reaches_its_tasks_over_mcp_with_the_printed_token(
    sandbox: Sandbox,
) -> None:
    assert sandbox.service.mcp_url is not None
    assert sandbox.mcp_token in sandbox.banner()
    assert sandbox.service.mcp_url in sandbox.banner()
    await assigned(sandbox, "Port the importer", agent="local-agent")
    headers = {"Authorization": f"Bearer {sandbox.mcp_token}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(sandbox.service.mcp_url, http_client=http)) as client,
    ):
        result = await client.call_tool("list_my_tasks", {})
    assert not result.is_error
    assert isinstance(result.structured_content, dict)
    titles = [t["title"] for t in result.structured_content["tasks"]]
    assert titles == ["Port the importer"]


async def test_the_page_takes_actions_only_as_json_from_its_own_loopback_origin(
    sandbox: Sandbox,
) -> None:
    say = sandbox.url + "/sandbox/say"
    line = {"as": ADMIN, "channel": GENERAL, "text": "hello"}
    async with aiohttp.ClientSession() as http:
        async with http.post(say, data=line) as form:
            assert form.status == 400
        async with http.post(say, json=line, headers={"Origin": "http://evil.example"}) as other:
            assert other.status == 403
        async with http.post(say, json=line | {"as": "UNOBODY"}) as stranger:
            assert stranger.status == 400
        rebound = {"Host": "attacker.example", "Origin": "http://attacker.example"}
        async with http.post(say, json=line, headers=rebound) as by_dns_rebinding:
            assert by_dns_rebinding.status == 403
        async with http.get(sandbox.url + "/sandbox/stream?as=U0ADA", headers=rebound) as read:
            assert read.status == 403
        async with http.post(say, json=line, headers={"Origin": sandbox.url}) as own:
            assert own.status == 200
    assert any(m.get("text") == "hello" for m in sandbox.api.messages)


async def test_the_page_and_its_scripts_are_served_from_the_package(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(sandbox.url + "/") as index:
            assert index.status == 200
            assert "not Slack" in await index.text()
        for name in (
            "app.js",
            "blocks.js",
            "messages.js",
            "modal.js",
            "mrkdwn.js",
            "hood.js",
            "app.css",
        ):
            async with http.get(f"{sandbox.url}/sandbox/static/{name}") as asset:
                assert asset.status == 200, name


ACTIONS = ("say", "action", "shortcut", "submit", "dismiss", "home", "stop", "demo")


@pytest.mark.parametrize("body", [[], "x"], ids=["array", "string"])
async def test_every_action_refuses_json_that_is_not_an_object(
    sandbox: Sandbox, body: object
) -> None:
    await settled(sandbox)  # the seed's cards are posted, so that any change is the posts'
    before = (len(sandbox.api.messages), len(sandbox.api.calls), len(sandbox.events.sent))
    async with aiohttp.ClientSession() as http:
        for name in ACTIONS:
            async with http.post(f"{sandbox.url}/sandbox/{name}", json=body) as refused:
                assert refused.status == 400, name
                assert await refused.json() == {"error": "send a JSON object"}, name
    after = (len(sandbox.api.messages), len(sandbox.api.calls), len(sandbox.events.sent))
    assert after == before
    assert not sandbox.demo.hung


async def hood_for(sandbox: Sandbox, user: str) -> str:
    """The first "Under the hood" panel the page's stream sends ``user``, as sent."""
    url = f"{sandbox.url}/sandbox/stream?as={user}"
    async with aiohttp.ClientSession() as http, http.get(url) as stream:
        async with asyncio.timeout(WAIT_S):
            event = ""
            async for raw in stream.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "hood":
                    return line.removeprefix("data: ")
    raise AssertionError("the stream ended before sending the panel")


async def claimed(sandbox: Sandbox, title: str) -> None:
    """Waits for the task titled ``title`` to be claimed by an agent (the store is polled)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            async with sandbox.service.core.store.read() as reader:
                tasks = await reader.list_tasks()
            if any(t.title == title and t.claimed_by for t in tasks):
                return
            await asyncio.sleep(POLL_S)


async def test_the_panel_shows_a_private_channel_s_tasks_only_to_its_members(
    sandbox: Sandbox,
) -> None:
    private = "Rotate the on-call pager keys"  # seeded in #private-ops, which Ada is in
    await until(sandbox, lambda: card(sandbox, private))
    sandbox.demo.hang()  # so that its lease, events and outbox rows are in the panel
    try:
        await sandbox.events.command(ADMIN, PRIVATE_OPS, "/task assign 1 demo")
        await claimed(sandbox, private)
        admin, member = await hood_for(sandbox, ADMIN), await hood_for(sandbox, MEMBER)
    finally:
        sandbox.demo.answer()
    assert private in admin
    assert PRIVATE_OPS not in member
    assert private not in member
