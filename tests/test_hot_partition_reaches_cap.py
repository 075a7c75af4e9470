"""Concurrency inside one partition: a single hot partition alone fills the guard concurrency cap."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, publish_raw, running_worker, wait_for_verdicts

pytestmark = pytest.mark.integration


async def test_one_hot_partition_reaches_eighty_percent_of_the_concurrency_cap(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(latency_ms=200)
    settings = make_settings(concurrency=16)
    ids = [f"h{i}" for i in range(160)]
    async with running_worker(settings) as worker:
        # One key: every message lands in the same partition.
        await publish_raw(
            settings, ((b"hot", json.dumps({"id": i, "text": f"hot {i}"}).encode()) for i in ids)
        )
        await wait_for_verdicts(settings, ids, timeout_s=60)
        peak = worker.limiter.peak
    stats = await guard_sim.stats()
    assert peak <= settings.concurrency
    assert peak >= 0.8 * settings.concurrency, f"worker peak {peak}"
    assert stats["max_in_flight"] >= 0.8 * settings.concurrency, stats["max_in_flight"]
