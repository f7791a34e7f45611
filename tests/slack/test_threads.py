"""Threads and interactivity: mentions, missed events, the card's controls, modals, App Home."""

import asyncio
import json
from typing import Any

from slack_bolt.response import BoltResponse

from bot.root import open_core
from bot.status import TaskStatus
from bot.work import WakeReason
from channels.slack.socket_mode import envelope_reply
from tests.slack.conftest import AGENT_USER, ALICE, CHANNEL, Harness
from tests.slack.standin import BOT_USER


async def assigned_task(service: Harness) -> str:
    await service.command("new Write the changelog")
    await service.command("assign 1 coder")
    await service.deliver()
    thread_ts = (await service.task(1)).thread_ts
    assert thread_ts is not None
    return thread_ts


def mention(text: str, ts: str, thread_ts: str | None = None, user: str = ALICE) -> dict[str, Any]:
    event = {"type": "app_mention", "channel": CHANNEL, "user": user, "text": text, "ts": ts}
    return event | ({"thread_ts": thread_ts} if thread_ts else {})


async def test_a_mention_turns_its_thread_into_an_assigned_task(service: Harness) -> None:
    root = service.standin.add_message(CHANNEL, ALICE, "The nightly export is failing\nsee logs")
    reply = service.standin.add_message(
        CHANNEL, ALICE, "<@UBOT> assign this to <@UCODER01>", thread_ts=root["ts"]
    )
    assert await service.event(mention(reply["text"], reply["ts"], root["ts"])) == 200
    assert await service.event({"type": "message", "channel": CHANNEL} | reply) == 200
    await service.deliver()

    task = await service.task(1)
    assert (task.title, task.thread_ts, task.assignee) == (
        "The nightly export is failing",
        root["ts"],
        "coder",
    )
    assert task.assigned_by == ALICE
    card, directive = service.standin.posts(CHANNEL)
    assert card["thread_ts"] == root["ts"]
    assert directive["thread_ts"] == root["ts"]
    assert directive["text"].startswith(f"<@{AGENT_USER}> — on behalf of <@{ALICE}>")
    assert task.card_ts == card["ts"]


async def test_a_mention_in_a_task_thread_reassigns_that_task(service: Harness) -> None:
    thread_ts = await assigned_task(service)
    await service.core.registry.add_agent("reviewer", slack_user_id="UREVIEW1")
    note = service.standin.add_message(
        CHANNEL, ALICE, "<@UBOT> assign to reviewer", thread_ts=thread_ts
    )
    assert await service.event(mention(note["text"], note["ts"], thread_ts)) == 200
    task = await service.task(1)
    assert (task.assignee, task.claimed_by) == ("reviewer", "reviewer")
    async with service.core.store.read() as reader:
        assert len(await reader.list_tasks()) == 1


async def test_a_mention_that_is_not_a_command_gets_a_private_hint_and_changes_nothing(
    service: Harness,
) -> None:
    message = service.standin.add_message(CHANNEL, ALICE, "<@UBOT> what can you do?")
    assert await service.event(mention(message["text"], message["ts"])) == 200
    [hint] = service.standin.calls_to("chat.postEphemeral")
    assert hint.args["user"] == ALICE
    assert "assign this to @agent" in hint.args["text"]
    async with service.core.store.read() as reader:
        assert await reader.list_tasks() == []


async def test_a_redelivered_mention_assigns_once(service: Harness) -> None:
    root = service.standin.add_message(CHANNEL, ALICE, "Rotate the keys")
    note = service.standin.add_message(
        CHANNEL, ALICE, "<@UBOT> assign this to coder", thread_ts=root["ts"]
    )
    event = mention(note["text"], note["ts"], root["ts"])
    assert await service.event(event, event_id="EvMENTION") == 200
    assert await service.event(event, event_id="EvMENTION", retry=1) == 200
    task = await service.task(1)
    assert (task.lease_epoch, task.attempts) == (1, 1)


async def test_a_post_whose_event_slack_never_sent_still_counts_before_a_redispatch(
    service: Harness,
) -> None:
    thread_ts = await assigned_task(service)
    service.clock.advance(500)
    service.standin.add_message(
        CHANNEL, AGENT_USER, "pushed a fix, testing now", thread_ts=thread_ts
    )
    service.clock.advance(200)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.renewed] == ["C1#1"]
    assert report.acted == 0
    task = await service.task(1)
    assert (task.attempts, task.status) == (1, TaskStatus.TODO)
    async with service.core.store.read() as reader:
        [missed] = await reader.list_messages(task.id)
    assert (missed.author, missed.text) == (AGENT_USER, "pushed a fix, testing now")


async def test_a_persons_post_that_slack_never_sent_is_stored_and_wakes_the_assignee(
    service: Harness,
) -> None:
    thread_ts = await assigned_task(service)
    task = await service.task(1)
    async with service.core.store.transaction() as unit:
        await unit.consume_wakeups("coder", service.clock())  # the directive's, taken
    service.clock.advance(300)
    service.standin.add_message(CHANNEL, ALICE, "use the staging DB &amp; skip CI", thread_ts)
    service.clock.advance(400)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.redispatched] == ["C1#1"]  # the assignee stayed silent
    async with service.core.store.transaction() as unit:
        messages = await unit.list_messages(task.id)
        woken = await unit.consume_wakeups("coder", service.clock())
    assert [(m.author, m.text) for m in messages] == [(ALICE, "use the staging DB & skip CI")]
    assert sorted(w.reason for w in woken) == [WakeReason.MESSAGE, WakeReason.REDISPATCH]
    # The app's own posts in the thread (card, directive) were not taken for a person's.
    assert all(m.author != BOT_USER for m in messages)


async def test_when_the_thread_cannot_be_read_the_reconcile_waits_instead_of_redispatching(
    service: Harness,
) -> None:
    await assigned_task(service)
    service.clock.advance(601)
    service.standin.fail("conversations.replies", 429, retry_after=30)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert (report.deferred, report.acted) == (1, 0)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.redispatched] == ["C1#1"]


def action_payload(action: dict[str, Any], user: str = ALICE) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user},
        "team": {"id": "T1"},
        "channel": {"id": CHANNEL},
        "container": {"type": "message", "channel_id": CHANNEL},
        "trigger_id": "trigger-2",
        "actions": [action],
    }


async def test_the_cards_buttons_move_the_status_and_the_card_follows(service: Harness) -> None:
    await assigned_task(service)
    card = service.standin.calls_to("chat.update")[-1].args["blocks"]
    buttons = {e["action_id"]: e for e in card[-1]["elements"] if e["type"] == "button"}
    assert set(buttons) == {
        "task_status_in_progress",
        "task_status_in_review",
        "task_status_done",
        "task_status_blocked",
        "task_stop",
        "task_cancel",
    }
    response = await service.interact(action_payload(buttons["task_status_in_progress"]))
    assert response.status == 200
    await service.deliver()
    assert (await service.task(1)).status == TaskStatus.IN_PROGRESS
    fields = service.standin.calls_to("chat.update")[-1].args["blocks"][1]["fields"]
    assert "`in_progress`" in fields[0]["text"]


async def test_the_cards_agent_menu_reassigns_and_cancel_then_reopen_work(service: Harness) -> None:
    await assigned_task(service)
    await service.core.registry.add_agent("reviewer", display_name="Reviewer")
    menu = {
        "action_id": "task_assign",
        "type": "static_select",
        "selected_option": {"value": "C1#1 reviewer"},
    }
    await service.interact(action_payload(menu))
    assert (await service.task(1)).assignee == "reviewer"
    await service.interact(
        action_payload({"action_id": "task_cancel", "type": "button", "value": "C1#1"})
    )
    assert (await service.task(1)).status == TaskStatus.CANCELED
    await service.interact(
        action_payload({"action_id": "task_status_reopen", "type": "button", "value": "C1#1"})
    )
    reopened = await service.task(1)
    assert (reopened.status, reopened.claimed_by) == (TaskStatus.TODO, "reviewer")


async def test_a_refused_card_action_is_told_to_that_person_alone(service: Harness) -> None:
    await assigned_task(service)
    await service.command("status 1 done")
    action = {"action_id": "task_status_in_progress", "type": "button", "value": "C1#1"}
    await service.interact(action_payload(action))
    [refusal] = service.standin.calls_to("chat.postEphemeral")
    assert refusal.args["user"] == ALICE
    assert "reopen it first" in refusal.args["text"]
    assert (await service.task(1)).status == TaskStatus.DONE


async def test_the_message_shortcut_opens_a_form_whose_submission_creates_and_assigns(
    service: Harness,
) -> None:
    message = service.standin.add_message(
        CHANNEL, "UBOB0001", "Customers see 502s on /export\nSince 9am"
    )
    shortcut = {
        "type": "message_action",
        "callback_id": "create_task_from_message",
        "trigger_id": "trigger-3",
        "user": {"id": ALICE},
        "team": {"id": "T1"},
        "channel": {"id": CHANNEL},
        "message": message,
        "message_ts": message["ts"],
    }
    assert (await service.interact(shortcut)).status == 200
    [opened] = service.standin.calls_to("views.open")
    view = opened.args["view"]
    assert view["callback_id"] == "create_task_modal"
    assert view["blocks"][0]["element"]["initial_value"] == "Customers see 502s on /export"

    submission = {
        "type": "view_submission",
        "user": {"id": ALICE},
        "team": {"id": "T1"},
        "view": {
            "id": "V1",
            "type": "modal",
            "callback_id": "create_task_modal",
            "private_metadata": view["private_metadata"],
            "state": {
                "values": {
                    "title": {"value": {"type": "plain_text_input", "value": "Fix 502s on export"}},
                    "description": {"value": {"type": "plain_text_input", "value": "Since 9am"}},
                    "assignee": {
                        "value": {"type": "static_select", "selected_option": {"value": "coder"}}
                    },
                }
            },
        },
    }
    assert (await service.interact(submission)).status == 200
    task = await service.task(1)
    assert (task.title, task.description, task.thread_ts, task.assignee) == (
        "Fix 502s on export",
        "Since 9am",
        message["ts"],
        "coder",
    )


async def test_an_empty_title_in_the_form_is_an_inline_error(service: Harness) -> None:
    submission = {
        "type": "view_submission",
        "user": {"id": ALICE},
        "team": {"id": "T1"},
        "view": {
            "id": "V1",
            "type": "modal",
            "callback_id": "create_task_modal",
            "private_metadata": json.dumps({"channel": CHANNEL, "thread_ts": "1.0"}),
            "state": {
                "values": {
                    "title": {"value": {"type": "plain_text_input", "value": "   "}},
                    "description": {"value": {"type": "plain_text_input", "value": None}},
                    "assignee": {
                        "value": {"type": "static_select", "selected_option": {"value": "-"}}
                    },
                }
            },
        },
    }
    response = await service.interact(submission)
    assert response.status == 200
    answer = await response.json()
    assert answer["response_action"] == "errors"
    assert "needs a title" in answer["errors"]["title"]
    async with service.core.store.read() as reader:
        assert await reader.list_tasks() == []


async def test_app_home_shows_the_viewers_board_with_lapsed_leases_first(service: Harness) -> None:
    await assigned_task(service)
    await service.command("new Second task")
    await service.command("status 2 blocked")
    service.clock.advance(601)
    service.standin.channels_of[ALICE] = [CHANNEL]
    assert (
        await service.event(
            {"type": "app_home_opened", "user": ALICE, "tab": "home", "channel": "D1"}
        )
        == 200
    )
    await service.supervisor.drain()
    [published] = service.standin.calls_to("views.publish")
    assert published.args["user_id"] == ALICE
    sections = [
        b["text"]["text"] for b in published.args["view"]["blocks"] if b["type"] == "section"
    ]
    assert sections[0].startswith("*:hourglass: Lease lapsed*")
    assert "*C1#1*" in sections[0]
    assert sections[1].startswith("*:red_circle: Blocked*")
    assert "*C1#2*" in sections[1]


async def test_app_home_shows_what_was_finished_this_week_last(service: Harness) -> None:
    await service.command("new Old news")
    await service.command("status 1 done")
    service.clock.advance(8 * 24 * 3600)
    await service.command("new Shipped")
    await service.command("status 2 done")
    await service.command("new Dropped")
    await service.command("cancel 3")
    await service.command("new Still open")
    service.standin.channels_of[ALICE] = [CHANNEL]
    home = {"type": "app_home_opened", "user": ALICE, "tab": "home", "channel": "D1"}
    assert await service.event(home) == 200
    await service.supervisor.drain()
    [published] = service.standin.calls_to("views.publish")
    sections = [
        b["text"]["text"] for b in published.args["view"]["blocks"] if b["type"] == "section"
    ]
    assert [s.splitlines()[0] for s in sections] == [
        "*:white_circle: To do*",
        "*:white_check_mark: Done this week*",
        "*:heavy_multiplication_x: Canceled this week*",
    ]
    assert "*C1#4*" in sections[0]
    assert "*C1#2*" in sections[1]
    assert "unassigned · done 0s ago" in sections[1]
    assert "*C1#3*" in sections[2]
    assert "C1#1" not in "".join(sections)  # finished eight days ago


async def test_shutdown_first_stores_the_posts_already_acknowledged(service: Harness) -> None:
    thread_ts = await assigned_task(service)
    task = await service.task(1)
    # The service runs on SQLite, where an open write transaction holds the one writer: the
    # posts can be acknowledged but only queue until it ends.
    async with service.core.store.transaction():
        for n in range(5):
            await service.thread_message(AGENT_USER, f"step {n}", thread_ts, settle=False)
        closing = asyncio.create_task(service.close())
        for _ in range(20):  # let the shutdown run as far as it can
            await asyncio.sleep(0)
        assert not closing.done()  # waiting for the acknowledged posts to be stored
    async with asyncio.timeout(10):
        await closing
    async with open_core(service.core.settings) as after, after.store.read() as reader:
        stored = [m.text for m in await reader.list_messages(task.id)]
    assert [t for t in stored if t.startswith("step")] == [f"step {n}" for n in range(5)]


def test_a_socket_mode_reply_carries_the_listeners_answer() -> None:
    empty = envelope_reply("env-1", BoltResponse(status=200, body=""))
    assert (empty.envelope_id, empty.payload) == ("env-1", None)
    answered = envelope_reply(
        "env-2",
        BoltResponse(
            status=200,
            body=json.dumps({"text": "hi"}),
            headers={"content-type": "application/json"},
        ),
    )
    assert answered.payload == {"text": "hi"}
