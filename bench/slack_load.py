"""Load for the Slack benchmark: signed requests, closed- and open-loop senders, percentiles."""

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import aiohttp

from tests.slack.conftest import AGENT_USER, ALICE, signed

#: How long any one phase may take before the run is abandoned.
PHASE_TIMEOUT = 120.0
#: Slack gives up on an answer after this long, and retries the event.
SLACK_ACK_DEADLINE = 3.0

Request = tuple[str, dict[str, str]]
T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    """One request: HTTP status (0 when the connection failed), seconds to the answer, body."""

    status: int
    seconds: float
    reply: bytes = b""


@dataclass(frozen=True)
class LoadResult:
    """A batch of requests and the wall time they took, from first send to last answer."""

    samples: list[Sample]
    wall: float
    #: Open loop only: how late each send left, against its schedule.
    slips: list[float] = field(default_factory=list)
    #: CPU seconds the server process used meanwhile (all its threads).
    cpu: float = 0.0

    @classmethod
    def combine(cls, parts: list["LoadResult"]) -> "LoadResult":
        """Several runs against one server taken as one: samples, wall and CPU added up."""
        return cls(
            [s for p in parts for s in p.samples],
            sum(p.wall for p in parts),
            [s for p in parts for s in p.slips],
            sum(p.cpu for p in parts),
        )

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / len(self.samples)

    @property
    def too_slow_for_slack(self) -> int:
        """Answers that came after Slack's 3 s deadline (Slack would have retried them)."""
        return sum(1 for s in self.samples if s.seconds > SLACK_ACK_DEADLINE)

    @property
    def ok(self) -> int:
        return sum(1 for s in self.samples if s.status == 200)

    @property
    def all_ok(self) -> bool:
        return self.ok == len(self.samples)

    @property
    def rate(self) -> float:
        """Answered-200 requests per second of wall time."""
        return self.ok / self.wall

    @property
    def latencies(self) -> list[float]:
        return [s.seconds for s in self.samples if s.status == 200]


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile of ``values`` (inclusive method; nan when there are none)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


class EventSource:
    """Signed Events API callbacks: one author's replies in one thread, each id and ts new."""

    def __init__(self, channel: str, thread_ts: str, author: str = AGENT_USER) -> None:
        self._channel = channel
        self._thread_ts = thread_ts
        self._author = author
        self._numbers = itertools.count(1)
        self._last_ts = 0.0

    def next(self) -> Request:
        n = next(self._numbers)
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        event = {
            "type": "message",
            "channel": self._channel,
            "channel_type": "channel",
            "user": self._author,
            "text": f"progress note {n}",
            "ts": f"{self._last_ts:.6f}",
            "thread_ts": self._thread_ts,
        }
        body = json.dumps(
            {
                "token": "x",
                "team_id": "T1",
                "api_app_id": "A1",
                "type": "event_callback",
                "event_id": f"EvBENCH{n:08d}",
                "event_time": int(time.time()),
                "event": event,
                "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
            }
        )
        return body, {"Content-Type": "application/json"} | signed(body)


def slash_command(text: str, channel: str, user: str = ALICE) -> Request:
    """A signed ``/task`` invocation, as Slack posts it."""
    body = urlencode(
        {
            "token": "x",
            "team_id": "T1",
            "channel_id": channel,
            "user_id": user,
            "command": "/task",
            "text": text,
            "trigger_id": "trigger-1",
            "response_url": "https://hooks.invalid/response",
        }
    )
    return body, {"Content-Type": "application/x-www-form-urlencoded"} | signed(body)


async def post(http: aiohttp.ClientSession, url: str, request: Request) -> Sample:
    """Sends one request; the time runs from the send to the whole answer being read."""
    body, headers = request
    started = time.perf_counter()
    try:
        async with http.post(url, data=body, headers=headers) as response:
            reply = await response.read()
            return Sample(response.status, time.perf_counter() - started, reply)
    except (aiohttp.ClientError, TimeoutError):
        return Sample(0, time.perf_counter() - started)


async def closed_loop(
    http: aiohttp.ClientSession, url: str, source: EventSource, count: int, concurrency: int
) -> LoadResult:
    """Sends ``count`` events, ``concurrency`` at a time, each worker sending as it is answered."""
    numbers = iter(range(count))
    samples: list[Sample] = []

    async def worker() -> None:
        for _ in numbers:  # shared by the workers: each number is taken once
            samples.append(await post(http, url, source.next()))

    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT), asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return LoadResult(samples, time.perf_counter() - started)


async def sustained(url: str, source: EventSource, seconds: float, connections: int) -> LoadResult:
    """Events closed-loop for ``seconds`` over exactly ``connections`` keep-alive connections:
    one sender per connection, each posting again as soon as it is answered."""
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=PHASE_TIMEOUT / 2)
    samples: list[Sample] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def sender() -> None:
            while time.perf_counter() < deadline:
                samples.append(await post(http, url, source.next()))

        async with asyncio.timeout(PHASE_TIMEOUT), asyncio.TaskGroup() as group:
            for _ in range(connections):
                group.create_task(sender())
        return LoadResult(samples, time.perf_counter() - started)


@dataclass(frozen=True)
class Paced(Generic[T]):
    """What an open-loop run's sends returned, how late each left, and the wall time."""

    results: list[T]
    slips: list[float]
    wall: float


async def open_loop(
    count: int, rate: float, send: Callable[[int], Coroutine[Any, Any, T]]
) -> Paced[T]:
    """Starts ``send(i)`` every 1/``rate`` s without waiting for answers (no coordinated
    omission: a slow answer never delays the next send)."""
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Task[T]] = []
    slips = []
    start = loop.time() + 0.01
    async with asyncio.timeout(PHASE_TIMEOUT):
        for i in range(count):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            slips.append(loop.time() - due)
            pending.append(asyncio.create_task(send(i)))
        results = await asyncio.gather(*pending)
    return Paced(list(results), slips, loop.time() - start)


async def steady_events(
    http: aiohttp.ClientSession, url: str, source: EventSource, rate: float, seconds: float
) -> LoadResult:
    """Events open-loop at ``rate`` per second for ``seconds``."""
    paced = await open_loop(round(rate * seconds), rate, lambda _: post(http, url, source.next()))
    return LoadResult(paced.results, paced.wall, paced.slips)
