"""Shared fixtures: a real tansu broker, a real Redis, and a simulated guard server, one each per test session.

Each test gets fresh topics, its own consumer group and its own Redis key prefix (deleted afterwards).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import GuardSim, start_guard_sim, stop_process
from worker.config.settings import Settings
from worker.dev import stack
from worker.store.connect import delete_prefix

SettingsFactory = Callable[..., Settings]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker with in-memory storage on a free port; its log is printed if it fails to start."""
    port = stack.free_port()
    log_path = tmp_path_factory.mktemp("tansu") / "broker.log"
    try:
        process = stack.start_broker(port, log_path=log_path)
    except RuntimeError:
        sys.stderr.write(log_path.read_text(errors="replace"))
        raise
    yield f"127.0.0.1:{port}"
    stack.kill(process.pid, expect="tansu")
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis at 127.0.0.1:6379 when it answers, else an embedded Valkey on a free port."""
    shared = os.environ.get("GUARDQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if stack.redis_reachable(shared):
        yield shared
        return
    port = stack.free_port()
    process = stack.start_valkey(port, data_dir=tmp_path_factory.mktemp("valkey"))
    yield f"redis://127.0.0.1:{port}/0"
    stack.kill(process.pid, expect="valkey")
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def guard_sim_process() -> Iterator[GuardSim]:
    """One simulated guard server for the session; tests reset and configure it through its admin routes."""
    sim, process = start_guard_sim()
    yield sim
    stop_process(process)


@pytest.fixture
async def guard_sim(guard_sim_process: GuardSim) -> AsyncIterator[GuardSim]:
    """The session's simulator with stats cleared and default knobs restored."""
    await guard_sim_process.reset()
    yield guard_sim_process
    await guard_sim_process.reset()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"guardq-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    await delete_prefix(redis_url, prefix)


@pytest.fixture
def make_settings(broker: str, redis_url: str, redis_prefix: str, guard_sim: GuardSim) -> SettingsFactory:
    """Settings with fresh topic names and group for this test; keyword arguments override fields."""
    run = uuid.uuid4().hex[:10]

    def build(**overrides: Any) -> Settings:
        env = {
            "GUARDQ_KAFKA_BOOTSTRAP": broker,
            "GUARDQ_REDIS_URL": redis_url,
            "GUARDQ_REDIS_PREFIX": redis_prefix,
            "GUARDQ_GUARD_URL": guard_sim.base_url,
            "GUARDQ_INPUT_TOPIC": f"t{run}.requests",
            "GUARDQ_VERDICT_TOPIC": f"t{run}.verdicts",
            "GUARDQ_DLQ_TOPIC": f"t{run}.dlq",
            "GUARDQ_GROUP_ID": f"g{run}",
            "GUARDQ_TOPIC_PARTITIONS": "4",
            "GUARDQ_SESSION_TIMEOUT_S": "6",
            "GUARDQ_COMMIT_INTERVAL_S": "0.5",
            "GUARDQ_GUARD_TIMEOUT_S": "5",
            # Many workers run at once in a test session: each binds its own free port.
            "GUARDQ_HTTP_HOST": "127.0.0.1",
            "GUARDQ_HTTP_PORT": "0",
        }
        return Settings.load(env, {key: str(value) for key, value in overrides.items()})

    return build


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
