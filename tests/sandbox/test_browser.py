"""The sandbox in a real browser: a person's afternoon with it, in order, on one sandbox process.

The tests share one sandbox process and one page (module-scoped fixtures) and run in the order
written: each starts where the one before left the page, and later ones rely on the tasks
earlier ones made, so they are not meant to run alone or reordered. Every action goes through
the page as a person would do it (the composer, the card's menu, the session's Stop button, the
kill switch, the person switcher, a reload); every expectation is a bounded wait on what the
page shows. Each test ends with no console error on the page from its own steps.
"""

import os
import re
from typing import Any

import pytest

if os.environ.get("THREADWORK_REQUIRE_BROWSER") != "1":
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (.ci/run does)")
from playwright.sync_api import Locator, expect  # imported after the check above

GENERAL_TITLE = "Write the release notes"


def say(page: Any, line: str) -> None:
    """Types ``line`` in the channel's composer and sends it with Enter."""
    composer = page.get_by_label("Message #general")
    composer.fill(line)
    composer.press("Enter")
    expect(composer).to_have_value("")


def reply_to(page: Any, line: str) -> Locator:
    """The reply only the viewer sees, to the slash command ``line``."""
    return page.locator("#messages .ephemeral", has_text=line).last


def new_task(page: Any, title: str) -> str:
    """Creates a task with ``/task new`` and returns its ref, as the reply names it."""
    say(page, f"/task new {title}")
    reply = reply_to(page, f"/task new {title}")
    expect(reply).to_contain_text("Created")
    found = re.search(r"C0GENERAL#\d+", reply.inner_text())
    assert found is not None
    return found[0]


def card_of(page: Any, title: str) -> Locator:
    """The task card (a message with blocks) whose heading holds ``title``."""
    return page.locator("#messages article.message:has(.blocks)", has_text=title)


def assign_to_demo(card: Locator) -> None:
    card.get_by_role("combobox", name=re.compile("Assign|Reassign")).select_option(
        label="Demo (scripted)"
    )


def open_hood(page: Any) -> Locator:
    if page.locator("#hood").is_hidden():
        page.get_by_role("button", name="Under the hood").click()
    return page.locator("#hood-body")


def set_demo_hung(page: Any, hung: bool) -> None:
    open_hood(page)
    switch = page.locator("#hang-demo")
    if switch.get_attribute("aria-pressed") != str(hung).lower():
        switch.click()
    expect(switch).to_have_attribute("aria-pressed", str(hung).lower())


def test_a_new_task_command_shows_its_card_and_a_reply_only_you_see(page: Any) -> None:
    new_task(page, GENERAL_TITLE)
    card = card_of(page, GENERAL_TITLE)
    expect(card).to_contain_text("todo")
    expect(card.get_by_role("combobox", name="Assign…")).to_be_visible()
    expect(reply_to(page, f"/task new {GENERAL_TITLE}")).to_contain_text("Only visible to you")


def test_assigning_demo_from_the_card_menu_reaches_in_review_with_its_streamed_posts(
    page: Any,
) -> None:
    card = card_of(page, GENERAL_TITLE)
    assign_to_demo(card)
    card.locator("button.replies").click()
    thread = page.locator("#thread-messages")
    expect(thread.locator(".message.streaming").first).to_be_visible()
    expect(card).to_contain_text("in_review")
    for words in (f"Plan for “{GENERAL_TITLE}”", "Step 1 of 2", "Step 2 of 2", "Done:"):
        expect(thread).to_contain_text(words)
    expect(thread.locator(".message.streaming")).to_have_count(0)
    expect(page.locator("#session")).to_contain_text("active")


def test_stop_while_the_agent_works_blocks_the_task_with_your_name(page: Any) -> None:
    new_task(page, "Draft the launch email")
    card = card_of(page, "Draft the launch email")
    set_demo_hung(page, True)  # so that it is still at work when Stop is pressed
    try:
        assign_to_demo(card)
        card.locator("button.replies").click()
        session = page.locator("#session")
        expect(session).to_contain_text("working")
        session.get_by_role("button", name="Stop the agent session").click()
        expect(card).to_contain_text("blocked")
        expect(page.locator("#thread-messages")).to_contain_text("Stopped by @Ada (admin)")
    finally:
        set_demo_hung(page, False)


def test_a_killed_agent_is_redispatched_then_blocked_by_the_reconcile(page: Any) -> None:
    ref = new_task(page, "Summarise the incident")
    card = card_of(page, "Summarise the incident")
    hood = open_hood(page)
    set_demo_hung(page, True)
    try:
        assign_to_demo(card)
        expect(hood.locator(".lease", has_text=ref)).to_contain_text("attempt 1/2")
        expect(hood.locator(".lease", has_text=ref)).to_contain_text("attempt 2/2")
        expect(card).to_contain_text("blocked")
        events = hood.get_by_role("region", name="Task events")
        expect(events.locator("li", has_text=ref).filter(has_text="redispatched")).to_have_count(1)
        expect(events.locator("li", has_text=ref).filter(has_text=" blocked ")).to_have_count(1)
    finally:
        set_demo_hung(page, False)


def test_the_create_task_shortcut_opens_its_form_and_creates_the_task(page: Any) -> None:
    welcome = page.locator("#messages article.message", has_text="Welcome to the threadwork")
    welcome.hover()
    welcome.get_by_role("button", name="Create task from message").click()
    form = page.locator("#modal")
    expect(form.get_by_role("heading", name="Create task")).to_be_visible()
    form.get_by_label("Title", exact=True).fill("Welcome newcomers")
    form.get_by_role("button", name="Create").click()
    expect(form).to_be_hidden()
    welcome.locator("button.replies").click()
    expect(page.locator("#thread-messages")).to_contain_text("Welcome newcomers")


def test_the_agent_key_form_opens_from_its_command_and_takes_the_key(page: Any) -> None:
    say(page, "/task-admin agent key demo")
    form = page.locator("#modal")
    expect(form.get_by_role("heading", name="Agent API key")).to_be_visible()
    form.get_by_label("API key for demo").fill("sk-sandbox-not-a-real-key")
    form.get_by_role("button", name="Save key").click()
    expect(form).to_be_hidden()
    expect(page.locator("#messages")).not_to_contain_text("sk-sandbox-not-a-real-key")


def test_the_member_not_in_private_ops_sees_none_of_its_tasks(page: Any) -> None:
    page.get_by_label("You are").select_option(label="Mika (member)")
    expect(page.locator("#channel-list")).to_contain_text("general")
    expect(page.locator("#channel-list")).not_to_contain_text("private-ops")
    say(page, "/task show C0PRIVOPS#1")
    expect(reply_to(page, "/task show C0PRIVOPS#1")).to_contain_text("There is no task C0PRIVOPS#1")
    page.get_by_role("button", name=re.compile("Home")).click()
    home = page.locator("#home")
    expect(home).to_contain_text(GENERAL_TITLE)
    expect(home).not_to_contain_text("Rotate the on-call pager keys")

    page.get_by_label("You are").select_option(label="Ada (admin)")
    page.get_by_role("button", name=re.compile("Home")).click()
    expect(home).to_contain_text("Rotate the on-call pager keys")
    page.get_by_role("button", name="# general").click()


def test_a_reload_shows_everything_still_there(page: Any) -> None:
    page.reload()
    page.wait_for_selector("#connection[data-state=live]")
    expect(page.get_by_label("You are")).to_have_value("U0ADA")
    card = card_of(page, GENERAL_TITLE)
    expect(card).to_contain_text("in_review")
    expect(card_of(page, "Draft the launch email")).to_contain_text("blocked")
    card.locator("button.replies").click()
    expect(page.locator("#thread-messages")).to_contain_text("Step 2 of 2")
