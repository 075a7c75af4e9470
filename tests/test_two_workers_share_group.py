"""Two workers in one consumer group share the partitions and lose nothing."""

from __future__ import annotations

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, distinct_verdict_ids, publish, running_worker, wait_for_verdicts

pytestmark = pytest.mark.integration


async def test_two_workers_in_one_group_share_work_and_lose_nothing(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(latency_ms=20)
    settings = make_settings(concurrency=8)
    ids = [f"s{i}" for i in range(600)]
    async with running_worker(settings) as first, running_worker(settings) as second:
        await publish(settings, ({"id": i, "text": f"shared {i}"} for i in ids))
        stored = await wait_for_verdicts(settings, ids, timeout_s=120)
        published = await distinct_verdict_ids(settings, expected=len(ids), timeout_s=30)
    assert set(stored) == set(ids)
    assert set(published) == set(ids)
    # Counted after both drained: each worker finished part of the records.
    assert first.fetch_loop is not None and second.fetch_loop is not None
    done = (first.fetch_loop.stats.done, second.fetch_loop.stats.done)
    assert all(count > 0 for count in done), f"work was not shared: {done}"
    assert sum(done) >= len(ids)
