"""A Redis that answers but refuses writes (NOREPLICAS here; MISCONF, BUSY, OOM, NOPERM, READONLY in the
wild) is the store's trouble, not the messages': nothing is dead-lettered, nothing committed, readiness
goes false while it lasts, and the work resumes when it clears. A Redis that can never run guardq's
scripts (an ACL without scripting) stops the worker at start-up with one line and exit code 3.

The test runs its own Valkey server: the shared one must never be reconfigured.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    collect,
    publish,
    running_worker,
    settings_env,
    wait_for_verdicts,
    wait_until,
)
from worker.dev import stack

pytestmark = pytest.mark.integration


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[int]:
    port = stack.free_port()
    process: subprocess.Popen[bytes] = stack.start_valkey(port, data_dir=tmp_path / "valkey")
    yield port
    stack.kill(process.pid, expect="valkey")
    process.wait(timeout=10)


@pytest.fixture
async def admin(own_valkey: int) -> AsyncIterator[Redis]:
    client = Redis(port=own_valkey)
    yield client
    await client.aclose()


async def test_writes_refused_hold_records_uncommitted_and_not_ready_until_redis_accepts_again(
    make_settings: SettingsFactory, guard_sim: GuardSim, own_valkey: int, admin: Redis
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{own_valkey}/0", topic_partitions=1)
    async with running_worker(settings) as worker:
        loop = worker.fetch_loop
        assert loop is not None
        await publish(settings, ({"id": f"w{i}", "text": f"warm {i}"} for i in range(10)))
        await wait_for_verdicts(settings, [f"w{i}" for i in range(10)], timeout_s=30)

        def committed() -> int:
            return sum(p.committed or 0 for p in loop.partition_lags() if p.topic == settings.input_topic)

        async def warm_committed() -> bool:
            return committed() == 10

        await wait_until(warm_committed, timeout_s=15, what="the warm-up committed")
        await admin.config_set("min-replicas-to-write", 1)  # every write now answers NOREPLICAS
        ids = [f"r{i}" for i in range(30)]
        await publish(settings, ({"id": i, "text": f"held {i}"} for i in ids))

        async def not_ready() -> bool:
            ready, body = worker.health.readiness()
            return (
                not ready
                and any(r.startswith("redis:") for r in body["reasons"])
                and loop.stats.infra_retries > 0
            )

        await wait_until(not_ready, timeout_s=20, what="readiness false for Redis and records held back")
        await asyncio.sleep(1.5)  # three commit intervals: nothing may move while writes are refused
        assert committed() == 10
        assert await collect(settings, settings.dlq_topic, count=1, timeout_s=1) == []

        await admin.config_set("min-replicas-to-write", 0)
        stored = await wait_for_verdicts(settings, ids, timeout_s=60)

        async def ready_again() -> bool:
            return worker.health.readiness()[0]

        await wait_until(ready_again, timeout_s=20, what="readiness back")
    assert set(stored) == set(ids)
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []


async def test_a_redis_user_without_scripting_stops_the_worker_at_start_with_exit_code_3(
    make_settings: SettingsFactory, own_valkey: int, admin: Redis
) -> None:
    await admin.execute_command("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "&*", "+@all", "-@scripting")
    settings = make_settings(redis_url=f"redis://noscript:pw@127.0.0.1:{own_valkey}/0")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", env=settings_env(settings), stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 3
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("guardq: Redis configuration error: Redis refuses guardq's scripts (")
    assert "pw@" not in err.decode()
