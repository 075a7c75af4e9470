"""Idempotency: the same id delivered many times costs one guard call, in flight or later."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    collect,
    publish,
    running_worker,
    stored_verdicts,
    wait_for_verdicts,
    wait_until,
)
from worker.store.keys import RedisKeys

pytestmark = pytest.mark.integration


async def test_duplicate_ids_in_flight_together_cost_one_guard_call(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(latency_ms=300)  # the copies arrive while the first call is still running
    settings = make_settings(concurrency=16)
    ids = [f"dup-{i}" for i in range(20)]
    # Five copies of each id, spread over partitions by a per-copy key so several workers tasks race.
    documents = [{"id": i, "text": f"duplicate text {i}"} for _ in range(5) for i in ids]
    async with running_worker(settings):
        await publish(settings, documents)

        async def all_verdicts_published() -> bool:
            return len(await collect(settings, settings.verdict_topic, count=100, timeout_s=0.5)) >= 100

        await wait_until(all_verdicts_published, timeout_s=60, what="a verdict record for every delivery")
    for i in ids:
        assert await guard_sim.calls_for(f"duplicate text {i}") == 1, i
    assert len(await stored_verdicts(settings, ids)) == 20


async def test_redelivered_message_republishes_stored_verdict_without_guard_call(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        await publish(settings, [{"id": "again", "text": "first delivery"}])
        await wait_for_verdicts(settings, ["again"], timeout_s=30)
    stored = (await stored_verdicts(settings, ["again"]))["again"]
    # The same message again (a producer retry, or a replay): no second guard call.
    async with running_worker(settings):
        await publish(settings, [{"id": "again", "text": "first delivery"}])
        verdicts = await collect(settings, settings.verdict_topic, count=2, timeout_s=30)
    assert len(verdicts) == 2
    assert json.loads(verdicts[1].value) == stored
    assert await guard_sim.calls_for("first delivery") == 1
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        ttl = await client.ttl(RedisKeys(settings.redis_prefix).verdict("again"))
    finally:
        await client.aclose()
    assert 0 < ttl <= settings.verdict_ttl_s
