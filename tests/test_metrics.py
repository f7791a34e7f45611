"""The metrics adapter's parts: the reconcile job's timing and counts, a scrape while the
database is away, one registry per service, and the gauges' query plans."""

import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.board import Board
from bot.gauges import ServiceGauges
from bot.reconcile import FoundProgress
from bot.registry import AgentRegistry
from bot.root import Core
from bot.task import Actor, Task
from channels.metrics import PrometheusMetrics, metrics_routes
from channels.slack.client import api_method
from scheduler.jobs import reconcile_job
from store.database import create_engine
from store.gauges import BACKLOG, LEASES
from tests.conftest import FakeClock, SequentialKeys, reconciler_with

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def rendered(metrics: PrometheusMetrics) -> Samples:
    return samples_of(metrics.render(None, 0).decode())


class UncheckedProbe:
    """A thread probe rate limited for the whole tick: every stale task waits."""

    async def find_progress(self, tasks: Sequence[Task]) -> FoundProgress:
        return FoundProgress(unchecked=frozenset(t.id for t in tasks))


class Exploding:
    async def reconcile_stale_tasks(self) -> None:
        raise RuntimeError("database went away")


async def test_a_reconcile_tick_is_timed_by_the_injected_clock_and_deferrals_counted(
    core: Core, board: Board, registry: AgentRegistry, clock: FakeClock, keys: SequentialKeys
) -> None:
    await registry.add_agent("coder")
    task = await board.create_task("C1", "t", Actor.user("U1"))
    await board.assign_task(task.ref, "coder", "U1")
    clock.advance(601)
    metrics = PrometheusMetrics()
    monotonic = iter([100.0, 100.25]).__next__

    await reconcile_job(reconciler_with(core, UncheckedProbe(), clock, keys), metrics, monotonic)

    samples = rendered(metrics)
    assert samples[("threadwork_reconcile_duration_seconds_sum", ())] == 0.25
    assert samples[("threadwork_reconcile_duration_seconds_bucket", (("le", "0.25"),))] == 1
    assert samples[("threadwork_reconcile_duration_seconds_bucket", (("le", "0.1"),))] == 0
    actions = {
        dict(labels)["action"]: v
        for (name, labels), v in samples.items()
        if name == "threadwork_reconcile_actions_total"
    }
    assert actions == {"redispatched": 0, "blocked": 0, "deferred": 1}


async def test_a_failing_tick_counts_a_failure_and_no_duration() -> None:
    metrics = PrometheusMetrics()
    await reconcile_job(Exploding(), metrics)  # type: ignore[arg-type]  # duck-typed stand-in
    samples = rendered(metrics)
    assert samples[("threadwork_reconcile_failures_total", ())] == 1
    assert samples[("threadwork_reconcile_duration_seconds_count", ())] == 0


async def test_while_the_database_is_away_the_counters_are_served_and_its_gauges_left_out() -> None:
    metrics = PrometheusMetrics()
    metrics.event_received(duplicate=False)

    async def unavailable() -> ServiceGauges:
        raise ConnectionRefusedError("database is away")

    app = web.Application()
    app.add_routes(metrics_routes(metrics, unavailable, lambda: 3))
    async with (
        TestServer(app) as server,
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/metrics")) as response,
    ):
        assert response.status == 200
        samples = samples_of(await response.text())
    assert samples[("threadwork_events_received_total", ())] == 1
    assert samples[("threadwork_agent_runs_active", ())] == 3
    names = {name for name, _ in samples}
    assert not names & {
        "threadwork_outbox_pending",
        "threadwork_leases",
        "threadwork_workers_alive",
    }


def test_two_services_in_one_process_keep_their_counts_apart() -> None:
    one, other = PrometheusMetrics(), PrometheusMetrics()
    one.slack_rate_limited("chat.update")
    assert rendered(one)[("threadwork_slack_ratelimited_total", (("method", "chat.update"),))] == 1
    assert ("threadwork_slack_ratelimited_total", (("method", "chat.update"),)) not in rendered(
        other
    )


@pytest.mark.parametrize(
    ("url", "method"),
    [
        ("https://slack.com/api/chat.postMessage", "chat.postMessage"),
        ("http://127.0.0.1:8080/api/conversations.replies", "conversations.replies"),
    ],
)
def test_the_api_method_is_the_last_part_of_the_request_url(url: str, method: str) -> None:
    assert api_method(url) == method


@pytest.fixture
async def sqlite_engine(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[AsyncEngine]:
    path = tmp_path / "threadwork.db"
    shutil.copy(sqlite_template, path)
    engine = create_engine(f"sqlite:///{path}")
    yield engine
    await engine.dispose()


@pytest.mark.parametrize(
    ("query", "indexes"),
    [
        (BACKLOG, {"ix_outbox_open_task"}),
        # Either serves only open tasks; which one SQLite picks depends on its statistics.
        (LEASES, {"ix_tasks_leased_progress", "ix_tasks_status"}),
    ],
    ids=["backlog", "leases"],
)
async def test_the_gauge_counts_read_an_index_of_open_rows_never_the_whole_table_on_sqlite(
    sqlite_engine: AsyncEngine, query: Select[Any], indexes: set[str]
) -> None:
    async with sqlite_engine.connect() as connection:
        sql = str(query.compile(dialect=connection.dialect))
        plan = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all()
    [read] = [str(row[3]) for row in plan if str(row[3]).startswith(("SCAN", "SEARCH"))]
    assert any(f"USING INDEX {index}" in read for index in indexes), read
