"""Bounded memory: fetching pauses when too many records are buffered, and resumes below the limit."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, publish, running_worker, wait_for_verdicts
from worker.kafka.inflight import FetchStats

pytestmark = pytest.mark.integration


async def drain_backlog(
    make_settings: SettingsFactory, guard_sim: GuardSim, *, latency_ms: int, count: int, **overrides: Any
) -> FetchStats:
    """Publish ``count`` messages, run a worker until each has its verdict, and return its fetch counters."""
    await guard_sim.configure(latency_ms=latency_ms)
    settings = make_settings(**overrides)
    ids = [f"b{i}" for i in range(count)]
    await publish(settings, ({"id": i, "text": f"backlog {i}"} for i in ids))
    async with running_worker(settings) as worker:
        await wait_for_verdicts(settings, ids, timeout_s=90)
        assert worker.fetch_loop is not None
        return worker.fetch_loop.stats


async def test_backlog_larger_than_buffer_pauses_fetching_and_still_completes(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    stats = await drain_backlog(
        make_settings, guard_sim, latency_ms=30, count=300, concurrency=4, max_buffered=20
    )
    assert stats.pauses >= 1
    assert stats.peak_buffered <= 20


async def test_the_record_cap_follows_the_concurrency_below_max_buffered(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    # Four records per guard call allowed in flight (here 100: a cap of 400), not GUARDQ_MAX_BUFFERED's
    # 1,000: records waiting for a slot are few, and so are the leases they hold.
    stats = await drain_backlog(
        make_settings, guard_sim, latency_ms=100, count=1200, concurrency=100, max_buffered=1000
    )
    assert stats.pauses >= 1
    assert 256 < stats.peak_buffered <= 400


async def test_records_waiting_out_a_retry_backoff_do_not_take_the_buffer_from_the_guard(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    # Concurrency 4: a record cap of 256. A third of the calls get a 503 and wait 0.2-0.7 s for their
    # retry without a slot; counted against the cap, they filled it and left the guard idle.
    await guard_sim.configure(fail_503_rate=0.3)
    stats = await drain_backlog(
        make_settings,
        guard_sim,
        latency_ms=0,
        count=1000,
        concurrency=4,
        max_buffered=1000,
        guard_attempts=6,  # a retry topic's hop is not what this is about (and a rare one is short)
        retry_schedule="1s",
        guard_backoff="200ms,500ms",  # each wait 0.2-1 s: no long tail of doubled waits
        breaker_failures=50,  # nor the breaker: 30 % of 503s is a guard that answers
    )
    assert 300 < stats.peak_buffered <= 1000
