"""Redis stopped and restarted mid-run: the worker waits and resumes; nothing is lost or dead-lettered.

The test runs its own Valkey/Redis server with persistence on (the shared one must never be restarted).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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
from worker.dev import stack

pytestmark = pytest.mark.integration


class OwnRedis:
    """A persistent Valkey server of this test's own, which it may kill and restart on the same port."""

    def __init__(self, data: Path) -> None:
        self.port = stack.free_port()
        self.data = data
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = stack.start_valkey(self.port, data_dir=self.data, persist=True)

    def kill(self) -> None:
        assert self.process is not None
        stack.kill(self.process.pid, expect="valkey")
        self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


async def test_redis_restarted_mid_run_loses_nothing_and_dead_letters_nothing(
    make_settings: SettingsFactory, guard_sim: GuardSim, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    await guard_sim.configure(latency_ms=100)  # about 40 msg/s: most messages are still to come at the outage
    settings = make_settings(redis_url=f"redis://127.0.0.1:{own_redis.port}/0", concurrency=4)
    ids = [f"r{i}" for i in range(300)]
    async with running_worker(settings):
        await publish(settings, ({"id": i, "text": f"redis outage {i}"} for i in ids))

        async def some_done() -> bool:
            return len(await stored_verdicts(settings, ids)) >= 60

        await wait_until(some_done, timeout_s=60, what="60 verdicts before the outage")
        own_redis.kill()
        await asyncio.sleep(2)  # the outage
        own_redis.start()
        stored = await wait_for_verdicts(settings, ids, timeout_s=120)
    # Claims (fetch loop) or stores (pipeline) met the outage and were retried, not dead-lettered.
    retried = [r for r in caplog.records if r.levelname == "WARNING" and "retrying in" in r.getMessage()]
    assert retried, "the worker never met the outage"
    assert set(stored) == set(ids)
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
