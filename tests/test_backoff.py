"""core.backoff: jittered exponential delays, and the one loop that waits out unavailable services."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import BusyLoadingError, DataError

from worker.core.backoff import Backoff, until_available


def test_delays_double_up_to_the_cap_each_drawn_from_its_upper_half() -> None:
    backoff = Backoff(0.1, 0.8)
    ceilings = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    for ceiling in ceilings:
        delay = backoff.next_s()
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert 0.05 <= backoff.next_s() <= 0.1


def test_delays_are_jittered_so_a_fleet_does_not_retry_in_lockstep() -> None:
    firsts = {Backoff(1.0, 10.0).next_s() for _ in range(50)}
    assert len(firsts) > 40


async def test_infrastructure_errors_are_waited_out_and_each_is_reported() -> None:
    failures = [ConnectionResetError("reset"), BusyLoadingError("LOADING"), TimeoutError()]
    reported: list[tuple[str, float]] = []

    async def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "stored"

    result = await until_available(
        operation,
        backoff=Backoff(0.001, 0.004),
        on_retry=lambda exc, delay: reported.append((type(exc).__name__, delay)),
    )
    assert result == "stored"
    assert [name for name, _ in reported] == ["ConnectionResetError", "BusyLoadingError", "TimeoutError"]
    assert all(0 < delay <= 0.004 for _, delay in reported)


async def test_an_error_of_the_message_itself_propagates_at_once() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise DataError("value is not an integer")

    with pytest.raises(DataError):
        await until_available(operation, backoff=Backoff(0.001, 0.01), on_retry=lambda e, d: None)
    assert calls == 1


async def test_a_cancelled_task_stops_retrying() -> None:
    attempts = 0

    async def operation() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("down")

    task = asyncio.create_task(
        until_available(operation, backoff=Backoff(0.01, 0.01), on_retry=lambda e, d: None)
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    count = attempts
    await asyncio.sleep(0.05)
    assert attempts == count and count >= 1
