"""Streaming a built-in agent's words into its task's thread as the model writes them.

The port the runtime streams through; the chat adapter implements it (``channels.slack.stream``).
A stream is live output, not a state change: what it shows is stored as the agent's post once
it completes (``AgentWork.record_stream``), and if the platform cannot stream, the run posts
the step's text through the outbox instead, so nothing is lost either way.

``StepStream`` is one step's words on their way: the model's text deltas and the run's progress
lines are buffered and sent at a bounded rate, so a fast model does not become a burst of calls.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Protocol

import structlog

from bot.session import SessionStatus
from bot.task import Task

logger = structlog.get_logger(__name__)

#: Words wait in the buffer at most this long (while more keep coming) before they are sent.
FLUSH_SECONDS = 0.5
#: Words are sent at once when this many characters wait.
FLUSH_CHARS = 300
#: How long ending a stream early may take (a run being cancelled waits for it).
END_SECONDS = 2.0


class StreamUnavailable(Exception):
    """The platform cannot stream into this thread now (or ended the stream): post instead."""


class Stream(Protocol):
    """One message being streamed into a task's thread."""

    async def append(self, text: str) -> None:
        """Adds ``text`` to the message; raises StreamUnavailable if it cannot."""
        ...

    async def stop(self, session: SessionStatus | None = None) -> str:
        """Ends the message and returns its id (Slack's ts); raises StreamUnavailable. Ending a
        stream sets the thread's session status too: to ``session``, or (None) the platform's
        default, ``active``."""
        ...


class ThreadStreams(Protocol):
    """Opens streams in task threads."""

    async def start(self, task: Task, agent: str, display_name: str) -> Stream:
        """Starts a message in ``task``'s thread under the agent's name, addressed to whoever
        assigned the task; raises StreamUnavailable if the platform cannot stream there."""
        ...


Opener = Callable[[], Awaitable[Stream]]


class Said(StrEnum):
    """Where one step's words stand."""

    #: Nothing sent yet: the stream opens with the first words.
    IDLE = "idle"
    #: The stream is open and shows every word sent so far.
    STREAMING = "streaming"
    #: No stream could open: nothing was shown, the run posts the words instead.
    UNAVAILABLE = "unavailable"
    #: The stream failed after it opened: the run posts the whole text instead.
    BROKEN = "broken"
    #: The stream ended whole: the run stores what it showed.
    STOPPED = "stopped"


class StepStream:
    """One step's words for people, streamed as they come.

    Words are sent when FLUSH_SECONDS passed since the last send or FLUSH_CHARS wait (the
    first words at once, which opens the stream), and whitespace at either end of the text is
    never sent, so ``text`` is exactly what the stream showed once it stopped.
    """

    def __init__(
        self, opener: Opener | None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        """``opener`` opens the stream; None means there is none and the run posts instead."""
        self._open = opener
        self._monotonic = monotonic
        self._stream: Stream | None = None
        self._sent = 0
        self._sent_at = 0.0
        self.text = ""
        self.state = Said.IDLE if opener is not None else Said.UNAVAILABLE
        #: Set by ``finish`` or ``end``: nothing more is written or sent.
        self.closed = False
        #: Set when a stream was ended without saying what the session shows (an early end):
        #: the platform then shows its default, and the session must be told again.
        self.session_unknown = False

    async def write(self, words: str) -> None:
        """Adds the model's words; sends what waits if it is time."""
        if self.closed:
            return
        self.text += words if self.text else words.lstrip()
        if self.state is Said.IDLE or self._due():
            await self._flush()

    async def line(self, line: str) -> None:
        """Adds a progress line of the run's, on a line of its own."""
        self.text = self.text.rstrip()  # never sent: only what precedes more words is sent
        await self.write(("\n" if self.text else "") + line)

    async def finish(self, session: SessionStatus) -> str | None:
        """Sends what waits and ends the stream, leaving the session at ``session``; returns
        its ts when it showed the whole text, else None (no stream opened, or it broke: see
        ``state``). Only the first call acts."""
        if self.closed:
            return None
        await self._flush()
        self.closed = True
        self.text = self.text.rstrip()
        if self.state is Said.BROKEN:
            await self._stop_quietly()
        if self.state is not Said.STREAMING:
            return None
        assert self._stream is not None
        try:
            ts = await self._stream.stop(session)
        except StreamUnavailable as exc:
            self._fail(exc)
            self.session_unknown = True
            return None
        self.state = Said.STOPPED
        return ts

    async def end(self) -> None:
        """Ends the stream where it is, sending nothing more (the step failed, or the run
        stopped or was cancelled), so it does not stay "streaming" in the thread."""
        if self.closed:
            return
        self.closed = True
        if self.state in (Said.STREAMING, Said.BROKEN):
            await self._stop_quietly()

    def _due(self) -> bool:
        waiting = len(self.text.rstrip()) - self._sent
        return waiting >= FLUSH_CHARS or self._monotonic() - self._sent_at >= FLUSH_SECONDS

    async def _flush(self) -> None:
        end = len(self.text.rstrip())
        if end <= self._sent or self.state not in (Said.IDLE, Said.STREAMING):
            return
        try:
            if self._stream is None:
                assert self._open is not None
                self._stream = await self._open()
                self.state = Said.STREAMING
            await self._stream.append(self.text[self._sent : end])
        except StreamUnavailable as exc:
            self._fail(exc)
            return
        self._sent, self._sent_at = end, self._monotonic()

    def _fail(self, exc: StreamUnavailable) -> None:
        self.state = Said.UNAVAILABLE if self._stream is None else Said.BROKEN
        event = "stream.unavailable" if self._stream is None else "stream.broken"
        logger.warning(event, error=str(exc), sent_chars=self._sent)

    async def _stop_quietly(self) -> None:
        """Ends a broken stream if the platform still lets it be ended; its words are posted."""
        assert self._stream is not None
        self.session_unknown = True
        try:
            async with asyncio.timeout(END_SECONDS):
                await self._stream.stop()
        except (StreamUnavailable, TimeoutError) as exc:
            logger.info("stream.stop_failed", error=str(exc) or type(exc).__name__)
