"""``GET /metrics`` on the running service, scraped over HTTP and parsed as Prometheus does.

The database's gauges are read at scrape time (on SQLite and PostgreSQL); the counters move as
the service works: deliveries, Slack's 429s, events received twice, reconcile ticks, tokens.
"""

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from slack_sdk.errors import SlackApiError

from bot.agents import AgentKind, AgentSettings
from bot.outbox import OutboxKind
from bot.task import TaskRef
from scheduler.jobs import RECONCILE_JOB_ID
from tests.agents.standins import AnthropicStandIn, Hang, Reply, Text, ToolUse
from tests.conftest import FakeClock
from tests.slack.conftest import ADMIN, AGENT_USER, Harness, start_service
from tests.slack.standin import SlackStandIn

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
KINDS = tuple(kind.value for kind in OutboxKind)


async def scrape(service: Harness) -> Samples:
    """Every sample ``/metrics`` serves, by name and labels."""
    async with service.http.get(service.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample that must be there."""
    return samples[(name, tuple(sorted(labels.items())))]


def counted(samples: Samples, name: str, **labels: str) -> float:
    """A counter's value; a labelled counter never incremented has no sample yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
async def metered(
    database_url: str, standin: SlackStandIn, clock: FakeClock
) -> AsyncIterator[Harness]:
    """The service on each backend, with the agent ``coder``."""
    async for harness in start_service(database_url, standin, clock):
        await harness.core.registry.add_agent(
            "coder", display_name="Coder", slack_user_id=AGENT_USER
        )
        yield harness


async def test_the_backlog_shows_by_kind_with_its_oldest_age_and_drains_on_delivery(
    metered: Harness,
) -> None:
    samples = await scrape(metered)
    assert by_label(samples, "threadwork_outbox_pending", "kind") == dict.fromkeys(KINDS, 0)
    assert value(samples, "threadwork_outbox_dead") == 0

    await metered.command("new Count me")
    metered.clock.advance(30)
    await metered.command("assign 1 coder")
    samples = await scrape(metered)
    pending = by_label(samples, "threadwork_outbox_pending", "kind")
    assert pending == dict.fromkeys(KINDS, 0) | {"card_post": 1, "directive": 1, "card_update": 1}
    oldest = by_label(samples, "threadwork_outbox_oldest_age_seconds", "kind")
    assert (oldest["card_post"], oldest["directive"], oldest["escalation"]) == (30, 0, 0)

    assert by_label(samples, "threadwork_outbox_delivered_total", "kind") == {}

    await metered.deliver()
    samples = await scrape(metered)
    delivered = by_label(samples, "threadwork_outbox_delivered_total", "kind")
    assert delivered == {"card_post": 1, "directive": 1, "card_update": 1}
    assert by_label(samples, "threadwork_outbox_pending", "kind") == dict.fromkeys(KINDS, 0)
    assert by_label(samples, "threadwork_outbox_oldest_age_seconds", "kind") == dict.fromkeys(
        KINDS, 0
    )


async def test_leases_are_live_then_stale_by_their_channels_ttl_or_awaiting_input(
    metered: Harness,
) -> None:
    await metered.command("policy ttl 1200", command="/task-admin", user=ADMIN)
    for channel in ("C1", "C2"):
        await metered.command("new Lease me", user=ADMIN, channel=channel)
        await metered.command("assign 1 coder", user=ADMIN, channel=channel)
    await metered.deliver()
    leases = by_label(await scrape(metered), "threadwork_leases", "state")
    assert leases == {"live": 2, "stale": 0, "awaiting_input": 0}

    metered.clock.advance(600)
    leases = by_label(await scrape(metered), "threadwork_leases", "state")
    assert leases == {"live": 2, "stale": 0, "awaiting_input": 0}  # exactly the TTL: not yet
    metered.clock.advance(1)
    leases = by_label(await scrape(metered), "threadwork_leases", "state")
    assert leases == {"live": 1, "stale": 1, "awaiting_input": 0}  # C2's 600 s, not C1's 1200 s

    held = await metered.task(1, channel="C2")
    await metered.core.work.await_input(
        TaskRef("C2", 1), "coder", held.lease_epoch, "Which branch?"
    )
    metered.clock.advance(601)
    leases = by_label(await scrape(metered), "threadwork_leases", "state")
    assert leases == {"live": 0, "stale": 1, "awaiting_input": 1}


async def test_workers_alive_counts_heartbeats_within_the_worker_timeout(
    metered: Harness,
) -> None:
    assert value(await scrape(metered), "threadwork_workers_alive") == 1
    metered.clock.advance(metered.core.settings.worker_timeout)
    assert value(await scrape(metered), "threadwork_workers_alive") == 1
    metered.clock.advance(0.001)
    assert value(await scrape(metered), "threadwork_workers_alive") == 0
    await metered.service.liveness.beat()
    assert value(await scrape(metered), "threadwork_workers_alive") == 1


async def test_a_429_from_slack_is_counted_by_method_and_the_sdk_does_not_retry_it(
    service: Harness,
) -> None:
    service.standin.fail("chat.postMessage", 429, retry_after=3)
    await service.command("new Rate limited")
    await service.deliver()
    samples = await scrape(service)
    assert counted(samples, "threadwork_slack_ratelimited_total", method="chat.postMessage") == 1
    assert len(service.standin.calls_to("chat.postMessage")) == 1
    assert value(samples, "threadwork_outbox_pending", kind="card_post") == 1


async def test_the_client_counts_every_429_by_method_and_raises_it_unretried(
    service: Harness,
) -> None:
    service.standin.fail("conversations.replies", 429, retry_after=1, times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError, match="ratelimited"):
            await service.slack.client.conversations_replies(channel="C1", ts="1.0")
    await service.slack.client.auth_test()
    assert len(service.standin.calls_to("conversations.replies")) == 2
    samples = await scrape(service)
    ratelimited = by_label(samples, "threadwork_slack_ratelimited_total", "method")
    assert ratelimited == {"conversations.replies": 2}


async def test_an_event_sent_twice_is_received_twice_and_counted_once_as_a_duplicate(
    service: Harness,
) -> None:
    joined = {"type": "member_joined_channel", "user": "UNEW0001", "channel": "C1"}
    assert await service.event(joined, event_id="EvTWICE") == 200
    assert await service.event(joined, event_id="EvTWICE", retry=1) == 200
    samples = await scrape(service)
    assert value(samples, "threadwork_events_received_total") == 2
    assert value(samples, "threadwork_events_duplicate_total") == 1


async def test_reconcile_ticks_are_timed_and_their_actions_counted(service: Harness) -> None:
    await service.command("new Go quiet")
    await service.command("assign 1 coder")
    await service.deliver()
    job = service.service.scheduler.get_job(RECONCILE_JOB_ID)

    service.clock.advance(601)
    await job.func(*job.args, **job.kwargs)
    samples = await scrape(service)
    assert value(samples, "threadwork_reconcile_duration_seconds_count") == 1
    assert value(samples, "threadwork_reconcile_duration_seconds_bucket", le="+Inf") == 1
    actions = by_label(samples, "threadwork_reconcile_actions_total", "action")
    assert actions == {"redispatched": 1, "blocked": 0, "deferred": 0}

    await service.deliver()
    service.clock.advance(601)
    await job.func(*job.args, **job.kwargs)
    samples = await scrape(service)
    assert value(samples, "threadwork_reconcile_duration_seconds_count") == 2
    actions = by_label(samples, "threadwork_reconcile_actions_total", "action")
    assert actions == {"redispatched": 1, "blocked": 1, "deferred": 0}
    assert value(samples, "threadwork_reconcile_failures_total") == 0


@pytest.fixture
async def with_claude(
    sqlite_url: str, standin: SlackStandIn, clock: FakeClock, anthropic: AnthropicStandIn
) -> AsyncIterator[Harness]:
    """The service with the built-in agent ``claude-1`` on the Anthropic stand-in, assigned
    task C1#1."""
    async for harness in start_service(
        sqlite_url, standin, clock, anthropic_base_url=anthropic.url
    ):
        await harness.core.registry.add_agent(
            "claude-1", AgentKind.CLAUDE, settings=AgentSettings(model="claude-standin-1")
        )
        await harness.core.registry.set_api_key("claude-1", "sk-ant-metrics-test")
        await harness.command("new Spend some tokens")
        await harness.command("assign 1 claude-1")
        await harness.deliver()
        yield harness


async def test_a_built_in_run_shows_as_active_while_the_model_answers(
    with_claude: Harness, anthropic: AnthropicStandIn
) -> None:
    anthropic.script(Hang())
    assert value(await scrape(with_claude), "threadwork_agent_runs_active") == 0
    assert await with_claude.service.runner.run_once() == 1
    async with asyncio.timeout(10):
        await anthropic.until_hung(1)
    assert value(await scrape(with_claude), "threadwork_agent_runs_active") == 1


async def test_a_built_in_runs_model_tokens_are_counted_by_kind_as_the_task_records_them(
    with_claude: Harness, anthropic: AnthropicStandIn
) -> None:
    anthropic.script(
        Reply(
            [Text("Looking."), ToolUse("post_update", {"task": "C1#1", "text": "On it."})],
            usage={"input_tokens": 11},
        ),
        Reply(
            [ToolUse("update_task_status", {"task": "C1#1", "status": "in_review"})],
            usage={"input_tokens": 13, "cache_read_input_tokens": 7},
        ),
    )
    runner = with_claude.service.runner
    assert await runner.run_once() == 1
    async with asyncio.timeout(10):
        for handle in list(runner.active.values()):
            await handle.task
    async with with_claude.core.store.read() as reader:
        usage = await reader.get_usage((await with_claude.task(1)).id)
    assert usage is not None
    tokens = by_label(await scrape(with_claude), "threadwork_model_tokens_total", "kind")
    assert tokens == {
        "input": usage.usage.input_tokens,
        "output": usage.usage.output_tokens,
        "cache_read": usage.usage.cache_read_tokens,
        "cache_creation": usage.usage.cache_creation_tokens,
    }
    assert (tokens["input"], tokens["cache_read"]) == (24, 7)
    assert tokens["output"] > 0
