"""The readiness checks end when the drain cancels them, even when the cancellation arrives just as a
check finishes: on Python 3.11 ``asyncio.wait_for`` loses a cancellation in that moment, and the loop
would outlive the worker's stop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker.config.settings import Settings
from worker.ops.health import Health
from worker.processing.breaker import CircuitBreaker
from worker.processing.limiter import ConcurrencyLimiter
from worker.telemetry.metrics import Metrics


class SlowConsumer:
    """Answers ``topics()`` when the test says so."""

    def __init__(self, answer: asyncio.Future[set[str]]) -> None:
        self._answer = answer

    async def topics(self) -> set[str]:
        return await self._answer


@pytest.mark.parametrize("steps_before_cancel", [0, 1, 2, 3])
async def test_a_cancel_that_meets_a_finishing_check_still_ends_the_loop(steps_before_cancel: int) -> None:
    health = Health(Settings.load({}), Metrics(), CircuitBreaker(), ConcurrencyLimiter(4))
    answer: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()

    async def redis_probe() -> Any:
        return 1

    checks = asyncio.create_task(health.run_checks(SlowConsumer(answer), redis_probe))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    answer.set_result({"topic"})
    for _ in range(steps_before_cancel):
        await asyncio.sleep(0)
    checks.cancel()
    done, _ = await asyncio.wait({checks}, timeout=2)
    assert done, "the check loop ignored its cancellation"
    assert checks.cancelled()
