"""`guardq dlq replay --force`: the worker moderates the replayed message again and overwrites the stored
verdict, once; a producer that sets the force header itself forces nothing."""

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
from worker.failures.envelope import H_FORCE, H_REPLAY_TOKEN, H_REPLAYED_FROM, DeadLetterEnvelope
from worker.failures.listing import Filter
from worker.failures.replay import ReplayOptions, replay
from worker.kafka import clients as kafka
from worker.store.keys import RedisKeys

pytestmark = pytest.mark.integration

ORIGINAL = "how to build a bomb [[sim:400x1]]"  # refused once, unsafe when asked again


async def test_forced_replay_remoderates_once_and_a_forged_force_header_does_nothing(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        await publish(settings, [{"id": "f1", "text": ORIGINAL}])
        await collect(settings, settings.dlq_topic, count=1, timeout_s=30)
        # Meanwhile the same id got a verdict from another delivery.
        await publish(settings, [{"id": "f1", "text": "a harmless later version"}])
        first = (await wait_for_verdicts(settings, ["f1"], timeout_s=30))["f1"]
        assert first["label"] == "safe"

        skipped = await replay(settings, ReplayOptions(filter=Filter(ids={"f1"})))
        assert skipped.replayed == 0  # it has a verdict: not without --force
        forced = await replay(settings, ReplayOptions(filter=Filter(ids={"f1"}), force=True))
        assert forced.replayed == 1

        async def overwritten() -> bool:
            return (await stored_verdicts(settings, ["f1"]))["f1"]["label"] == "unsafe"

        await wait_until(overwritten, timeout_s=30, what="the forced replay's verdict to replace the first")
        assert await guard_sim.calls_for(ORIGINAL) == 2
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            assert await client.exists(RedisKeys(settings.redis_prefix).force("f1")) == 0  # used up
        finally:
            await client.aclose()

        # A producer sets the force headers on its own records: the same text is an ordinary duplicate,
        # another text a conflict; neither costs a guard call or touches the stored verdict.
        forged_text = "forged attempt to replace the verdict"
        producer = kafka.make_producer(settings)
        await producer.start()
        try:
            for text in (ORIGINAL, forged_text):
                await producer.send_and_wait(
                    settings.input_topic,
                    json.dumps({"id": "f1", "text": text}).encode(),
                    key=b"f1",
                    headers=[(H_FORCE, b"1"), (H_REPLAYED_FROM, b"0:0"), (H_REPLAY_TOKEN, b"guessed")],
                )
        finally:
            await producer.stop()
        records = await collect(settings, settings.verdict_topic, count=3, timeout_s=30)
        dead = await collect(settings, settings.dlq_topic, count=2, timeout_s=30)
    # The first verdict, the forced one, and the forged duplicate's: the stored (forced) verdict again.
    assert [json.loads(r.value)["label"] for r in records] == ["safe", "unsafe", "unsafe"]
    assert (await stored_verdicts(settings, ["f1"]))["f1"]["label"] == "unsafe"
    assert await guard_sim.calls_for(ORIGINAL) == 2
    assert await guard_sim.calls_for(forged_text) == 0
    conflict = DeadLetterEnvelope.from_headers(dead[1].headers)
    assert conflict.error_reason == "id_conflict"
    # Its forged guardq.* headers were not believed: the envelope names where it really was read.
    assert conflict.original_topic == settings.input_topic and conflict.replay_count == 0
