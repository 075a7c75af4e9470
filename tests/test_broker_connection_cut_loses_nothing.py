"""The network between the worker and the broker is cut mid-stream (live connections reset, then a
blackhole), then restored: every message gets exactly one stored verdict and a verdict record, and
nothing is dead-lettered.

The test runs its own tansu broker behind a fault proxy, advertising the proxy's port, so every
connection (bootstrap, group coordinator, partition leader) goes through the proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SettingsFactory
from tests.faultproxy import FaultProxy
from tests.helpers import (
    GuardSim,
    collect,
    distinct_verdict_ids,
    running_worker,
    stored_verdicts,
    wait_for_verdicts,
    wait_until,
)
from worker.config.settings import Settings
from worker.dev import stack
from worker.kafka.publish import InputProducer, Published

pytestmark = pytest.mark.integration

MESSAGES = 300
CUT_S = 4.5
PUBLISH_GAP_S = 0.02  # a steady stream of about 50 msg/s, still under way when the cut comes


@dataclass
class ProxiedBroker:
    """A broker of this test's own, reachable only through ``proxy``."""

    proxy: FaultProxy
    log_path: Path


@pytest.fixture
async def proxied_broker(tmp_path: Path) -> AsyncIterator[ProxiedBroker]:
    broker_port = stack.free_port()
    log_path = tmp_path / "broker.log"
    async with FaultProxy(broker_port) as proxy:
        process = stack.start_broker(broker_port, log_path=log_path, advertised_port=proxy.port)
        try:
            yield ProxiedBroker(proxy, log_path)
        finally:
            stack.kill(process.pid, expect="tansu")
            process.wait(timeout=10)


async def publish_stream(settings: Settings, ids: list[str]) -> list[Published]:
    """Publish one message at a time at a steady pace, through whatever the network does meanwhile."""
    sent: list[Published] = []
    # One producer for the whole stream, as a service would have: it rides out the cut by retrying.
    async with InputProducer(settings) as publisher:
        for message_id in ids:
            sent.append(await publisher.publish({"id": message_id, "text": f"broker cut {message_id}"}))
            await asyncio.sleep(PUBLISH_GAP_S)
    return sent


async def test_broker_connection_cut_mid_stream_loses_nothing(
    make_settings: SettingsFactory, guard_sim: GuardSim, proxied_broker: ProxiedBroker
) -> None:
    proxy = proxied_broker.proxy
    await guard_sim.configure(latency_ms=100)  # about 40 msg/s: most of the stream is still to come
    settings = make_settings(kafka_bootstrap=proxy.address, concurrency=4)
    ids = [f"b{i}" for i in range(MESSAGES)]
    async with running_worker(settings) as worker:
        publisher = asyncio.create_task(publish_stream(settings, ids))

        async def some_done() -> bool:
            return len(await stored_verdicts(settings, ids)) >= 60

        await wait_until(some_done, timeout_s=30, what="60 verdicts before the cut")
        await proxy.set_mode("reset")  # every live connection dies at once
        await proxy.set_mode("blackhole")  # and reconnections reach nothing for a while
        await asyncio.sleep(CUT_S)  # the outage itself
        done_at_restore = len(await stored_verdicts(settings, ids))
        await proxy.set_mode("pass")
        restored = time.monotonic()
        sent = await asyncio.wait_for(publisher, timeout=60)
        stored = await wait_for_verdicts(settings, ids, timeout_s=60)
        drained_s = time.monotonic() - restored
        assert worker.ready.is_set(), "the worker stopped"
        infra_retries = worker.fetch_loop.stats.infra_retries if worker.fetch_loop else -1
    assert {published.id for published in sent} == set(ids)
    assert set(stored) == set(ids)
    on_topic = await distinct_verdict_ids(settings, expected=MESSAGES, timeout_s=30)
    assert set(on_topic) == set(ids)
    # What the topic carries is the stored verdict itself, even for ids republished after the cut.
    assert all({k: v for k, v in on_topic[i].items() if k != "_headers"} == stored[i] for i in ids)
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    assert proxy.stats.reset >= 1, "the cut met no live connection"
    calls = sum((await guard_sim.stats())["calls_by_content"].values())
    print(
        f"broker cut {CUT_S:.1f} s; {done_at_restore} verdicts stored at the restore, all {MESSAGES}"
        f" {drained_s:.1f} s after it; {proxy.stats.reset} connection(s)"
        f" reset, {proxy.stats.blackholed_bytes} bytes blackholed; {infra_retries} infra retries;"
        f" {calls} guard calls"
    )
