"""A step's words are sent to its stream at a bounded rate, and kept whole when streaming fails.

``StepStream`` against a recording fake of the ``Stream`` port and a clock the test moves; the
whole path through Slack is in tests/slack/test_streaming.py.
"""

from dataclasses import dataclass, field

from bot.runtime.stream import FLUSH_CHARS, Said, StepStream, Stream, StreamUnavailable
from bot.session import SessionStatus


@dataclass
class RecordingStream:
    """A stream that records what it was sent; it refuses appends once ``fail_after`` passed."""

    appended: list[str] = field(default_factory=list)
    stopped: int = 0
    fail_after: int | None = None

    async def append(self, text: str) -> None:
        if self.fail_after is not None and len(self.appended) >= self.fail_after:
            raise StreamUnavailable("message_not_in_streaming_state")
        self.appended.append(text)

    async def stop(self, session: SessionStatus | None = None) -> str:
        self.stopped += 1
        return "1700000000.000100"


@dataclass
class Moment:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def step_stream(stream: RecordingStream, moment: Moment) -> StepStream:
    async def opener() -> Stream:
        return stream

    return StepStream(opener, moment)


async def test_words_arriving_within_half_a_second_are_sent_together() -> None:
    stream, moment = RecordingStream(), Moment()
    said = step_stream(stream, moment)
    await said.write("Hel")  # the first words go at once
    for words in ("lo ", "there"):
        moment.now += 0.1
        await said.write(words)
    assert stream.appended == ["Hel"]
    moment.now += 0.4
    await said.write("!")
    assert stream.appended == ["Hel", "lo there!"]
    assert await said.finish(SessionStatus.PROCESSING) == "1700000000.000100"
    assert (stream.appended, stream.stopped, said.state) == (["Hel", "lo there!"], 1, Said.STOPPED)


async def test_a_few_hundred_waiting_characters_are_sent_at_once() -> None:
    stream, moment = RecordingStream(), Moment()
    said = step_stream(stream, moment)
    await said.write("Plan:")
    await said.write(" x" * FLUSH_CHARS)
    assert "".join(stream.appended) == said.text


async def test_the_stream_shows_exactly_the_text_without_whitespace_at_either_end() -> None:
    stream, moment = RecordingStream(), Moment()
    said = step_stream(stream, moment)
    await said.write("\n\n  ")
    await said.write("Reading it.\n\n")
    await said.line("… reading the thread")
    await said.write("  \n")
    await said.finish(SessionStatus.PROCESSING)
    assert said.text == "Reading it.\n… reading the thread"
    assert "".join(stream.appended) == said.text


async def test_when_no_stream_opens_nothing_is_sent_and_the_words_are_kept_to_post() -> None:
    async def refused() -> Stream:
        raise StreamUnavailable("channel_type_not_supported")

    said = StepStream(refused, Moment())
    await said.write("On it.")
    assert said.state is Said.UNAVAILABLE
    assert await said.finish(SessionStatus.PROCESSING) is None
    assert said.text == "On it."


async def test_a_stream_that_breaks_is_ended_and_keeps_the_whole_text_to_post() -> None:
    stream, moment = RecordingStream(fail_after=1), Moment()
    said = step_stream(stream, moment)
    await said.write("Adding ")
    moment.now += 1
    await said.write("the endpoint.")
    await said.line("✓ moved to in_progress")
    assert await said.finish(SessionStatus.PROCESSING) is None
    assert (said.state, stream.stopped) == (Said.BROKEN, 1)
    assert said.text == "Adding the endpoint.\n✓ moved to in_progress"
    assert stream.appended == ["Adding"]
