"""SIGTERM with a backlog: calls in flight finish, but no guard call starts for a record that was not
already calling the guard; the worker exits long before its deadline, and what it left uncommitted is
moderated by the next worker, with only the calls cut short repeated."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, publish, spawn_worker, stored_verdicts, wait_for_verdicts, wait_until

pytestmark = pytest.mark.integration


async def test_sigterm_with_a_backlog_starts_no_new_guard_call_and_exits_early(
    make_settings: SettingsFactory, guard_sim: GuardSim, tmp_path: Path
) -> None:
    # 4 calls of 1 s at a time: a drain that kept starting calls would take the whole 15 s deadline.
    await guard_sim.configure(latency_ms=1000)
    settings = make_settings(concurrency=4, shutdown_timeout_s=15)
    ids = [f"s{i}" for i in range(120)]
    await publish(settings, ({"id": i, "text": f"stop clean {i}"} for i in ids))
    log = tmp_path / "worker.log"
    worker = spawn_worker(settings, str(log))

    async def busy() -> bool:
        stats = await guard_sim.stats()
        return len(await stored_verdicts(settings, ids)) >= 8 and int(stats["in_flight"]) >= 4

    await wait_until(busy, timeout_s=60, what="8 verdicts and 4 guard calls in flight")
    requests_at_stop = int((await guard_sim.stats())["requests"])
    worker.send_signal(signal.SIGTERM)
    stopped = time.monotonic()

    async def exited() -> bool:
        return worker.poll() is not None

    await wait_until(exited, timeout_s=30, what="the worker to exit")
    took_s = time.monotonic() - stopped
    assert worker.returncode == 0, log.read_text()[-2000:]
    started_after_stop = int((await guard_sim.stats())["requests"]) - requests_at_stop
    # At most the calls already on their way (a slot granted, the request not yet at the guard).
    assert started_after_stop <= settings.concurrency, f"{started_after_stop} calls started after SIGTERM"
    assert took_s < 8, f"the drain took {took_s:.1f} s"
    done_at_exit = len(await stored_verdicts(settings, ids))
    assert done_at_exit < len(ids)

    second = spawn_worker(settings, str(log))
    try:
        await guard_sim.configure(latency_ms=5)
        stored = await wait_for_verdicts(settings, ids, timeout_s=90)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, log.read_text()[-2000:]
    assert set(stored) == set(ids)
    calls = (await guard_sim.stats())["calls_by_content"]
    digests = {hashlib.sha1(f"stop clean {i}".encode()).hexdigest() for i in ids}
    repeated = [digest for digest in digests if calls.get(digest, 0) > 1]
    # Only the calls in flight at the stop (finished, but maybe after their lease lapsed) may repeat.
    assert len(repeated) <= settings.concurrency
