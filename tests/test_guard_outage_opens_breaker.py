"""A guard outage opens the circuit: consumption pauses, in-flight messages wait instead of spending their
attempts, nothing is dead-lettered, and the backlog drains when the guard returns."""

from __future__ import annotations

import asyncio
import time

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
from worker.processing.breaker import BreakerState

pytestmark = pytest.mark.integration


async def test_guard_503_storm_pauses_instead_of_dead_lettering(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(concurrency=16, guard_attempts=3)
    ids = [f"o{i}" for i in range(200)]
    await guard_sim.configure(latency_ms=10)
    async with running_worker(settings) as worker:
        await publish(settings, ({"id": i, "text": f"outage {i}"} for i in ids[:50]))
        await wait_for_verdicts(settings, ids[:50], timeout_s=30)

        await guard_sim.configure(fail_503_rate=1.0)  # the guard goes down
        await publish(settings, ({"id": i, "text": f"outage {i}"} for i in ids[50:]))

        async def circuit_open() -> bool:
            return worker.breaker.state is BreakerState.OPEN

        await wait_until(circuit_open, timeout_s=30, what="the circuit to open")
        # The outage lasts well beyond what 3 attempts with backoff would survive.
        await asyncio.sleep(4)
        assert worker.breaker.state is not BreakerState.CLOSED
        assert await collect(settings, settings.dlq_topic, count=1, timeout_s=1) == []

        done_before = len(await stored_verdicts(settings, ids))
        await guard_sim.configure(fail_503_rate=0.0)  # the guard returns
        returned = time.monotonic()

        async def first_new_verdict() -> bool:
            return len(await stored_verdicts(settings, ids)) > done_before

        await wait_until(first_new_verdict, timeout_s=30, what="the first verdict after the guard returned")
        recovery_s = time.monotonic() - returned
        stored = await wait_for_verdicts(settings, ids, timeout_s=60)
    assert set(stored) == set(ids)
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    assert recovery_s <= 2.5, f"recovery took {recovery_s:.2f} s"
    # Attempts spent during the outage stay small: messages waited instead of retrying.
    assert max(verdict["attempts"] for verdict in stored.values()) <= 2 * settings.guard_attempts
    print(f"recovery from the guard's return to the first verdict: {recovery_s:.2f} s")
