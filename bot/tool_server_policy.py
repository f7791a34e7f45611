"""What the operator lets admins give built-in agents: the commands a stdio tool server may run
(THREADWORK_TOOL_SERVER_COMMANDS) and the hosts an http tool server may be at
(THREADWORK_TOOL_SERVER_HOSTS).

A stdio server is a command run on the service's host, so none may run until the operator lists
its executable: by bare name (found on the service's PATH, and matched only when typed bare) or
by absolute path (matched only as that path). An http server is sent its stored headers, so
without a list of hosts it may be at any https host, and at plain http only on loopback, where
nothing travels unencrypted off the machine; with a list, only at the hosts listed (``name`` on
any port, ``name:port`` on that one), over http or https. The same check refuses an add and
keeps a stored server that the operator no longer permits from starting.
"""

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from bot.tool_servers import ToolServer, Transport

COMMANDS_SETTING = "THREADWORK_TOOL_SERVER_COMMANDS"
HOSTS_SETTING = "THREADWORK_TOOL_SERVER_HOSTS"
#: The most characters of a command or host a denial repeats.
_SHOWN = 100


class DenialKind(StrEnum):
    """Why the operator's settings do not permit a tool server."""

    #: THREADWORK_TOOL_SERVER_COMMANDS is empty: no stdio server may run.
    STDIO_OFF = "stdio_off"
    #: The command's first word is not among THREADWORK_TOOL_SERVER_COMMANDS.
    COMMAND_NOT_LISTED = "command_not_listed"
    #: The URL's host is not among THREADWORK_TOOL_SERVER_HOSTS.
    HOST_NOT_LISTED = "host_not_listed"
    #: Plain http to a host off this machine, with no THREADWORK_TOOL_SERVER_HOSTS set.
    PLAIN_HTTP = "plain_http"


@dataclass(frozen=True)
class Denial:
    """A tool server the operator does not permit: why, and what it names (command or host)."""

    kind: DenialKind
    #: The command's first word, or the URL's host (``name`` or ``name:port``).
    subject: str
    #: The entries of the setting that denies it (empty for STDIO_OFF and PLAIN_HTTP).
    listed: tuple[str, ...] = ()

    @property
    def note(self) -> str:
        """A short line, without Slack markup, for a listing or a run's report."""
        subject = self.subject[:_SHOWN]
        match self.kind:
            case DenialKind.STDIO_OFF:
                return f"stdio tool servers are off ({COMMANDS_SETTING} is empty)"
            case DenialKind.COMMAND_NOT_LISTED:
                return f"{subject} is not in {COMMANDS_SETTING}"
            case DenialKind.HOST_NOT_LISTED:
                return f"{subject} is not in {HOSTS_SETTING}"
            case DenialKind.PLAIN_HTTP:
                return f"plain http to {subject} is off ({HOSTS_SETTING} is empty: https only)"

    @property
    def sentence(self) -> str:
        """What an admin is told when adding the server: why, and how the operator allows it."""
        subject = self.subject[:_SHOWN]
        listed = ", ".join(f"`{entry}`" for entry in self.listed)
        match self.kind:
            case DenialKind.STDIO_OFF:
                return (
                    "Stdio tool servers are off: each runs a command on threadwork's host, so "
                    f"the operator lists the commands they may run in {COMMANDS_SETTING}. To allow "
                    f"this one, set {COMMANDS_SETTING}={subject} in threadwork's environment "
                    "(commas between commands, each a name or an absolute path) and restart it."
                )
            case DenialKind.COMMAND_NOT_LISTED:
                return (
                    f"`{subject}` is not a command tool servers may run here: "
                    f"{COMMANDS_SETTING} lists only {listed}. To allow it, the operator adds "
                    f"`{subject}` to {COMMANDS_SETTING} and restarts threadwork."
                )
            case DenialKind.HOST_NOT_LISTED:
                return (
                    f"`{subject}` is not a host tool servers may be at here: {HOSTS_SETTING} "
                    f"lists only {listed}. To allow it, the operator adds `{subject}` to "
                    f"{HOSTS_SETTING} and restarts threadwork."
                )
            case DenialKind.PLAIN_HTTP:
                return (
                    f"Plain http to `{subject}` would send the requests and their headers "
                    "unencrypted, so it is only for this machine (localhost, 127.0.0.1, ::1). "
                    f"Use an https URL, or the operator lists the host in {HOSTS_SETTING} and "
                    "restarts threadwork."
                )


@dataclass(frozen=True)
class ToolServerPolicy:
    """The commands and hosts the operator permits; see the module docstring."""

    #: Executables a stdio server may run, by bare name or absolute path; empty: stdio is off.
    commands: frozenset[str] = frozenset()
    #: Hosts (``name`` or ``name:port``) an http server may be at; empty: any https host, and
    #: plain http on loopback.
    hosts: frozenset[str] = frozenset()

    def denial(self, server: ToolServer) -> Denial | None:
        """Why the operator does not permit ``server``; None when it does."""
        if server.transport is Transport.STDIO:
            return self._command_denial(server.command[0])
        assert server.url is not None  # an http server always has one
        return self._url_denial(server.url)

    def _command_denial(self, executable: str) -> Denial | None:
        if not self.commands:
            return Denial(DenialKind.STDIO_OFF, executable)
        if executable in self.commands:
            return None
        return Denial(DenialKind.COMMAND_NOT_LISTED, executable, tuple(sorted(self.commands)))

    def _url_denial(self, url: str) -> Denial | None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        name = f"[{host}]" if ":" in host else host  # as a list writes an IPv6 address
        secure = parts.scheme == "https"
        default = 443 if secure else 80
        port = _port(url, default)
        shown = name if port == default else f"{name}:{port}"
        if self.hosts:
            if name in self.hosts or f"{name}:{port}" in self.hosts:
                return None
            return Denial(DenialKind.HOST_NOT_LISTED, shown, tuple(sorted(self.hosts)))
        if secure or _is_loopback(name):
            return None
        return Denial(DenialKind.PLAIN_HTTP, shown)


def _port(url: str, default: int) -> int:
    """The URL's port, ``default`` when it names none, 0 when it names no valid one (a server
    stored before ports were checked: no list names port 0)."""
    try:
        port = urlsplit(url).port
    except ValueError:
        return 0
    return default if port is None else port


def _is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False
