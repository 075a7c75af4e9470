"""One verdict per id: a worker whose lease was lost publishes the verdict stored first, not its own."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, wait_until
from worker.store.keys import RedisKeys

pytestmark = pytest.mark.integration

OTHER = (
    '{"id":"contested","label":"unsafe","categories":["Violent"],"refusal":null,"model":"other-worker",'
    '"trace_id":"0af7651916cd43dd8448eb211c80319c","attempts":1,"latency_ms":5.0,'
    '"processed_at":"2026-11-23T12:00:00.000Z","metadata":{}}'
)


async def test_worker_that_lost_its_lease_publishes_the_verdict_stored_first(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(latency_ms=1500)
    settings = make_settings()
    client = aioredis.Redis.from_url(settings.redis_url)
    lease_key = RedisKeys(settings.redis_prefix).lease("contested")
    try:
        async with running_worker(settings):
            await publish(settings, [{"id": "contested", "text": "a harmless text"}])

            async def leased() -> bool:
                return bool(await client.exists(lease_key))

            await wait_until(leased, timeout_s=15, what="the worker to take the lease")
            # While its guard call runs, the lease is lost and another worker stores a verdict first.
            await client.delete(lease_key)
            await client.set(RedisKeys(settings.redis_prefix).verdict("contested"), OTHER)
            records = await collect(settings, settings.verdict_topic, count=1, timeout_s=20)
        stored = await client.get(RedisKeys(settings.redis_prefix).verdict("contested"))
    finally:
        await client.aclose()
    assert stored is not None and stored.decode() == OTHER
    assert json.loads(records[0].value)["model"] == "other-worker"
    assert await guard_sim.calls_for("a harmless text") == 1
