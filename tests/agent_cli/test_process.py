"""A command's process group, run under the reaper as the worker runs it: real processes, each
wait bounded."""

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from channels.agent_cli.process import KILL_GRACE_S, CommandProcess, group_alive

#: A shell that starts ``sleep`` in the background, says its pid, then runs ``$@``.
SPAWNS = 'sleep 600 & echo "child $!"; '


async def started(script: str, tmp_path: Path, prompt: str = "") -> CommandProcess:
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    return await CommandProcess.start(["sh", "-c", script], tmp_path, env, prompt)


async def line(process: CommandProcess, prefix: str) -> str:
    """The first output line starting with ``prefix``, once printed."""
    async with asyncio.timeout(10):
        while True:
            found = [
                x for x in process.tail.last(200, 100_000).splitlines() if x.startswith(prefix)
            ]
            if found:
                return found[0]
            process.tail.changed.clear()
            await process.tail.changed.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_prompt_arrives_on_stdin_which_is_then_closed(tmp_path: Path) -> None:
    process = await started('cat; echo "<eof>"', tmp_path, prompt="do the thing\n")
    assert await process.wait() == 0
    assert process.tail.last(5, 1000) == "do the thing\n<eof>"


async def test_stopping_ends_the_whole_group_even_a_child_that_ignores_sigterm(
    tmp_path: Path,
) -> None:
    script = SPAWNS + "trap '' TERM; sh -c 'trap \"\" TERM; echo stubborn $$; sleep 600' & wait"
    process = await started(script, tmp_path)
    child = int((await line(process, "child ")).split()[1])
    stubborn = int((await line(process, "stubborn ")).split()[1])
    assert os.getpgid(stubborn) == process.pgid

    begun = time.monotonic()
    await process.stop()

    assert time.monotonic() - begun < KILL_GRACE_S + 2
    assert not group_alive(process.pgid)
    assert not alive(child)
    assert not alive(stubborn)
    assert await process.wait() in (128 + signal.SIGTERM, 128 + signal.SIGKILL)


async def test_a_command_that_exits_takes_what_it_left_running_with_it(tmp_path: Path) -> None:
    process = await started(SPAWNS + "exit 7", tmp_path)
    child = int((await line(process, "child ")).split()[1])

    assert await process.wait() == 7  # the command's own status, not the reaper's

    assert not group_alive(process.pgid)
    assert not alive(child)


async def test_a_command_that_cannot_start_exits_127_saying_why(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    process = await CommandProcess.start(["no-such-cli-here"], tmp_path, env, "")
    assert await process.wait() == 127
    assert "cannot run 'no-such-cli-here'" in process.tail.last(5, 1000)


async def test_when_the_worker_dies_its_command_group_dies_too(tmp_path: Path) -> None:
    """A stand-in worker (a Python process running a command the way the worker does) is
    killed with SIGKILL; the reaper hears of it from the kernel and ends the group."""
    pids = tmp_path / "pids"
    code = (
        "import asyncio, os, sys\n"
        "from pathlib import Path\n"
        "from channels.agent_cli.process import CommandProcess\n"
        "async def main():\n"
        "    p = await CommandProcess.start(['sh', '-c', 'sleep 600 & echo $! > child; wait'],"
        f" Path({str(tmp_path)!r}), {{'PATH': os.environ['PATH']}}, '')\n"
        f"    Path({str(pids)!r}).write_text(str(p.pgid))\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    worker = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    async with asyncio.timeout(20):
        while not (pids.exists() and (tmp_path / "child").exists()):  # noqa: ASYNC110 - files another process writes: nothing to await
            await asyncio.sleep(0.02)
    pgid = int(pids.read_text())
    child = int((tmp_path / "child").read_text())

    worker.kill()
    await worker.wait()

    async with asyncio.timeout(KILL_GRACE_S + 3):
        while group_alive(pgid):  # noqa: ASYNC110 - the kernel tears the group down: nothing to await
            await asyncio.sleep(0.02)
    assert not alive(child)


async def test_a_descendant_that_left_the_group_with_setsid_is_gone_after_the_group_ends(
    tmp_path: Path,
) -> None:
    escape = (
        "import os, signal; os.setsid(); print('escaped', os.getpid(), flush=True); signal.pause()"
    )
    process = await started(f'{sys.executable} -c "{escape}" & wait', tmp_path)
    escaped = int((await line(process, "escaped ")).split()[1])
    assert os.getpgid(escaped) != process.pgid

    await process.stop()

    assert not group_alive(process.pgid)
    assert not alive(escaped)
