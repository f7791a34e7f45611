"""Tool servers: the MCP servers a built-in agent's runs connect to, and the admin grammar for them.

An admin gives a built-in agent servers with ``agent tools NAME add LABEL stdio "COMMAND ARGS"``
or ``... add LABEL http URL [header=K:V ...]``, either optionally with ``allow=tool1,tool2``; the
model sees their tools as ``LABEL__TOOL``. The same words are read here for Slack's
``/task-admin`` and the ``threadwork agents tools`` command, so both refuse the same mistakes
with the same sentences. Header values are secrets: they are kept apart from the server (in
:class:`ToolServerAdd` and :class:`ToolServerLaunch`, never in a repr) and stored encrypted.
"""

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from bot.errors import InvalidInput

#: Between a server's label and its tool's own name in the name the model sees.
SEPARATOR = "__"
#: A label: a lowercase letter, then letters, digits or '-' (no '_', so SEPARATOR stays unique).
_LABEL = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
#: A tool name the model can be offered (Anthropic's and OpenAI's rule), once qualified.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
#: Headers the HTTP transport sets itself; a stored one would break the connection.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "accept", "mcp-session-id", "mcp-protocol-version"}
)
MAX_COMMAND_CHARS = 2000
MAX_URL_CHARS = 2000
MAX_HEADERS = 16

USAGE = {
    "add": '/task-admin agent tools <name> add <label> stdio "<command> <args>" '
    "[allow=<tool>,<tool>]  or  /task-admin agent tools <name> add <label> http <url> "
    "[header=<Name>:<value> ...] [allow=<tool>,<tool>]",
    "remove": "/task-admin agent tools <name> remove <label>",
    "list": "/task-admin agent tools <name> list",
}
ALL_USAGE = f"{USAGE['add']}\n{USAGE['remove']}\n{USAGE['list']}"


class Stored(StrEnum):
    """What storing a tool server under its label did."""

    ADDED = "added"
    #: A server of that label was there, and is replaced.
    REPLACED = "replaced"


class Transport(StrEnum):
    """How threadwork reaches a tool server."""

    #: A command threadwork starts for each run, speaking MCP on its stdin and stdout.
    STDIO = "stdio"
    #: A running server at a URL, spoken to over MCP's streamable HTTP.
    HTTP = "http"


@dataclass(frozen=True)
class ToolServer:
    """One tool server of an agent, as stored; header values are not part of it."""

    label: str
    transport: Transport
    #: The command and its arguments (stdio); empty for http.
    command: tuple[str, ...] = ()
    url: str | None = None
    #: The server's own tool names the model may call; None offers every tool.
    allow: tuple[str, ...] | None = None
    #: The names of the headers stored (encrypted) with it; their values are never shown.
    header_names: tuple[str, ...] = ()
    #: Set in a listing when the operator no longer permits it (see ``bot.tool_server_policy``):
    #: why, in a short line. Such a server is kept, but not started.
    denied: str | None = None

    @property
    def target(self) -> str:
        """The command line or the URL, as an admin would type it."""
        return shlex.join(self.command) if self.transport is Transport.STDIO else self.url or ""

    def describe(self) -> str:
        """One line for a listing: label, transport, target, allow-list and header names."""
        parts = [f"{self.label} · {self.transport.value} · {self.target}"]
        if self.allow is not None:
            parts.append("allow " + ", ".join(self.allow))
        if self.header_names:
            parts.append("headers " + ", ".join(self.header_names) + " (values hidden)")
        return " · ".join(parts)


@dataclass(frozen=True)
class ToolServerLaunch:
    """What a run connects with: the server, its headers decrypted, or why it cannot start."""

    server: ToolServer
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Set when the server cannot be started as stored (its headers do not decrypt).
    problem: str | None = None


@dataclass(frozen=True)
class ToolServerList:
    """``tools NAME list``."""


@dataclass(frozen=True)
class ToolServerRemove:
    """``tools NAME remove LABEL``."""

    label: str


@dataclass(frozen=True)
class ToolServerAdd:
    """``tools NAME add LABEL ...``: the server, and its header values (secret)."""

    server: ToolServer
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


ToolServerRequest = ToolServerList | ToolServerRemove | ToolServerAdd


def parse_label(text: str) -> str:
    """The label ``text`` names, or InvalidInput saying what a label may be."""
    if not _LABEL.match(text):
        raise InvalidInput(
            f"`{text[:40]}` is not a tool server label: use a lowercase letter, then up to 23 "
            "lowercase letters, digits or '-'."
        )
    return text


def parse_request(words: Sequence[str]) -> ToolServerRequest:
    """The request the words after ``tools NAME`` make; InvalidInput names what is wrong."""
    if not words:
        raise InvalidInput("`agent tools` needs `add`, `remove` or `list` after the agent's name.")
    action, rest = words[0].lower(), list(words[1:])
    if action == "list":
        if rest:
            raise InvalidInput("`tools list` takes nothing after it.")
        return ToolServerList()
    if action == "remove":
        if len(rest) != 1:
            raise InvalidInput("`tools remove` needs the label of one server.")
        return ToolServerRemove(parse_label(rest[0]))
    if action == "add":
        if not rest:
            raise InvalidInput("`tools add` needs a label, a transport and a command or URL.")
        return _parse_add(parse_label(rest[0]), rest[1:])
    raise InvalidInput(f"`{action[:40]}` is not a `tools` action; use `add`, `remove` or `list`.")


def _parse_add(label: str, words: list[str]) -> ToolServerAdd:
    positional, headers, allow = _split_add_options(words)
    if not positional:
        raise InvalidInput('Say how to reach it: `stdio "<command> <args>"` or `http <url>`.')
    try:
        transport = Transport(positional[0].lower())
    except ValueError:
        raise InvalidInput(
            f"`{positional[0][:40]}` is not a transport; use `stdio` or `http`."
        ) from None
    if len(positional) != 2:
        what = '`stdio "<command> <args>"` (the command in quotes)'
        if transport is Transport.HTTP:
            what = "`http <url>`"
        raise InvalidInput(f"Give exactly one command or URL after the transport: {what}.")
    if transport is Transport.STDIO:
        if headers:
            raise InvalidInput("`header=` is for http servers; a stdio server takes none.")
        server = ToolServer(label, transport, command=_command(positional[1]), allow=allow)
    else:
        server = ToolServer(
            label, transport, url=_url(positional[1]), allow=allow, header_names=tuple(headers)
        )
    return ToolServerAdd(server, headers)


def _split_add_options(
    words: list[str],
) -> tuple[list[str], dict[str, str], tuple[str, ...] | None]:
    """Positional words, ``header=K:V`` headers (by name) and the ``allow=`` list."""
    positional: list[str] = []
    headers: dict[str, str] = {}
    allow: tuple[str, ...] | None = None
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.lower() == "header":
            name, header_value = _header(value)
            if name.lower() in {h.lower() for h in headers}:
                raise InvalidInput(f"Header `{name}` is given twice.")
            headers[name] = header_value
        elif sep and key.lower() == "allow":
            if allow is not None:
                raise InvalidInput("Give `allow=` once, with the tools comma-separated.")
            allow = _allow(value)
        else:
            positional.append(word)
    if len(headers) > MAX_HEADERS:
        raise InvalidInput(f"A tool server can have at most {MAX_HEADERS} headers.")
    return positional, headers, allow


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not value or not _HEADER_NAME.match(name):
        raise InvalidInput(
            "A header is `header=<Name>:<value>`, its name letters, digits and '-' (the value is "
            "not shown here)."
        )
    if name.lower() in _RESERVED_HEADERS:
        raise InvalidInput(f"Header `{name}` is set by the MCP transport itself; leave it out.")
    if any(ch in value for ch in "\r\n\0"):
        raise InvalidInput(f"Header `{name}`'s value has a line break; it cannot be sent.")
    return name, value


def _allow(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not _TOOL_NAME.match(n)]
    if not names or bad:
        raise InvalidInput(
            "`allow=` takes the server's own tool names, comma-separated (letters, digits, '_' "
            "and '-'), e.g. `allow=git_log,git_status`."
        )
    return tuple(sorted(set(names)))


def _command(text: str) -> tuple[str, ...]:
    if len(text) > MAX_COMMAND_CHARS or "\0" in text:
        raise InvalidInput(f"The command can be at most {MAX_COMMAND_CHARS} characters.")
    try:
        argv = tuple(shlex.split(text))
    except ValueError:
        raise InvalidInput("A quote in the command is not closed.") from None
    if not argv:
        raise InvalidInput('The command is empty; give it in quotes: `stdio "<command> <args>"`.')
    if "/" in argv[0] and not argv[0].startswith("/"):
        raise InvalidInput(
            f"`{argv[0][:100]}` is a relative path, which depends on threadwork's working "
            "directory: give the command by name (found on its PATH) or by absolute path."
        )
    return argv


def _url(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname or len(text) > MAX_URL_CHARS:
        raise InvalidInput("An http tool server needs an http(s) URL, like https://host/mcp.")
    try:
        port = url.port
    except ValueError:
        port = 0
    if port == 0:
        raise InvalidInput("The URL's port must be a number from 1 to 65535.")
    if url.username or url.password:
        raise InvalidInput(
            "The URL must not carry credentials; pass them as `header=Authorization:<value>`."
        )
    return text


def qualified_name(label: str, tool: str) -> str | None:
    """The name the model calls ``tool`` of server ``label`` by; None if no model could."""
    name = f"{label}{SEPARATOR}{tool}"
    return name if _TOOL_NAME.match(name) else None
