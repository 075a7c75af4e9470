"""Bounded memory: fetching pauses when too many records are buffered, and resumes below the limit."""

from __future__ import annotations

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, publish, running_worker, wait_for_verdicts

pytestmark = pytest.mark.integration


async def test_backlog_larger_than_buffer_pauses_fetching_and_still_completes(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(latency_ms=30)
    settings = make_settings(concurrency=4, max_buffered=20)
    ids = [f"b{i}" for i in range(300)]
    await publish(settings, ({"id": i, "text": f"backlog {i}"} for i in ids))
    async with running_worker(settings) as worker:
        await wait_for_verdicts(settings, ids, timeout_s=90)
        assert worker.fetch_loop is not None
        stats = worker.fetch_loop.stats
    assert stats.pauses >= 1
    assert stats.peak_buffered <= 20


async def test_the_record_cap_follows_the_concurrency_below_max_buffered(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    # Four records per guard call allowed in flight (here 100: a cap of 400), not GUARDQ_MAX_BUFFERED's
    # 1,000: records waiting for a slot are few, and so are the leases they hold.
    await guard_sim.configure(latency_ms=100)
    settings = make_settings(concurrency=100, max_buffered=1000)
    ids = [f"c{i}" for i in range(1200)]
    await publish(settings, ({"id": i, "text": f"capped {i}"} for i in ids))
    async with running_worker(settings) as worker:
        await wait_for_verdicts(settings, ids, timeout_s=90)
        assert worker.fetch_loop is not None
        stats = worker.fetch_loop.stats
    assert stats.pauses >= 1
    assert 256 < stats.peak_buffered <= 400
