"""How a worker's output tail reads on the card and in ``/task show``: inert, in one code block,
its newest lines kept."""

from datetime import UTC, datetime, timedelta

from bot.agents import Agent
from bot.status import TaskStatus
from bot.task import LeasePolicy, Task
from channels.slack import render

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POLICY = LeasePolicy(timedelta(seconds=600), 2)


def leased(tail: str | None, tail_epoch: int = 7) -> Task:
    return Task(
        id=1,
        channel_id="C1",
        number=3,
        title="Fix the flaky test",
        description="",
        status=TaskStatus.IN_PROGRESS,
        created_by="user:U1",
        created_at=NOW,
        updated_at=NOW,
        assignee="coder",
        claimed_by="coder",
        attempts=1,
        lease_epoch=7,
        last_progress_at=NOW,
        alive_at=NOW,
        output_tail=tail,
        output_tail_epoch=tail_epoch,
    )


def card_texts(task: Task) -> list[str]:
    agents: dict[str, Agent] = {}
    blocks = render.card_blocks(task, POLICY, agents, NOW, None)
    return [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]


def test_the_card_shows_the_current_attempts_output_tail_inert_in_one_code_block() -> None:
    tail = "running <!channel> tests\n```\nbreakout <@U999> & done"
    [_heading, shown] = card_texts(leased(tail))
    assert shown.startswith("*Output* (last lines)\n```\n")
    assert shown.endswith("\n```")
    body = shown.removeprefix("*Output* (last lines)\n```\n").removesuffix("\n```")
    assert "`" not in body  # no line can end the block
    assert "&lt;!channel&gt;" in body
    assert "&lt;@U999&gt; &amp; done" in body
    assert "<!" not in body
    assert "<@" not in body


def test_an_earlier_attempts_tail_is_not_shown() -> None:
    assert len(card_texts(leased("old output", tail_epoch=6))) == 1
    assert len(card_texts(leased(None))) == 1


def test_a_tail_too_long_for_the_card_keeps_its_newest_lines() -> None:
    tail = "\n".join(f"line {n} <>" for n in range(500))
    text = render.output_tail_text(tail, limit=200)
    body = text.split("```\n", 1)[1].removesuffix("\n```")
    assert body.endswith("line 499 &lt;&gt;")
    assert "line 1 " not in body
    assert len(body) <= 200
