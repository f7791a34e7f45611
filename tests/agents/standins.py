"""Local stand-ins for the model APIs agents call, served by aiohttp on 127.0.0.1 (port 0).

``AnthropicStandIn`` speaks the Messages API (``POST /v1/messages``) closely enough for the real
``anthropic.AsyncAnthropic`` client: plain replies, streamed replies with the API's event
sequence, Anthropic's JSON errors with ``retry-after``, and usage with prompt-cache accounting.
``OpenAIStandIn`` speaks the OpenAI-compatible ``POST /v1/chat/completions`` with tool calls, as
Ollama and vLLM serve it (non-streaming only).

Both answer from a FIFO script of turns, then from ``responder``; with neither, a request gets a
500 saying "stand-in has no scripted reply" (with ``x-should-retry: false``, so the SDK does not
retry it). Both record every request. A ``Hang`` stalls until the client gives up (aiohttp
cancels the handler when the connection drops) or ``close()`` releases it.

Prompt-cache accounting (Anthropic), as ``cache_report`` and the usage of each reply compute it:

* The request is read as blocks in the API's prefix order: each tool definition, then the system
  prompt's text blocks (a string is one block), then each message's content blocks (a string is
  one text block). A block is written as ``<place>:<json>\\n``, where place is ``tool``,
  ``system`` or the message role, and the JSON is canonical (sorted keys, compact) with every
  ``cache_control`` removed, so moving a breakpoint does not change the text.
* ``total_chars`` is the length of all blocks; ``prefix_chars`` the length up to and including the
  last block carrying ``cache_control`` (a top-level ``cache_control`` marks the last block);
  ``prefix_hash`` is the sha256 of that prefix ("" and 0 when there is no breakpoint).
* Per model, the stand-in remembers each prefix that earlier replies (and hung streams, which sent
  ``message_start``; never failures) wrote at a breakpoint. A request reads the longest remembered
  prefix that it repeats exactly and that ends at one of its breakpoints or within the 20 blocks
  before one (the API's lookback). Tokens are chars // 4: ``cache_read_input_tokens`` is the read
  prefix, ``cache_creation_input_tokens`` the rest of the prefix up to the last breakpoint,
  ``input_tokens`` everything after it. Breakpoints shorter than ``min_cache_tokens`` are ignored
  (the API's minimum is 1024 to 4096 tokens by model; the default here is 0).
* Not modelled: cache lifetimes (all writes count as ``ephemeral_5m``), invalidation by changes to
  ``tool_choice``, images or thinking, and the limit of four breakpoints.

``prefix_reuse(prev, cur)`` is the share of ``cur``'s input that lies in ``prev``'s cached prefix:
``prev.cache.prefix_chars / cur.cache.total_chars`` when both ask the same model and ``cur``'s own
cached prefix begins with ``prev``'s prefix exactly (to a block boundary), else 0.0.
"""

import asyncio
import hashlib
import inspect
import itertools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: How many blocks before a breakpoint the API looks back for an earlier cached prefix.
LOOKBACK_BLOCKS = 20
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
OPENAI_FINISH_REASONS = {"tool_use": "tool_calls", "end_turn": "stop", "max_tokens": "length"}


@dataclass
class Text:
    text: str


@dataclass
class ToolUse:
    name: str
    input: dict[str, Any]
    #: Left None, each answer gives it a fresh "toolu_<n>".
    id: str | None = None


@dataclass
class Reply:
    """One model turn."""

    content: list[Text | ToolUse]
    #: None means "tool_use" when the reply calls a tool, else "end_turn".
    stop_reason: str | None = None
    #: Merged over the computed usage, so a script can pin any field.
    usage: dict[str, int] | None = None


@dataclass
class Failure:
    """An error answer: 429 rate_limit_error, 529 overloaded_error, 500 api_error, ..."""

    status: int
    #: Seconds, sent as the ``retry-after`` header.
    retry_after: float | None = None
    message: str | None = None
    #: Sent as ``x-should-retry``, which the SDK obeys before its status-code policy.
    should_retry: bool | None = None


@dataclass
class Hang:
    """Stalls: a stream after ``message_start`` and a ``ping``, a plain request before any byte."""


Turn = Reply | Failure | Hang
Responder = Callable[[dict[str, Any]], Turn | Awaitable[Turn]]


@dataclass(frozen=True)
class CacheReport:
    """Where a request's cacheable prefix ends; see the module docstring for the exact rules."""

    prefix_chars: int
    total_chars: int
    prefix_hash: str
    #: (chars so far, sha256 so far) after each block, in prefix order.
    boundaries: tuple[tuple[int, str], ...] = field(default=(), repr=False)
    #: Indexes into ``boundaries`` of the blocks that carry a breakpoint.
    breakpoints: tuple[int, ...] = ()


@dataclass
class Recorded:
    body: dict[str, Any]
    #: Header names lower-cased.
    headers: dict[str, str]
    #: time.monotonic() on arrival.
    at: float
    #: The key as received, from ``x-api-key`` or ``Authorization: Bearer``.
    api_key: str | None = None
    cache: CacheReport = field(default_factory=lambda: CacheReport(0, 0, ""))
    #: The usage answered; None for failures and hung plain requests.
    usage: dict[str, Any] | None = None


def cache_report(body: Mapping[str, Any]) -> CacheReport:
    """Measures the request's cacheable prefix, up to its last ``cache_control`` breakpoint."""
    digest = hashlib.sha256()
    chars = 0
    boundaries: list[tuple[int, str]] = []
    breakpoints: list[int] = []
    for index, (place, block) in enumerate(_blocks(body)):
        segment = f"{place}:{_canonical(_without_cache_control(block))}\n"
        digest.update(segment.encode())
        chars += len(segment)
        boundaries.append((chars, digest.hexdigest()))
        if block.get("cache_control"):
            breakpoints.append(index)
    if body.get("cache_control") and boundaries:
        breakpoints.append(len(boundaries) - 1)
    marks = tuple(sorted(set(breakpoints)))
    prefix_chars, prefix_hash = boundaries[marks[-1]] if marks else (0, "")
    return CacheReport(prefix_chars, chars, prefix_hash, tuple(boundaries), marks)


def prefix_reuse(prev: Recorded, cur: Recorded) -> float:
    """The share of ``cur``'s input chars lying in a prefix identical to ``prev``'s cached one."""
    if not prev.cache.prefix_hash or prev.body.get("model") != cur.body.get("model"):
        return 0.0
    repeated = (prev.cache.prefix_chars, prev.cache.prefix_hash) in cur.cache.boundaries
    if not repeated or prev.cache.prefix_chars > cur.cache.prefix_chars:
        return 0.0
    return prev.cache.prefix_chars / cur.cache.total_chars


def _blocks(body: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for tool in body.get("tools") or []:
        yield "tool", tool
    system = body.get("system") or []
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else system:
        yield "system", block
    for message in body.get("messages") or []:
        content = message["content"]
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            yield message["role"], block


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _api_key(headers: Mapping[str, str]) -> str | None:
    if "x-api-key" in headers:
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def _output_tokens(reply: Reply) -> int:
    chars = sum(
        len(part.text) if isinstance(part, Text) else len(_canonical(part.input))
        for part in reply.content
    )
    return max(1, chars // 4)


def _stop_reason(reply: Reply) -> str:
    if reply.stop_reason is not None:
        return reply.stop_reason
    return "tool_use" if any(isinstance(p, ToolUse) for p in reply.content) else "end_turn"


def _chunks(text: str, pieces: int = 3) -> list[str]:
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


class _ScriptedServer:
    """The shared part: an aiohttp server, the script, the record, and hanging."""

    route: str = ""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder
        self.requests: list[Recorded] = []
        self.hung = 0
        self.url = ""
        self._turns: deque[Turn] = deque()
        self._ids = itertools.count(1)
        self._tool_ids = itertools.count(1)
        self._released = asyncio.Event()
        self._hung_changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def script(self, *turns: Turn) -> None:
        """Queues turns, answered first in, first out, before ``responder`` is asked."""
        self._turns.extend(turns)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post(self.route, self._handle)
        # Cancelling a handler when its client hangs up is what ends a Hang on disconnect.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started above
        self.url = self._base_url(f"http://127.0.0.1:{port}")
        return self.url

    async def close(self) -> None:
        """Releases stalled handlers, then stops the server."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def until_hung(self, count: int) -> None:
        """Returns once exactly ``count`` Hang answers are stalled; bound it with a timeout."""
        while self.hung != count:
            await self._hung_changed.wait()

    def _base_url(self, origin: str) -> str:
        return origin

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = Recorded(body, headers, time.monotonic(), _api_key(headers), cache_report(body))
        self.requests.append(record)
        turn = await self._next_turn(body)
        if isinstance(turn, Failure):
            return self._failure(turn)
        if isinstance(turn, Hang):
            return await self._hang(request, record)
        return await self._reply(request, record, turn)

    async def _next_turn(self, body: dict[str, Any]) -> Turn:
        if self._turns:
            return self._turns.popleft()
        if self.responder is None:
            number = len(self.requests)
            message = f"stand-in has no scripted reply for request #{number}"
            return Failure(500, message=message, should_retry=False)
        turn = self.responder(body)
        return await turn if inspect.isawaitable(turn) else turn

    async def _stall(self) -> None:
        self._count_hung(+1)
        try:
            await self._released.wait()
        finally:
            self._count_hung(-1)

    def _count_hung(self, step: int) -> None:
        self.hung += step
        self._hung_changed.set()
        self._hung_changed = asyncio.Event()

    async def _hang(self, request: web.Request, record: Recorded) -> web.StreamResponse:
        await self._stall()
        closed = Failure(500, message="stand-in closed while the request hung", should_retry=False)
        return self._failure(closed)

    def _failure(self, failure: Failure) -> web.Response:
        headers = {"request-id": f"req_standin_{next(self._ids)}"}
        if failure.retry_after is not None:
            headers["retry-after"] = f"{failure.retry_after:g}"
        if failure.should_retry is not None:
            headers["x-should-retry"] = str(failure.should_retry).lower()
        body = self._error_body(failure, failure.message or f"stand-in failure {failure.status}")
        return web.json_response(body, status=failure.status, headers=headers)

    def _error_body(self, failure: Failure, message: str) -> dict[str, Any]:
        raise NotImplementedError

    async def _reply(
        self, request: web.Request, record: Recorded, reply: Reply
    ) -> web.StreamResponse:
        raise NotImplementedError


class AnthropicStandIn(_ScriptedServer):
    """The Messages API. Give ``url`` to ``AsyncAnthropic(base_url=...)``."""

    route = "/v1/messages"

    def __init__(self, responder: Responder | None = None, *, min_cache_tokens: int = 0) -> None:
        super().__init__(responder)
        self.min_cache_tokens = min_cache_tokens
        self._cached: set[tuple[str, str]] = set()

    def _error_body(self, failure: Failure, message: str) -> dict[str, Any]:
        kind = ANTHROPIC_ERROR_TYPES.get(failure.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    async def _reply(
        self, request: web.Request, record: Recorded, reply: Reply
    ) -> web.StreamResponse:
        message = self._message(record, reply)
        record.usage = message["usage"]
        if not record.body.get("stream"):
            return web.json_response(message, headers={"request-id": f"req_{message['id']}"})
        response = await self._open_stream(request, message)
        for event, data in _block_and_end_events(message):
            await _send(response, event, data)
        await response.write_eof()
        return response

    async def _hang(self, request: web.Request, record: Recorded) -> web.StreamResponse:
        if not record.body.get("stream"):
            return await super()._hang(request, record)
        message = self._message(record, Reply([]))
        record.usage = message["usage"]
        response = await self._open_stream(request, message)
        await self._stall()
        await response.write_eof()
        return response

    async def _open_stream(
        self, request: web.Request, message: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "request-id": f"req_{message['id']}",
            }
        )
        await response.prepare(request)
        started = {**message, "content": [], "stop_reason": None}
        started["usage"] = {**message["usage"], "output_tokens": 1}
        await _send(response, "message_start", {"type": "message_start", "message": started})
        await _send(response, "ping", {"type": "ping"})
        return response

    def _message(self, record: Recorded, reply: Reply) -> dict[str, Any]:
        content = [self._block(part) for part in reply.content]
        usage = self._usage(record) | {"output_tokens": _output_tokens(reply)}
        return {
            "id": f"msg_standin_{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": record.body.get("model"),
            "content": content,
            "stop_reason": _stop_reason(reply),
            "stop_sequence": None,
            "usage": usage | (reply.usage or {}),
        }

    def _block(self, part: Text | ToolUse) -> dict[str, Any]:
        if isinstance(part, Text):
            return {"type": "text", "text": part.text}
        tool_id = part.id or f"toolu_{next(self._tool_ids)}"
        return {"type": "tool_use", "id": tool_id, "name": part.name, "input": part.input}

    def _usage(self, record: Recorded) -> dict[str, Any]:
        """Input and cache usage for the request, remembering the prefixes it writes."""
        model, report = str(record.body.get("model")), record.cache
        marks = [
            i for i in report.breakpoints if report.boundaries[i][0] // 4 >= self.min_cache_tokens
        ]
        read = max(
            (
                chars
                for mark in marks
                for chars, digest in report.boundaries[max(0, mark - LOOKBACK_BLOCKS) : mark + 1]
                if (model, digest) in self._cached
            ),
            default=0,
        )
        self._cached.update((model, report.boundaries[mark][1]) for mark in marks)
        prefix = report.boundaries[marks[-1]][0] if marks else 0
        created = (prefix - read) // 4
        return {
            "input_tokens": (report.total_chars - prefix) // 4,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read // 4,
            "cache_creation": {
                "ephemeral_5m_input_tokens": created,
                "ephemeral_1h_input_tokens": 0,
            },
            "service_tier": "standard",
        }


def _block_and_end_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events after ``message_start``: each block's start, deltas and stop, then the end."""
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"])]
        else:
            opening = block | {"input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": c} for c in _chunks(raw)]
        start = {"type": "content_block_start", "index": index, "content_block": opening}
        yield "content_block_start", start
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    usage = {k: v for k, v in message["usage"].items() if k.endswith("tokens")}
    ending = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": ending, "usage": usage}
    yield "message_stop", {"type": "message_stop"}


async def _send(response: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


class OpenAIStandIn(_ScriptedServer):
    """An OpenAI-compatible chat-completions endpoint; ``url`` ends in ``/v1``."""

    route = "/v1/chat/completions"

    def _base_url(self, origin: str) -> str:
        return f"{origin}/v1"

    def _error_body(self, failure: Failure, message: str) -> dict[str, Any]:
        kind = "server_error" if failure.status >= 500 else "invalid_request_error"
        code: str | None = None
        if failure.status == 429:
            kind, code = "requests", "rate_limit_exceeded"
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    async def _reply(self, request: web.Request, record: Recorded, reply: Reply) -> web.Response:
        if record.body.get("stream"):
            refusal = Failure(400, message="the OpenAI stand-in serves non-streaming requests only")
            return self._failure(refusal)
        texts = [part.text for part in reply.content if isinstance(part, Text)]
        calls = [
            {
                "id": part.id or f"call_{next(self._tool_ids)}",
                "type": "function",
                "function": {"name": part.name, "arguments": json.dumps(part.input)},
            }
            for part in reply.content
            if isinstance(part, ToolUse)
        ]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            message["tool_calls"] = calls
        record.usage = self._usage(record, reply)
        stop = _stop_reason(reply)
        return web.json_response(
            {
                "id": f"chatcmpl-standin-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": record.body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": OPENAI_FINISH_REASONS.get(stop, stop),
                        "logprobs": None,
                    }
                ],
                "usage": record.usage,
            }
        )

    def _usage(self, record: Recorded, reply: Reply) -> dict[str, int]:
        prompt = _canonical([record.body.get("messages"), record.body.get("tools")])
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": _output_tokens(reply)}
        usage |= reply.usage or {}
        return usage | {"total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
