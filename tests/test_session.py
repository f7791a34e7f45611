"""The session mapping: total over every task state, and the same table as the README's."""

import itertools
import re
from dataclasses import replace
from pathlib import Path

from bot.session import SESSION_TABLE, SessionStatus, Work, session_status, work_of
from bot.status import TaskStatus
from bot.task import Task
from tests.conftest import START

README = Path(__file__).resolve().parents[1] / "README.md"


def a_task(**fields: object) -> Task:
    base = Task(1, "C1", 1, "t", "", TaskStatus.TODO, "user:U1", START, START)
    return replace(base, **fields)  # type: ignore[arg-type]  # fields of Task, by name


def readme_table() -> dict[tuple[TaskStatus, Work], SessionStatus]:
    """The README's session table, one entry per (status, work) it covers."""
    text = README.read_text()
    table = text.split("<!-- session-table:start -->")[1].split("<!-- session-table:end -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    entries: dict[tuple[TaskStatus, Work], SessionStatus] = {}
    for row in rows:
        statuses, doing, session = (cell.strip() for cell in row.strip("|").split("|"))
        works = list(Work) if doing == "any" else [Work(re.findall(r"`(\w+)`", doing)[0])]
        for status in re.findall(r"`(\w+)`", statuses):
            for work in works:
                entries[TaskStatus(status), work] = SessionStatus(session.strip("`"))
    return entries


def test_the_table_covers_every_status_and_every_kind_of_work() -> None:
    assert set(SESSION_TABLE) == set(TaskStatus)
    assert all(set(row) == set(Work) for row in SESSION_TABLE.values())


def test_the_readme_table_is_the_code_s_table() -> None:
    code = {(s, w): v for s, row in SESSION_TABLE.items() for w, v in row.items()}
    assert readme_table() == code


def test_every_task_state_maps_to_exactly_the_table_s_session_status() -> None:
    """Over every combination of status, assignee, claim, wait, agent kind and run."""
    states = itertools.product(
        TaskStatus, (None, "coder"), (None, "coder"), (None, START), (True, False), (True, False)
    )
    seen = set()
    for status, assignee, claimed_by, awaiting, built_in, running in states:
        task = a_task(
            status=status, assignee=assignee, claimed_by=claimed_by, awaiting_input_since=awaiting
        )
        session = session_status(task, built_in=built_in, running=running)
        if assignee is None:
            assert session is None  # never assigned: no session
            continue
        work = work_of(task, built_in=built_in, running=running)
        assert session == SESSION_TABLE[status][work]
        seen.add((status, work))
    assert seen == {(s, w) for s in TaskStatus for w in Work}


def test_what_the_assignee_is_doing_follows_claim_wait_and_run() -> None:
    held = a_task(assignee="coder", claimed_by="coder")
    assert work_of(held, built_in=False, running=False) == Work.WORKING  # external: no runs
    assert work_of(held, built_in=True, running=True) == Work.WORKING
    assert work_of(held, built_in=True, running=False) == Work.IDLE
    waiting = replace(held, awaiting_input_since=START)
    assert work_of(waiting, built_in=True, running=True) == Work.WAITING
    assert work_of(replace(held, claimed_by=None), built_in=True, running=True) == Work.UNCLAIMED
