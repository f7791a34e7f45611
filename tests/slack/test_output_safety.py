"""Nothing a person or an agent writes can ping a channel, mention someone or disguise a link.

Every test writes the same hostile text into a task through the real entry points (signed slash
commands and forms, thread messages, a built-in agent's model turns) and then reads everything
threadwork sent to the Slack stand-in: the card's fallback ``text`` and blocks, its updates,
directives, escalations, agent posts, artifact notices, command replies and the App Home.
"""

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.agents import AgentKind, AgentSettings
from channels.slack import render
from channels.slack.parsing import unescape
from tests.agents.standins import AnthropicStandIn, Reply, Text, ToolUse
from tests.conftest import FakeClock
from tests.slack.conftest import AGENT_USER, ALICE, CHANNEL, Harness, start_service
from tests.slack.standin import SlackStandIn

#: Broadcasts, a user-group ping, a mention of someone uninvolved and a disguised link.
HOSTILE = (
    "Deploy <!channel> <!here> <!everyone> <!subteam^S123> <@UVICTIM1> "
    "see <https://evil.example|github.com/x> & more"
)
#: Any of these in what reached Slack would be live markup that a person or an agent wrote.
LIVE = ("<!channel", "<!here", "<!everyone", "<!subteam", "<@UVICTIM1", "<https://evil")
#: How the hostile text looks once inert: shown to people exactly as it was written.
INERT = "Deploy &lt;!channel&gt; &lt;!here&gt; &lt;!everyone&gt; &lt;!subteam^S123&gt;"


def texts(value: Any) -> Iterator[str]:
    """Every string inside a Slack payload (text, blocks, views), however deeply nested."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def assert_inert(*payloads: Any) -> str:
    """Fails on any live markup from the hostile text; returns all the text, joined."""
    joined = "\n".join(t for payload in payloads for t in texts(payload))
    for token in LIVE:
        assert token not in joined, f"{token!r} reached Slack live"
    return joined


def sent(service: Harness) -> list[dict[str, Any]]:
    """What threadwork asked Slack to show: every post, update and published view."""
    shown = (
        "chat.postMessage",
        "chat.update",
        "chat.postEphemeral",
        "views.publish",
        "chat.startStream",
        "chat.appendStream",
        "chat.stopStream",
    )
    return [c.args for c in service.standin.calls if c.method in shown]


def form_submission(title: str, description: str, assignee: str) -> dict[str, Any]:
    """The "Create task from message" form, submitted."""
    return {
        "type": "view_submission",
        "user": {"id": ALICE},
        "team": {"id": "T1"},
        "view": {
            "id": "V1",
            "type": "modal",
            "callback_id": "create_task_modal",
            "private_metadata": json.dumps({"channel": CHANNEL, "thread_ts": None}),
            "state": {
                "values": {
                    "title": {"value": {"type": "plain_text_input", "value": title}},
                    "description": {"value": {"type": "plain_text_input", "value": description}},
                    "assignee": {
                        "value": {"type": "static_select", "selected_option": {"value": assignee}}
                    },
                }
            },
        },
    }


async def hostile_task(service: Harness, assignee: str = "coder") -> str:
    """Task 1, created and assigned through the form, hostile in title and description; its
    card and directive delivered. Returns its thread."""
    response = await service.interact(form_submission(HOSTILE, HOSTILE, assignee))
    assert response.status == 200
    await service.deliver()
    thread_ts = (await service.task(1)).thread_ts
    assert thread_ts is not None
    return thread_ts


async def test_the_card_its_fallback_text_and_its_updates_show_hostile_text_inert(
    service: Harness,
) -> None:
    await hostile_task(service)

    [card] = [m for m in service.standin.posts(CHANNEL) if "thread_ts" not in m]
    [update] = service.standin.calls_to("chat.update")
    assert_inert(card, update.args)
    assert card["text"].startswith(f"C1#1 · {INERT}")
    heading, _, description = card["blocks"][:3]
    assert heading["text"] == {
        "type": "mrkdwn",
        "text": f"*C1#1* · {INERT} &lt;@UVICTIM1&gt; see "
        "&lt;https://evil.example|github.com/x&gt; &amp; more",
        "verbatim": True,
    }
    assert INERT in description["elements"][0]["text"]
    assert update.args["link_names"] in (False, "0", "false", "False")
    assert f"<@{AGENT_USER}>" in assert_inert(update.args["blocks"])  # threadwork's own mention


async def test_a_directive_and_a_redispatch_with_a_hostile_handoff_stay_inert(
    service: Harness,
) -> None:
    thread_ts = await hostile_task(service)
    await service.thread_message(AGENT_USER, HOSTILE, thread_ts)
    service.clock.advance(601)
    await service.core.reconciler.reconcile_stale_tasks()
    await service.deliver()

    directives = [
        m
        for m in service.standin.posts(CHANNEL)
        if m["metadata"]["event_type"] == "threadwork_directive"
    ]
    assert len(directives) == 2
    joined = assert_inert(directives)
    assert directives[0]["text"].startswith(f"<@{AGENT_USER}> — on behalf of <@{ALICE}>")
    assert "(board: <#C1>)" in directives[0]["text"]
    assert f'Last progress from the assignee: "{INERT}' in directives[1]["text"]
    assert joined.count(INERT) == 3  # the title twice, the handoff once


async def test_an_escalation_broadcast_to_the_channel_stays_inert(service: Harness) -> None:
    await hostile_task(service)
    for _ in range(2):
        service.clock.advance(601)
        await service.core.reconciler.reconcile_stale_tasks()
        await service.deliver()

    [escalation] = [
        m
        for m in service.standin.posts(CHANNEL)
        if m["metadata"]["event_type"] == "threadwork_escalation"
    ]
    assert_inert(escalation)
    assert escalation["text"].startswith(f"<@{ALICE}> *C1#1* · {INERT}")
    assert "`/task assign 1 &lt;agent&gt;`" in escalation["text"]


async def test_show_list_and_log_replies_show_hostile_notes_and_messages_inert(
    service: Harness,
) -> None:
    thread_ts = await hostile_task(service)
    await service.thread_message("UBOB0001", HOSTILE, thread_ts)
    await service.command(f"status 1 blocked {HOSTILE}")
    await service.command("status 1 todo")
    await service.command(f"new {HOSTILE}")
    await service.command("cancel 2")

    shown = await service.command("show 1")
    listed = await service.command("list")
    log = await service.command("log 1")

    assert_inert(shown, listed, log)
    assert f"> {INERT}" in shown  # the description
    assert f"• <@UBOB0001> 0s ago: {INERT}" in shown
    assert listed.count(INERT) == 2
    assert f"<@{ALICE}> marked it blocked: {INERT}" in log


async def test_the_app_home_shows_hostile_titles_inert(service: Harness) -> None:
    await hostile_task(service)
    service.standin.channels_of[ALICE] = [CHANNEL]

    home = {"type": "app_home_opened", "user": ALICE, "tab": "home", "channel": "D1"}
    assert await service.event(home) == 200
    await service.supervisor.drain()

    [published] = service.standin.calls_to("views.publish")
    sections = [b for b in published.args["view"]["blocks"] if b["type"] == "section"]
    assert INERT in assert_inert(sections)
    assert all(s["text"]["verbatim"] for s in sections)


async def test_nothing_threadwork_sent_anywhere_carries_live_hostile_markup(
    service: Harness,
) -> None:
    """The sweep: every call to Slack after a hostile task went through its whole life."""
    thread_ts = await hostile_task(service)
    await service.thread_message(AGENT_USER, HOSTILE, thread_ts)
    await service.command(f"status 1 in_progress {HOSTILE}")
    for command in ("show 1", "list", "log 1"):
        await service.command(command)
    for _ in range(2):
        service.clock.advance(601)
        await service.core.reconciler.reconcile_stale_tasks()
        await service.deliver()

    assert INERT in assert_inert(sent(service))


async def test_a_thread_turned_task_keeps_its_first_line_as_written_escaped_once(
    service: Harness,
) -> None:
    """Slack sends message text escaped; the title is stored plain and escaped once again
    only when shown, so ``R&D`` neither doubles to ``&amp;amp;`` nor turns into markup."""
    root = service.standin.add_message(CHANNEL, ALICE, "R&amp;D: &lt;!here&gt; <!channel> now")
    text = "<@UBOT> assign this to <@UCODER01>"
    event = {"type": "app_mention", "channel": CHANNEL, "user": ALICE, "text": text}
    reply = service.standin.add_message(CHANNEL, ALICE, text, thread_ts=root["ts"])
    assert await service.event(event | {"ts": reply["ts"], "thread_ts": root["ts"]}) == 200
    await service.deliver()

    assert (await service.task(1)).title == "R&D: <!here> <!channel> now"
    card = service.standin.posts(CHANNEL)[0]
    assert card["text"].startswith("C1#1 · R&amp;D: &lt;!here&gt; &lt;!channel&gt; now")
    assert_inert(service.standin.posts(CHANNEL))


async def test_the_create_task_form_is_prefilled_with_the_message_as_written(
    service: Harness,
) -> None:
    message = service.standin.add_message(CHANNEL, "UBOB0001", "R&amp;D &lt;soon&gt;\nmore")
    shortcut = {
        "type": "message_action",
        "callback_id": "create_task_from_message",
        "trigger_id": "trigger-9",
        "user": {"id": ALICE},
        "team": {"id": "T1"},
        "channel": {"id": CHANNEL},
        "message": message,
        "message_ts": message["ts"],
    }
    assert (await service.interact(shortcut)).status == 200

    [opened] = service.standin.calls_to("views.open")
    title, description = opened.args["view"]["blocks"][:2]
    assert title["element"]["initial_value"] == "R&D <soon>"  # plain_text: Slack parses none
    assert description["element"]["initial_value"] == "R&D <soon>\nmore"


@pytest.fixture
async def agents_service(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock, anthropic: AnthropicStandIn
) -> AsyncIterator[Harness]:
    """The service with a built-in Claude agent whose model is the Anthropic stand-in."""
    async for harness in start_service(
        sqlite_url, standin, clock, anthropic_base_url=anthropic.url
    ):
        await harness.core.registry.add_agent(
            "claude-1",
            AgentKind.CLAUDE,
            display_name="Claude",
            settings=AgentSettings(model="claude-standin-1"),
        )
        await harness.core.registry.set_api_key("claude-1", "sk-ant-output-safety")
        yield harness


async def run_agent(service: Harness) -> None:
    """Starts the due run and waits for it to end, then delivers what it posted."""
    runner = service.service.runner
    assert await runner.run_once() == 1
    for handle in list(runner.active.values()):
        await handle.task
    await service.deliver()


async def test_an_agents_posts_and_artifact_notices_reach_slack_inert(
    agents_service: Harness, anthropic: AnthropicStandIn
) -> None:
    service = agents_service
    await hostile_task(service, assignee="claude-1")
    artifact = {
        "task": "C1#1",
        "name": HOSTILE,
        "kind": "<!here>",
        "uri": "https://git.example/pr/1?tab=files&view=split",
    }
    anthropic.script(
        Reply([Text(f"*Started.* {HOSTILE}"), ToolUse("add_artifact", artifact)]),
        Reply([ToolUse("update_task_status", {"task": "C1#1", "status": "in_review"})]),
    )
    await run_agent(service)

    inert = f"{INERT} &lt;@UVICTIM1&gt; see &lt;https://evil.example|github.com/x&gt; &amp; more"
    # The agent's words (and the artifact's name in its progress line) streamed, inert.
    streamed = [m["text"] for m in service.standin.messages if "streaming" in m]
    assert streamed == [f"*Started.* {inert}\n✓ added artifact {inert}", "✓ moved to in_review"]
    posts = [
        m
        for m in service.standin.posts(CHANNEL)
        if (m.get("metadata") or {}).get("event_type") == "threadwork_agent_post"
    ]
    assert [m["text"] for m in posts] == [
        f":paperclip: Added artifact *{inert}* (&lt;!here&gt;) "
        "<https://git.example/pr/1?tab=files&amp;view=split>",
    ]
    async with service.core.store.read() as reader:
        stored = await reader.list_messages((await service.task(1)).id)
    # Stored plain: escaped once, on the way to Slack.
    assert stored[0].text == f"*Started.* {HOSTILE}\n✓ added artifact {HOSTILE}"

    shown = await service.command("show 1")
    log = await service.command("log 1")
    assert_inert(shown, log)
    assert (
        "(&lt;!here&gt;) <https://git.example/pr/1?tab=files&amp;view=split>" in shown
    )  # the artifact, linked by threadwork
    assert "added artifact Deploy &lt;!channel&gt;" in log
    assert INERT in assert_inert(sent(service))


# The escaping rules themselves -------------------------------------------------------------

#: Text in which every ``&`` starts one of the three entities and no ``<`` or ``>`` is left.
ESCAPED = re.compile(r"(?:[^&<>]|&amp;|&lt;|&gt;)*", re.DOTALL)
URIS = st.text() | st.builds(
    "{}://{}".format, st.sampled_from(["http", "https", "HTTPS", "javascript", "ftp"]), st.text()
)


@given(st.text())
def test_escaped_text_holds_no_markup_and_unescapes_to_exactly_what_was_written(
    text: str,
) -> None:
    escaped = render.escape(text)
    assert ESCAPED.fullmatch(escaped)
    assert "<!" not in escaped
    assert unescape(escaped) == text.replace("\x00", "")  # the edge drops NULs, by design


@given(st.text(), st.integers(min_value=1, max_value=40))
def test_clipped_text_fits_its_limit_and_never_cuts_an_entity(text: str, limit: int) -> None:
    clipped, whole = render.escape_clipped(text, limit), render.escape(text)
    assert len(clipped) <= limit
    if len(whole) <= limit:
        assert clipped == whole
    else:
        kept = clipped.removesuffix("…")
        assert clipped.endswith("…")
        assert whole.startswith(kept)
        assert ESCAPED.fullmatch(kept)


@given(URIS, st.text() | st.none())
def test_a_link_is_live_markup_only_for_a_linkable_uri_and_its_label_is_inert(
    uri: str, label: str | None
) -> None:
    shown = render.link(uri, label)
    if not render.linkable(uri):
        assert ESCAPED.fullmatch(shown)
        return
    assert shown.startswith("<")
    assert shown.endswith(">")
    target, bar, text = shown[1:-1].partition("|")
    assert ESCAPED.fullmatch(target)
    assert ESCAPED.fullmatch(text)
    assert unescape(target) == uri
    # The edge drops NULs, by design.
    assert (unescape(text) if bar else None) == (label.replace("\x00", "") if label else label)


@pytest.mark.parametrize(
    ("uri", "linked"),
    [
        ("https://git.example/pr/1", True),
        ("HTTP://Git.Example/a?b=1&c=2#d", True),
        ("https://evil.example|github.com/x", False),
        ("https://evil.example>github.com", False),
        ("https://git.example/a b", False),
        ("https://git.example/\u202egnp.exe", False),
        ("https://", False),
        ("javascript:alert(1)", False),
        ("ftp://files.example/x", False),
        ("git.example/pr/1", False),
        ("http://[::1", False),
    ],
)
def test_only_plain_http_and_https_urls_are_linked(uri: str, linked: bool) -> None:
    assert render.linkable(uri) is linked
    assert render.link(uri).startswith("<") is linked
