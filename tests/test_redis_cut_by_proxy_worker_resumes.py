"""The network between the worker and Redis is cut mid-run (live connections reset, then refused), then
restored: the worker waits and resumes, every message gets its verdict, nothing is dead-lettered, and no
text costs a second guard call (a verdict the guard gave waits in memory until Redis takes it).

tests/test_redis_restart_mid_run.py covers a Redis server that dies; this covers a network cut in
front of a Redis that stays up. Only the worker goes through the proxy; the test reads Redis directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest

from tests.conftest import SettingsFactory
from tests.faultproxy import FaultProxy
from tests.helpers import (
    GuardSim,
    collect,
    running_worker,
    stored_verdicts,
    wait_for_verdicts,
    wait_until,
)
from worker.config.settings import Settings
from worker.dev.sim.faults import content_key
from worker.kafka.publish import InputProducer

pytestmark = pytest.mark.integration

MESSAGES = 300
CUT_S = 3.0
PUBLISH_GAP_S = 0.02  # a steady stream of about 50 msg/s: new ids need claims while Redis is cut off


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the session's Redis."""
    async with FaultProxy(urlparse(redis_url).port or 6379) as proxy:
        yield proxy


def through(redis_url: str, proxy: FaultProxy) -> str:
    """``redis_url`` with its host and port replaced by the proxy's (credentials and database kept)."""
    parsed = urlparse(redis_url)
    userinfo, at, _ = parsed.netloc.rpartition("@")
    return parsed._replace(netloc=f"{userinfo}{at}{proxy.address}").geturl()


async def publish_stream(settings: Settings, texts: dict[str, str]) -> int:
    """Publish one message at a time at a steady pace; returns how many were published."""
    async with InputProducer(settings) as publisher:
        for message_id, text in texts.items():
            await publisher.publish({"id": message_id, "text": text})
            await asyncio.sleep(PUBLISH_GAP_S)
    return len(texts)


async def test_redis_cut_by_the_network_mid_run_worker_resumes_without_second_guard_calls(
    make_settings: SettingsFactory,
    guard_sim: GuardSim,
    redis_url: str,
    redis_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await guard_sim.configure(latency_ms=100)  # about 40 msg/s: most messages are still to come at the cut
    direct = make_settings()
    proxied = make_settings(redis_url=through(redis_url, redis_proxy), concurrency=4)
    texts = {f"n{i}": f"redis network cut {i}" for i in range(MESSAGES)}
    async with running_worker(proxied) as worker:
        publisher = asyncio.create_task(publish_stream(direct, texts))

        async def some_done() -> bool:
            return len(await stored_verdicts(direct, texts)) >= 60

        await wait_until(some_done, timeout_s=30, what="60 verdicts before the cut")
        calls_at_cut = (await guard_sim.stats())["requests"]
        await redis_proxy.set_mode("reset")  # every pooled connection dies at once
        await redis_proxy.set_mode("refuse")  # and reconnecting is refused for a while
        await asyncio.sleep(CUT_S)  # the outage itself
        done_at_restore = len(await stored_verdicts(direct, texts))
        calls_in_cut = (await guard_sim.stats())["requests"] - calls_at_cut
        await redis_proxy.set_mode("pass")
        restored = time.monotonic()
        assert await asyncio.wait_for(publisher, timeout=30) == MESSAGES
        stored = await wait_for_verdicts(direct, texts, timeout_s=60)
        drained_s = time.monotonic() - restored
        assert worker.ready.is_set(), "the worker stopped"
    retried = [r for r in caplog.records if r.levelname == "WARNING" and "retrying in" in r.getMessage()]
    assert retried, "the worker never met the cut"
    assert redis_proxy.stats.reset >= 1, "the cut met no live connection"
    assert set(stored) == set(texts)
    assert await collect(direct, direct.dlq_topic, count=1, timeout_s=2) == []
    calls = (await guard_sim.stats())["calls_by_content"]
    extra = {
        i: calls.get(content_key(text), 0) for i, text in texts.items() if calls.get(content_key(text)) != 1
    }
    assert extra == {}, "texts moderated more (or less) than once"
    assert all(verdict["attempts"] == 1 for verdict in stored.values())
    print(
        f"Redis cut {CUT_S:.1f} s with {done_at_restore} verdicts stored; all {MESSAGES} stored {drained_s:.1f} s"
        f" after the restore; {calls_in_cut} guard calls during the cut; {redis_proxy.stats.reset} connection(s)"
        f" reset; {len(retried)} retry warnings"
    )
