"""A 429 with Retry-After holds every guard call of the worker for that window, not only the one that got it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, publish, running_worker, wait_for_verdicts, wait_until
from worker.processing.throttle import Throttle

pytestmark = pytest.mark.integration


async def test_429_with_retry_after_is_honoured_by_every_call_of_the_worker(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(retry_after_s=2)
    settings = make_settings()
    async with running_worker(settings) as worker:
        await publish(settings, [{"id": "limited", "text": "slow down [[sim:429x1]]"}])

        async def got_429() -> bool:
            return int((await guard_sim.stats())["faults"].get("429", 0)) >= 1

        await wait_until(got_429, timeout_s=30, what="the 429")
        seen_429 = datetime.now(UTC)
        requests_at_429 = int((await guard_sim.stats())["requests"])
        await publish(settings, ({"id": f"after{i}", "text": f"after the 429 {i}"} for i in range(10)))
        stored = await wait_for_verdicts(
            settings, ["limited", *[f"after{i}" for i in range(10)]], timeout_s=30
        )
        assert worker.throttle.holds == 1
    first_after = min(
        datetime.fromisoformat(stored[f"after{i}"]["processed_at"].replace("Z", "+00:00")) for i in range(10)
    )
    waited_s = (first_after - seen_429).total_seconds()
    assert stored["limited"]["attempts"] == 2
    # The 429 was seen at most a poll after it happened; no other call was answered within its 2 s window.
    assert waited_s >= 1.5, f"a call was answered {waited_s:.2f} s after the 429 (Retry-After 2 s)"
    # No call inside the window: exactly the retry plus the ten new messages came after it.
    assert int((await guard_sim.stats())["requests"]) - requests_at_429 == 11


async def test_throttle_window_takes_the_longest_retry_after_and_caps_nonsense() -> None:
    now = [100.0]
    throttle = Throttle(clock=lambda: now[0])
    throttle.hold_for(2.0)
    throttle.hold_for(1.0)  # a shorter window does not shorten the current one
    assert throttle.remaining_s == 2.0
    throttle.hold_for(None)
    assert throttle.remaining_s == 2.0
    throttle.hold_for(10**9)
    assert throttle.remaining_s == 300.0
    now[0] += 301
    await throttle.wait()  # returns at once once the window has passed
    assert throttle.remaining_s == 0.0
