"""The leader of a command's process group: the command, and everything it starts, dies with it.

The worker runs ``python -I -S reaper.py PARENT_PID GRACE_S COMMAND ARGS...`` in a new session,
so this process's pid is the group's id. It asks Linux to send it SIGTERM when the worker dies
(``PR_SET_PDEATHSIG``, checked against ``PARENT_PID`` in case the worker died first) and to
adopt the command's orphaned descendants (``PR_SET_CHILD_SUBREAPER``), then runs the command in
its group. On SIGTERM, SIGINT or SIGHUP, and whenever the command exits, it ends the rest of
the group, and every descendant that left it (``setsid``) but whose parents lead back here:
SIGTERM, then SIGKILL to whatever is left after ``GRACE_S``. It exits with the
command's status (128 + N when a signal ended it), and no process of the group outlives it.

Standard library only, and run as a file rather than a module, so that it starts in
milliseconds.
"""

import contextlib
import ctypes
import os
import signal
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Exit status when the command could not be started (as a shell says "command not found").
NOT_STARTED = 127
#: How often the group is looked at while it winds down.
POLL_S = 0.02
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stop(Exception):
    """A stop signal arrived: the group ends."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signum)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _status(wait_status: int) -> int:
    """A shell's exit status for ``wait_status``."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _reap() -> None:
    """Reaps whatever children (the command, adopted descendants) have exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every live process's state, parent pid and group, read from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            found[int(entry)] = (fields[0], int(fields[1]), int(fields[2]))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def _others(group: int) -> list[int]:
    """The live processes of ``group`` other than this one, and those whose parents lead
    back to this one (a descendant that left the group with setsid is still its to end)."""
    me, processes = os.getpid(), _processes()

    def descends(pid: int) -> bool:
        seen = set()
        while pid not in seen and pid in processes:
            seen.add(pid)
            pid = processes[pid][1]
            if pid == me:
                return True
        return False

    return [
        pid
        for pid, (state, _parent, pgrp) in processes.items()
        if pid != me and state != "Z" and (pgrp == group or descends(pid))
    ]


def end_group(grace_s: float) -> None:
    """SIGTERM to the rest of the group and to this process's descendants outside it, then
    SIGKILL to what is left after ``grace_s``."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # the group's SIGTERM is for the others
    group = os.getpgrp()
    os.killpg(group, signal.SIGTERM)
    _signal(_others(group), signal.SIGTERM)  # those of the group have it already
    deadline = time.monotonic() + grace_s
    while True:
        _reap()
        left = _others(group)
        if not left:
            _reap()  # one may have died since the last look: no zombie is left to the kernel
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    _signal(left, signal.SIGKILL)
    while _others(group) and time.monotonic() < deadline + 1.0:
        _reap()
        time.sleep(POLL_S)
    _reap()


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def wait_for(child: int) -> int:
    """Waits for the command, reaping adopted descendants meanwhile; its exit status."""
    while True:
        pid, wait_status = os.waitpid(-1, 0)
        if pid == child:
            return _status(wait_status)


def main(argv: list[str]) -> int:
    """Runs the command in ``argv`` as described above; returns the exit status."""
    parent, grace_s, command = int(argv[1]), float(argv[2]), argv[3:]
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # never end a group it does not lead (the worker starts a session)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        if os.getppid() != parent:
            raise Stop(signal.SIGTERM)  # the worker died before the line above
        try:
            child = os.posix_spawnp(command[0], command, dict(os.environ))
        except OSError as exc:
            print(f"threadwork worker: cannot run {command[0]!r}: {exc}", file=sys.stderr)
            return NOT_STARTED
        status = wait_for(child)
    except Stop as stop:
        end_group(grace_s)
        return 128 + int(stop.args[0])
    end_group(grace_s)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
