"""The whole task loop through signed requests, the real server and slack_sdk against the stand-in."""

from bot.status import TaskStatus
from bot.task import EventKind
from tests.slack.conftest import AGENT_USER, ALICE, CHANNEL, Harness
from tests.slack.standin import BOT_USER


async def new_task(service: Harness, title: str = "Fix the login bug") -> str:
    reply = await service.command(f"new {title}")
    await service.deliver()
    return reply


async def test_task_new_posts_a_card_whose_thread_becomes_the_task(service: Harness) -> None:
    reply = await new_task(service)
    assert "Created *C1#1*" in reply
    [card] = service.standin.posts(CHANNEL)
    assert "thread_ts" not in card
    assert card["metadata"]["event_type"] == "threadwork_card"
    assert "*C1#1* · Fix the login bug" in card["blocks"][0]["text"]["text"]
    task = await service.task(1)
    assert (task.card_ts, task.thread_ts) == (card["ts"], card["ts"])


async def test_assigning_posts_a_directive_in_the_thread_and_updates_the_card(
    service: Harness,
) -> None:
    await new_task(service)
    reply = await service.command("assign #1 <@UCODER01>")
    assert "Assigned *C1#1* to `coder`" in reply
    await service.deliver()
    task = await service.task(1)
    directive = service.standin.posts(CHANNEL)[-1]
    assert directive["thread_ts"] == task.thread_ts
    assert directive["text"].startswith(f"<@{AGENT_USER}> — on behalf of <@{ALICE}>")
    epoch = (await service.task(1)).lease_epoch
    assert (
        f'update_task_status(task="C1#1", status="in_progress", epoch={epoch})'
        in (directive["text"])
    )
    assert "Attempt 1/2 · lease 600s" in directive["text"]
    assert "<#C1>" in directive["text"]
    payload = directive["metadata"]["event_payload"]
    assert directive["metadata"]["event_type"] == "threadwork_directive"
    assert (payload["task"], payload["epoch"], payload["attempt"]) == ("C1#1", task.lease_epoch, 1)
    [update] = service.standin.calls_to("chat.update")
    assert update.args["ts"] == task.card_ts
    fields = " ".join(f["text"] for f in update.args["blocks"][1]["fields"])
    assert f"<@{AGENT_USER}>" in fields
    assert "1/2" in fields


async def test_the_assignees_posts_renew_the_lease_and_others_are_only_stored(
    service: Harness,
) -> None:
    await new_task(service)
    await service.command("assign 1 coder")
    await service.deliver()
    task = await service.task(1)
    assert task.thread_ts is not None

    service.clock.advance(300)
    await service.thread_message("UBOB0001", "any news?", task.thread_ts)
    assert (await service.task(1)).last_progress_at == task.last_progress_at

    service.clock.advance(100)
    await service.thread_message(AGENT_USER, "working on it", task.thread_ts)
    renewed = await service.task(1)
    assert renewed.last_progress_at == service.clock.now
    async with service.core.store.read() as reader:
        messages = await reader.list_messages(task.id)
    assert [(m.author, m.text) for m in messages] == [
        ("UBOB0001", "any news?"),
        (AGENT_USER, "working on it"),
    ]


async def test_a_silent_agent_is_redispatched_then_blocked_with_an_escalation(
    service: Harness,
) -> None:
    await new_task(service)
    await service.command("assign 1 coder")
    await service.deliver()
    task = await service.task(1)
    assert task.thread_ts is not None
    await service.thread_message(AGENT_USER, "looking into the session cookie", task.thread_ts)

    service.clock.advance(601)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.redispatched] == ["C1#1"]
    await service.deliver()
    redirective = service.standin.posts(CHANNEL)[-1]
    assert "Attempt 2/2" in redirective["text"]
    assert (
        'Last progress from the assignee: "looking into the session cookie"' in redirective["text"]
    )
    assert redirective["metadata"]["event_payload"]["attempt"] == 2

    service.clock.advance(601)
    report = await service.core.reconciler.reconcile_stale_tasks()
    assert [str(r) for r in report.blocked] == ["C1#1"]
    await service.deliver()
    escalation = service.standin.posts(CHANNEL)[-1]
    assert escalation["text"].startswith(f"<@{ALICE}> *C1#1*")
    assert "no progress for 600s after 2 attempt(s)" in escalation["text"]
    assert "/task assign 1" in escalation["text"]
    blocked = await service.task(1)
    assert (blocked.status, blocked.claimed_by, blocked.assignee) == (
        TaskStatus.BLOCKED,
        None,
        "coder",
    )
    card_update = service.standin.calls_to("chat.update")[-1]
    assert "`blocked`" in card_update.args["blocks"][1]["fields"][0]["text"]


async def test_a_redelivered_event_is_acknowledged_and_processed_once(service: Harness) -> None:
    await new_task(service)
    await service.command("assign 1 coder")
    await service.deliver()
    task = await service.task(1)
    assert task.thread_ts is not None
    message = service.standin.add_message(
        CHANNEL, AGENT_USER, "done with step 1", thread_ts=task.thread_ts
    )
    event = {"type": "message", "channel": CHANNEL} | message
    assert await service.event(event, event_id="EvSAME") == 200
    service.clock.advance(50)
    assert await service.event(event, event_id="EvSAME", retry=1) == 200
    assert await service.event(event, event_id="EvSAME", retry=2) == 200
    async with service.core.store.read() as reader:
        assert len(await reader.list_messages(task.id)) == 1
    assert (await service.task(1)).last_progress_at == service.clock.now - __import__(
        "datetime"
    ).timedelta(seconds=50)


async def test_the_apps_own_messages_are_ignored(service: Harness) -> None:
    await new_task(service)
    await service.command("assign 1 coder")
    await service.deliver()
    task = await service.task(1)
    assert task.thread_ts is not None
    await service.thread_message(
        BOT_USER, "a post by threadwork itself", task.thread_ts, bot_id="BBOT"
    )
    async with service.core.store.read() as reader:
        assert await reader.list_messages(task.id) == []
    async with service.core.store.read() as reader:
        kinds = [e.kind for e in await reader.list_events(task.id)]
    assert kinds == [EventKind.CREATED, EventKind.ASSIGNED, EventKind.DISPATCHED]
