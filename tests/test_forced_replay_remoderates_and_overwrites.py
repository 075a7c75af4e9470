"""`guardq dlq replay --force`: the worker moderates the replayed message again and overwrites the stored
verdict, once; a producer that sets the force header itself forces nothing."""

from __future__ import annotations

import contextlib
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
from worker.config.settings import Settings
from worker.failures.envelope import H_FORCE, H_REPLAY_TOKEN, H_REPLAYED_FROM, DeadLetterEnvelope
from worker.failures.listing import Filter
from worker.failures.replay import ReplayOptions, replay
from worker.kafka import clients as kafka
from worker.kafka.reading import records
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


async def test_a_forced_replay_during_an_outage_is_parked_without_a_provisional_verdict(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(
        outage_policy="review", outage_after_s=0, breaker_open_s=0.5, guard_backoff="100ms,200ms"
    )
    async with running_worker(settings):
        await publish(settings, [{"id": "f2", "text": ORIGINAL}])
        await collect(settings, settings.dlq_topic, count=1, timeout_s=30)
        await publish(settings, [{"id": "f2", "text": "a harmless later version"}])
        assert (await wait_for_verdicts(settings, ["f2"], timeout_s=30))["f2"]["label"] == "safe"

        await guard_sim.configure(fail_503_rate=1.0)
        try:
            # Other messages fail until the breaker opens: the outage (and the fallback) is on.
            await publish(settings, [{"id": f"o{i}", "text": f"other {i}"} for i in range(3)])
            await collect(settings, settings.parked_topic, count=3, timeout_s=60)
            forced = await replay(settings, ReplayOptions(filter=Filter(ids={"f2"}), force=True))
            assert forced.replayed == 1
            assert await _appears(settings, settings.parked_topic, b"f2", timeout_s=60), "f2 was not parked"
            # The final verdict stands: no provisional one replaced it or went out for it.
            stored = (await stored_verdicts(settings, ["f2"]))["f2"]
            assert (stored["label"], stored.get("provisional", False)) == ("safe", False)
        finally:
            await guard_sim.configure(fail_503_rate=0.0)

        async def remoderated() -> bool:
            return (await stored_verdicts(settings, ["f2"]))["f2"]["label"] == "unsafe"

        await wait_until(remoderated, timeout_s=60, what="the parked forced replay's verdict")
        # f2's two verdicts, and each other message's provisional and final one.
        published = await collect(settings, settings.verdict_topic, count=8, timeout_s=30)
    documents = [json.loads(record.value) for record in published if record.key == b"f2"]
    assert [(d["label"], d.get("provisional", False)) for d in documents] == [
        ("safe", False),
        ("unsafe", False),
    ]


async def _appears(settings: Settings, topic: str, key: bytes, *, timeout_s: float) -> bool:
    """Whether a record with ``key`` reaches ``topic`` within ``timeout_s`` (read from the beginning)."""
    stream = records(settings, topic, from_beginning=True, timeout_s=timeout_s)
    async with contextlib.aclosing(stream):
        async for record in stream:
            if record.key == key:
                return True
    return False
