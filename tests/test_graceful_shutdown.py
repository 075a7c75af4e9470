"""SIGTERM drains in-flight work up to the deadline and commits only what is done; a second signal exits at once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, publish, spawn_worker, stored_verdicts, wait_until
from worker.config.settings import Settings
from worker.kafka import clients as kafka

pytestmark = pytest.mark.integration


async def _committed_total(settings: Settings) -> int:
    """The sum of the group's committed offsets over the input partitions."""
    consumer = kafka.make_consumer(settings, group_id=settings.group_id)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.input_topic, p) for p in range(settings.topic_partitions)]
        return sum([(await consumer.committed(tp)) or 0 for tp in tps])
    finally:
        await consumer.stop()


async def _all_in_flight(guard_sim: GuardSim, count: int) -> None:
    async def in_flight() -> bool:
        return int((await guard_sim.stats())["in_flight"]) >= count

    await wait_until(in_flight, timeout_s=60, what=f"{count} guard calls in flight")


async def _exit_code(process: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float]:
    started = time.monotonic()

    async def exited() -> bool:
        return process.poll() is not None

    await wait_until(exited, timeout_s=timeout_s, what="the worker to exit")
    return process.returncode, time.monotonic() - started


async def test_sigterm_finishes_in_flight_work_commits_it_and_exits_zero(
    make_settings: SettingsFactory, guard_sim: GuardSim, tmp_path: Path
) -> None:
    await guard_sim.configure(latency_ms=2000)
    settings = make_settings(concurrency=8, shutdown_timeout_s=15)
    ids = [f"d{i}" for i in range(8)]
    await publish(settings, ({"id": i, "text": f"drain me {i}"} for i in ids))
    worker = spawn_worker(settings, str(tmp_path / "worker.log"))
    await _all_in_flight(guard_sim, 8)
    worker.send_signal(signal.SIGTERM)
    code, took_s = await _exit_code(worker, 30)
    assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert took_s < 15
    assert set(await stored_verdicts(settings, ids)) == set(ids)
    assert await _committed_total(settings) == 8
    # The worker logged its effective settings when it started.
    logged = [
        json.loads(line)["message"]
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.startswith("{") and '"settings: ' in line
    ]
    assert len(logged) == 1 and f'"input_topic":"{settings.input_topic}"' in logged[0]


async def test_work_cut_off_at_the_deadline_is_not_committed(
    make_settings: SettingsFactory, guard_sim: GuardSim, tmp_path: Path
) -> None:
    await guard_sim.configure(latency_ms=8000)
    settings = make_settings(concurrency=4, shutdown_timeout_s=1)
    await publish(settings, ({"id": f"c{i}", "text": f"cut me {i}"} for i in range(4)))
    worker = spawn_worker(settings, str(tmp_path / "worker.log"))
    await _all_in_flight(guard_sim, 4)
    worker.send_signal(signal.SIGTERM)
    code, took_s = await _exit_code(worker, 20)
    assert code == 0
    assert took_s < 8, "the drain must stop at the deadline, not wait for the guard"
    assert await stored_verdicts(settings, [f"c{i}" for i in range(4)]) == {}
    assert await _committed_total(settings) == 0


async def test_second_signal_exits_at_once_without_committing_unfinished_work(
    make_settings: SettingsFactory, guard_sim: GuardSim, tmp_path: Path
) -> None:
    await guard_sim.configure(latency_ms=8000)
    settings = make_settings(concurrency=4, shutdown_timeout_s=30)
    await publish(settings, ({"id": f"s{i}", "text": f"second signal {i}"} for i in range(4)))
    log = tmp_path / "worker.log"
    worker = spawn_worker(settings, str(log))
    await _all_in_flight(guard_sim, 4)
    worker.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        return "stopping: finishing in-flight work" in log.read_text()

    await wait_until(draining, timeout_s=10, what="the first signal to start the drain")
    worker.send_signal(signal.SIGTERM)
    code, took_s = await _exit_code(worker, 10)
    assert code == 130
    assert took_s < 3
    assert await _committed_total(settings) == 0
