"""A replayed message that is dead-lettered again: the worker believes the replay's guardq.* headers
(its token is in Redis), so the new dead letter keeps the original coordinates, first failure and replay
count; and a forced replay's authorisation is withdrawn, so the record can overwrite nothing later."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker
from worker.failures.envelope import H_REPLAY_TOKEN, DeadLetterEnvelope
from worker.failures.listing import Filter
from worker.failures.replay import ReplayOptions, replay
from worker.store.keys import RedisKeys

pytestmark = pytest.mark.integration


async def test_a_forced_replay_that_fails_again_keeps_its_history_and_loses_its_force(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    keys = RedisKeys(settings.redis_prefix)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        async with running_worker(settings):
            await publish(settings, [{"id": "again", "text": "always refused [[sim:400]]"}])
            (first,) = await collect(settings, settings.dlq_topic, count=1, timeout_s=30)
            summary = await replay(settings, ReplayOptions(filter=Filter(ids={"again"}), force=True))
            assert summary.replayed == 1
            _, second = await collect(settings, settings.dlq_topic, count=2, timeout_s=30)
        assert await client.exists(keys.force("again")) == 0  # withdrawn when it failed again
        tokens = [key async for key in client.scan_iter(match=keys.replay("*"))]
        assert len(tokens) == 1 and await client.get(tokens[0]) == b"again"  # provenance stays till its TTL
        assert H_REPLAY_TOKEN not in dict(second.headers)  # a dead letter carries no token of its own
    finally:
        await client.aclose()
    before, after = (
        DeadLetterEnvelope.from_headers(first.headers),
        DeadLetterEnvelope.from_headers(second.headers),
    )
    assert after.replay_count == 1
    assert (after.original_topic, after.original_partition, after.original_offset) == (
        before.original_topic,
        before.original_partition,
        before.original_offset,
    )
    assert after.first_failed_at == before.first_failed_at
    assert len(after.history) == 2
