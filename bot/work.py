"""What agents work with: artifacts, wake-ups, token usage."""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

from bot.errors import InvalidInput

MAX_ARTIFACT_CHARS = 200_000
MAX_ARTIFACT_NAME = 200
MAX_ARTIFACT_URI = 2000
MAX_ARTIFACTS_PER_TASK = 100


@dataclass(frozen=True)
class Artifact:
    """Something an agent produced for a task: a link, or stored content."""

    id: int
    task_id: int
    name: str
    kind: str
    uri: str | None
    content: str | None
    created_by: str
    created_at: datetime


class WakeReason(StrEnum):
    """Why an agent should look at a task now."""

    DIRECTIVE = "directive"
    REDISPATCH = "redispatch"
    MESSAGE = "message"
    #: A waiting agent's lease TTL passed with no answer: it should assume and go on.
    ASSUME = "assume"
    #: A person stopped the attempt: the agent must stop working on the task at once.
    STOP = "stop"


@dataclass(frozen=True)
class Wakeup:
    """A queued reason for ``agent`` to work on ``task_id`` at lease ``epoch``."""

    id: int
    task_id: int
    agent: str
    reason: WakeReason
    epoch: int
    created_at: datetime


@dataclass(frozen=True)
class Usage:
    """Tokens one model step used."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0


@dataclass(frozen=True)
class TaskUsage:
    """A task's running totals across every step of every run."""

    steps: int
    usage: Usage


def check_artifact(name: str, kind: str, uri: str | None, content: str | None) -> None:
    """Raises InvalidInput naming the limit an artifact is over; nothing is stored then."""
    if not name.strip() or not kind.strip():
        raise InvalidInput("An artifact needs a name and a kind.")
    if len(name.strip()) > MAX_ARTIFACT_NAME or len(kind.strip()) > MAX_ARTIFACT_NAME:
        raise InvalidInput(
            f"An artifact's name and kind can be at most {MAX_ARTIFACT_NAME} characters each."
        )
    if (uri is None) == (content is None):
        raise InvalidInput("Give an artifact either a `uri` or `content`, not both or neither.")
    if uri is not None:
        scheme = urlsplit(uri.strip()).scheme.lower()
        if scheme not in ("http", "https") or len(uri) > MAX_ARTIFACT_URI:
            raise InvalidInput(
                f"An artifact's `uri` must be an http(s) URL of at most {MAX_ARTIFACT_URI:,} "
                "characters."
            )
    if content is not None and len(content.encode()) > MAX_ARTIFACT_CHARS:
        raise InvalidInput(
            f"Artifact content can be at most {MAX_ARTIFACT_CHARS:,} bytes (200 kB)."
        )


def token_kinds(usage: Usage) -> dict[str, int]:
    """A model call's tokens by the kind metrics count them under."""
    return {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "cache_read": usage.cache_read_tokens,
        "cache_creation": usage.cache_creation_tokens,
    }
