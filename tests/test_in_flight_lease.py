"""The in-flight lease: a delivery that finds another holder's lease waits, then takes over or finds the verdict."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, wait_for_verdicts, wait_until
from worker.store.keys import RedisKeys

pytestmark = pytest.mark.integration


async def test_expired_lease_of_a_dead_holder_is_taken_over(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        async with running_worker(settings):
            # A holder that died 2 s before its lease expires.
            await client.set(RedisKeys(settings.redis_prefix).lease("orphan"), "dead-worker", px=2000)
            started = time.monotonic()
            await publish(
                settings, [{"id": "orphan", "text": "orphaned text"}, {"id": "other", "text": "other"}]
            )
            stored = await wait_for_verdicts(settings, ["other"], timeout_s=30)
            other_done = time.monotonic() - started
            stored |= await wait_for_verdicts(settings, ["orphan"], timeout_s=30)
            orphan_done = time.monotonic() - started
    finally:
        await client.aclose()
    assert other_done < orphan_done, "the waiting message must not block the others"
    assert orphan_done >= 1.5
    assert await guard_sim.calls_for("orphaned text") == 1
    assert stored["orphan"]["attempts"] == 1


async def test_verdict_stored_by_the_lease_holder_is_republished_without_a_guard_call(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    client = aioredis.Redis.from_url(settings.redis_url)
    verdict = (
        '{"id":"held","label":"safe","action":"allow","categories":[],"refusal":null,"model":"other-worker",'
        '"trace_id":"0af7651916cd43dd8448eb211c80319c","attempts":1,"latency_ms":5.0,'
        '"processed_at":"2026-11-23T12:00:00.000Z","metadata":{}}'
    )
    try:
        await client.set(RedisKeys(settings.redis_prefix).lease("held"), "live-worker", px=20000)
        async with running_worker(settings) as worker:
            await publish(settings, [{"id": "held", "text": "held text"}])

            async def dispatched() -> bool:
                return worker.fetch_loop is not None and worker.fetch_loop.stats.fetched >= 1

            await wait_until(dispatched, timeout_s=15, what="the delivery to be dispatched")
            assert worker.fetch_loop is not None and worker.fetch_loop.stats.done == 0  # waiting on the lease
            await client.set(RedisKeys(settings.redis_prefix).verdict("held"), verdict)
            records = await collect(settings, settings.verdict_topic, count=1, timeout_s=15)
    finally:
        await client.aclose()
    assert records[0].value.decode() == verdict
    assert await guard_sim.calls_for("held text") == 0
