"""A ``threadwork sandbox`` process and a real browser on its page, shared by a module's tests.

The browser is Debian's chromium driven by Playwright (``executable_path``: Playwright cannot
download its own browsers here). Where either is missing the browser tests skip, saying so;
with THREADWORK_REQUIRE_BROWSER=1 (CI) they fail instead. The page collects every console
error and uncaught exception, and each test ends by checking it caused none.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.process import SandboxProcess

CHROMIUM = Path(os.environ.get("THREADWORK_CHROMIUM", "/usr/bin/chromium"))
#: Waits in the browser: generous, for a loaded 2-core machine.
WAIT_MS = 20_000
#: Short leases and a frequent reconcile, so a hung agent is re-dispatched, then blocked, in
#: seconds (a demo run renews its lease at every step, each well under a second).
FAST_LEASES = ("--lease-ttl", "5", "--reconcile-every", "1")


def _missing(what: str) -> None:
    if os.environ.get("THREADWORK_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} is required here (THREADWORK_REQUIRE_BROWSER=1)")
    pytest.skip(f"{what} is not installed; .ci/run installs it")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    process = SandboxProcess(tmp_path_factory.mktemp("sandbox"), args=FAST_LEASES)
    process.start()
    try:
        process.wait_until_answering()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python")
    if not CHROMIUM.exists():
        _missing(f"chromium ({CHROMIUM})")
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def problems() -> list[str]:
    """Console errors and uncaught exceptions the page reported."""
    return []


@pytest.fixture(scope="module")
def page(browser: Any, sandbox: SandboxProcess, problems: list[str]) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    opened.goto(sandbox.url + "/")
    opened.wait_for_selector("#connection[data-state=live]")
    yield opened
    context.close()


@pytest.fixture(autouse=True)
def no_console_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a browser test whose page logged an error or threw while it ran (the list is
    emptied first, so an earlier test's error fails that test only)."""
    if "page" not in request.fixturenames:
        yield
        return
    problems: list[str] = request.getfixturevalue("problems")
    problems.clear()
    yield
    assert problems == [], "the page reported errors"
