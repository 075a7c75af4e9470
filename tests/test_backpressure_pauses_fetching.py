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
