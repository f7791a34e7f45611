"""The model-API stand-ins, proved with the real ``anthropic.AsyncAnthropic`` client (and, for the
OpenAI-compatible one, requests shaped like the OpenAI chat API)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic

from tests.agents.standins import (
    AnthropicStandIn,
    Failure,
    Hang,
    OpenAIStandIn,
    Reply,
    Text,
    ToolUse,
    cache_report,
    prefix_reuse,
)

KEY = "sk-ant-test-key"
MODEL = "claude-standin-1"  # a name the SDK never deprecates: its warning would fail the run
WAIT = 5.0  # bound on every wait for the server's side of a request
WEATHER: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "The weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def standin() -> AsyncIterator[AnthropicStandIn]:
    standin = AnthropicStandIn()
    await standin.start()
    yield standin
    await standin.close()


@pytest.fixture
async def client(standin: AnthropicStandIn) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(api_key=KEY, base_url=standin.url, max_retries=0) as client:
        yield client


async def ask(client: AsyncAnthropic, **params: Any) -> anthropic.types.Message:
    params.setdefault("messages", [{"role": "user", "content": "Hello"}])
    message: anthropic.types.Message = await client.messages.create(
        model=MODEL, max_tokens=1024, **params
    )
    return message


async def test_create_returns_the_scripted_text_and_records_the_key(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.script(Reply([Text("Hi there, how can I help?")]))

    message = await ask(client, system="Be brief.")

    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "Hi there, how can I help?")
    ]
    assert (message.model, message.role, message.stop_reason) == (MODEL, "assistant", "end_turn")
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    [request] = standin.requests
    assert request.api_key == KEY
    assert request.body["system"] == "Be brief."
    assert request.usage == message.usage.model_dump(exclude_none=True)


async def test_stream_assembles_tool_input_from_partial_json_chunks(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    city = {"city": "Reykjavik", "units": "metric", "days": [1, 2, 3]}
    standin.script(Reply([Text("Let me look that up."), ToolUse("get_weather", city)]))

    async with client.messages.stream(
        model=MODEL, max_tokens=1024, tools=[WEATHER], messages=[{"role": "user", "content": "?"}]
    ) as stream:
        events = [event async for event in stream]
        message = await stream.get_final_message()

    text, tool = message.content
    assert text.type == "text"
    assert text.text == "Let me look that up."
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == (
        "toolu_1",
        "get_weather",
        city,
    )
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens > 1
    json_deltas = [e for e in events if e.type == "input_json"]
    assert len(json_deltas) > 1


async def test_create_with_stream_true_yields_the_api_event_sequence(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.script(Reply([Text("one two three")]))

    stream = await client.messages.create(
        model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "Count"}], stream=True
    )
    async with stream:
        types = [event.type async for event in stream]

    deltas = types.count("content_block_delta")
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas > 1


async def test_client_retries_429_and_529_honouring_retry_after_then_succeeds(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.script(
        Failure(429, retry_after=0.01), Failure(529, retry_after=0.01), Reply([Text("done")])
    )

    message = await ask(client.with_options(max_retries=2))

    assert message.content[0].type == "text"
    assert message.content[0].text == "done"
    assert [r.headers["x-stainless-retry-count"] for r in standin.requests] == ["0", "1", "2"]
    gaps = [b.at - a.at for a, b in zip(standin.requests, standin.requests[1:], strict=False)]
    # Without retry-after the SDK would back off at least 0.375 s (0.5 s less up to 25% jitter).
    assert all(0.01 <= gap < 0.3 for gap in gaps)


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
async def test_a_failure_raises_the_sdk_error_class_for_its_status(
    standin: AnthropicStandIn,
    client: AsyncAnthropic,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    standin.script(Failure(status, retry_after=7))

    with pytest.raises(error_class) as raised:
        await ask(client)

    assert raised.value.status_code == status
    assert raised.value.type == error_type
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.request_id is not None


async def test_an_unscripted_request_fails_at_once_saying_so(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.InternalServerError, match="no scripted reply"):
        await ask(client.with_options(max_retries=2))

    assert len(standin.requests) == 1


async def test_a_responder_answers_once_the_script_runs_out(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    async def echo(body: dict[str, Any]) -> Reply:
        return Reply([Text(f"you said {body['messages'][-1]['content']}")])

    standin.script(Reply([Text("scripted")]))
    standin.responder = echo

    first, second = await ask(client), await ask(client)

    assert [m.content[0].text for m in (first, second) if m.content[0].type == "text"] == [
        "scripted",
        "you said Hello",
    ]


async def read_stream(client: AsyncAnthropic, seen: list[str]) -> None:
    """Streams a reply, noting each event's type as it arrives."""
    async with client.messages.stream(
        model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "?"}]
    ) as stream:
        async for event in stream:
            seen.append(event.type)


async def test_a_hung_stream_ended_by_a_client_timeout_leaves_the_server_healthy(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.script(Hang(), Reply([Text("back again")]))
    seen: list[str] = []

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read_stream(client, seen), timeout=0.2)

    assert seen == ["message_start"]  # the SDK drops the ping
    async with asyncio.timeout(WAIT):
        await standin.until_hung(0)
    assert (await ask(client)).content[0].type == "text"
    assert standin.requests[0].usage is not None


async def test_a_hung_create_times_out_as_an_api_timeout_error(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.script(Hang())

    with pytest.raises(anthropic.APITimeoutError):
        await ask(client.with_options(timeout=0.1))

    async with asyncio.timeout(WAIT):
        await standin.until_hung(0)


async def test_close_releases_a_stalled_request() -> None:
    standin = AnthropicStandIn()
    await standin.start()
    standin.script(Hang())
    async with AsyncAnthropic(api_key=KEY, base_url=standin.url, max_retries=2) as client:
        request = asyncio.create_task(ask(client))
        async with asyncio.timeout(WAIT):
            await standin.until_hung(1)
            await standin.close()
            with pytest.raises(anthropic.InternalServerError, match="closed while the request"):
                await request

    assert standin.hung == 0


def thread(turns: int) -> list[dict[str, Any]]:
    """A long user/assistant exchange, every message as a list of content blocks."""
    return [
        {
            "role": "user" if n % 2 == 0 else "assistant",
            "content": [{"type": "text", "text": f"Message {n}: " + "lorem ipsum " * 40}],
        }
        for n in range(turns)
    ]


def with_breakpoint(messages: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    marked = [dict(m, content=[dict(b) for b in m["content"]]) for m in messages]
    marked[index]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return marked


SYSTEM = [{"type": "text", "text": "You work tasks. " * 50, "cache_control": {"type": "ephemeral"}}]


async def test_a_repeated_prefix_is_read_from_the_cache(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.responder = lambda body: Reply([Text("ok")])
    messages = thread(30)

    first = await ask(
        client, system=SYSTEM, tools=[WEATHER], messages=with_breakpoint(messages[:28], 27)
    )
    second = await ask(
        client, system=SYSTEM, tools=[WEATHER], messages=with_breakpoint(messages, 27)
    )

    assert first.usage.cache_read_input_tokens == 0
    assert (first.usage.cache_creation_input_tokens or 0) > 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert prefix_reuse(standin.requests[0], standin.requests[1]) >= 0.9


async def test_a_breakpoint_moved_to_the_newest_message_still_reads_the_earlier_prefix(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.responder = lambda body: Reply([Text("ok")])
    messages = thread(30)

    first = await ask(client, system=SYSTEM, messages=with_breakpoint(messages[:28], 27))
    second = await ask(client, system=SYSTEM, messages=with_breakpoint(messages, 29))

    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert (second.usage.cache_creation_input_tokens or 0) > 0
    assert second.usage.input_tokens == 0
    assert prefix_reuse(standin.requests[0], standin.requests[1]) >= 0.9


async def test_a_breakpoint_beyond_the_20_block_lookback_reads_only_the_system_prompt(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.responder = lambda body: Reply([Text("ok")])
    messages = thread(30)

    first = await ask(client, system=SYSTEM, messages=with_breakpoint(messages[:4], 3))
    second = await ask(client, system=SYSTEM, messages=with_breakpoint(messages, 29))

    system_only = cache_report({"system": SYSTEM}).prefix_chars // 4
    assert second.usage.cache_read_input_tokens == system_only
    assert system_only < (first.usage.cache_creation_input_tokens or 0)


async def test_a_changed_system_prompt_misses_the_cache(
    standin: AnthropicStandIn, client: AsyncAnthropic
) -> None:
    standin.responder = lambda body: Reply([Text("ok")])
    messages = with_breakpoint(thread(4), 3)
    changed = [dict(SYSTEM[0], text="You review tasks. " * 50)]

    await ask(client, system=SYSTEM, messages=messages)
    second = await ask(client, system=changed, messages=messages)

    assert second.usage.cache_read_input_tokens == 0
    assert prefix_reuse(standin.requests[0], standin.requests[1]) == 0.0


def test_cache_report_ends_the_prefix_at_the_last_breakpoint_in_prefix_order() -> None:
    tool = dict(WEATHER, cache_control={"type": "ephemeral"})
    on_tool = cache_report({"tools": [tool], "system": "s", "messages": thread(2)})
    automatic = cache_report(
        {"system": "s", "messages": thread(2), "cache_control": {"type": "ephemeral"}}
    )
    none = cache_report({"system": "s", "messages": thread(2)})

    assert 0 < on_tool.prefix_chars < on_tool.total_chars
    assert on_tool.breakpoints == (0,)
    assert automatic.prefix_chars == automatic.total_chars
    assert (none.prefix_chars, none.prefix_hash) == (0, "")


async def test_openai_standin_returns_tool_calls_and_records_the_bearer_key() -> None:
    standin = OpenAIStandIn()
    await standin.start()
    standin.script(Reply([ToolUse("get_weather", {"city": "Oslo"})]), Failure(429, retry_after=1))
    request = {
        "model": "qwen2.5:7b",
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    }
    headers = {"Authorization": "Bearer ollama-key"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{standin.url}/chat/completions", json=request, headers=headers
            ) as r:
                answer = await r.json()
            async with http.post(
                f"{standin.url}/chat/completions", json=request, headers=headers
            ) as r:
                limited = (r.status, r.headers["retry-after"], await r.json())
    finally:
        await standin.close()

    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == (
        "call_1",
        "function",
        "get_weather",
    )
    assert call["function"]["arguments"] == '{"city": "Oslo"}'
    assert (
        answer["usage"]["total_tokens"]
        == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    )
    assert limited[:2] == (429, "1")
    assert limited[2]["error"]["code"] == "rate_limit_exceeded"
    assert [r.api_key for r in standin.requests] == ["ollama-key", "ollama-key"]
    assert standin.requests[0].headers["authorization"] == "Bearer ollama-key"
