"""GUARDQ_CONCURRENCY=auto against a simulated guard that serves 16 calls at once (50 ms each) and queues
the rest: the cap settles near 16 instead of piling calls into the guard's queue, the no-load latency is
measured, every message gets its verdict and none is dead-lettered; /metrics and /status show it."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, wait_for_verdicts

pytestmark = pytest.mark.integration


async def test_auto_concurrency_settles_near_the_guards_capacity_without_dead_letters(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(latency_ms=50, capacity=16)
    settings = make_settings(concurrency="auto", concurrency_min=4, concurrency_max=128)
    ids = [f"a{i}" for i in range(1500)]
    # A backlog first, so the cap is what limits the calls (a cap nobody reaches never grows).
    await publish(settings, ({"id": i, "text": f"adaptive {i}"} for i in ids))
    async with running_worker(settings) as worker:
        stored = await wait_for_verdicts(settings, ids, timeout_s=120)
        limit = worker.limiter.limit
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{worker.http_port}"
            async with session.get(base + "/metrics") as reply:
                metrics = await reply.text()
            async with session.get(base + "/status") as reply:
                status = json.loads(await reply.text())
    assert set(stored) == set(ids)
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    # Not piling calls into the guard's queue: at most twice its 16 slots, far from the 128 allowed.
    assert limit <= 32, f"the cap ended at {limit}"
    assert worker.adaptive is not None and worker.adaptive.noload_s is not None
    assert 0.04 <= worker.adaptive.noload_s <= 0.2, worker.adaptive.noload_s
    assert "guardq_guard_noload_latency_seconds " in metrics
    assert status["concurrency"]["mode"] == "auto" and status["concurrency"]["noload_latency_ms"] > 0
    assert max(verdict["attempts"] for verdict in stored.values()) == 1
