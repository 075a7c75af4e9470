"""AdaptiveLimit against a model guard with K slots: it settles just above K without a long queue, opens up
to its maximum for a guard that never queues, and backs off on 429s. A fake clock drives it: each round,
every slot's call takes the service time stretched by the guard's queue."""

from __future__ import annotations

import contextlib

import pytest

from worker.processing.adaptive import AdaptiveLimit
from worker.processing.limiter import ConcurrencyLimiter


class ModelGuard:
    """K calls served at once in ``service_s``; calls beyond K queue (vLLM's behaviour) or are refused."""

    def __init__(self, capacity: int, service_s: float, *, refuse_above: bool = False) -> None:
        self.capacity = capacity
        self.service_s = service_s
        self.refuse_above = refuse_above
        self.now = 0.0
        self.calls = 0
        self.refused = 0

    def clock(self) -> float:
        return self.now

    async def round(self, controller: AdaptiveLimit, limiter: ConcurrencyLimiter) -> None:
        """One round: ``limit`` calls take their slots together; each ends after its share of the queue
        and reports while it still holds its slot, as the worker's calls do."""
        in_flight = limiter.limit
        started = self.now
        latency = self.service_s * max(1.0, in_flight / self.capacity)
        self.now += latency
        async with contextlib.AsyncExitStack() as slots:
            for _ in range(in_flight):
                await slots.enter_async_context(limiter.slot())
            for slot in range(in_flight):
                self.calls += 1
                refused = self.refuse_above and slot >= self.capacity
                self.refused += refused
                controller.record(latency, started=started, overloaded=refused)


async def _run(
    guard: ModelGuard, rounds: int, *, minimum: int = 4, maximum: int = 256
) -> tuple[AdaptiveLimit, list[int]]:
    limiter = ConcurrencyLimiter(minimum)
    controller = AdaptiveLimit(limiter, minimum=minimum, maximum=maximum, clock=guard.clock)
    limits = []
    for _ in range(rounds):
        await guard.round(controller, limiter)
        limits.append(limiter.limit)
    return controller, limits


async def test_a_guard_with_16_slots_is_kept_busy_without_a_long_queue() -> None:
    guard = ModelGuard(capacity=16, service_s=0.05)
    controller, limits = await _run(guard, 2000)
    settled = limits[500:]
    # Busy: at least K calls at the guard nearly all the time; short queue: on average at most 1.5 K.
    assert sum(limit >= 16 for limit in settled) / len(settled) >= 0.95
    assert sum(settled) / len(settled) <= 1.5 * 16
    assert controller.noload_s == pytest.approx(0.05, rel=0.1)


async def test_a_guard_that_never_queues_gets_the_maximum() -> None:
    guard = ModelGuard(capacity=10_000, service_s=0.002)
    _, limits = await _run(guard, 300, maximum=64)
    assert limits[-1] == 64
    assert limits.index(64) < 100


async def test_429s_above_capacity_bring_the_limit_down_and_stay_rare() -> None:
    guard = ModelGuard(capacity=16, service_s=0.05, refuse_above=True)
    _, limits = await _run(guard, 2000)
    assert guard.refused / guard.calls < 0.02
    settled = limits[500:]
    assert max(settled) <= 32 and sum(settled) / len(settled) >= 12


async def test_the_limit_stays_within_its_bounds() -> None:
    slow = ModelGuard(capacity=1, service_s=1.0)
    _, limits = await _run(slow, 500, minimum=3, maximum=20)
    assert min(limits) >= 3 and max(limits) <= 20
    with pytest.raises(ValueError):
        AdaptiveLimit(ConcurrencyLimiter(1), minimum=5, maximum=4)


async def test_a_cap_nobody_reaches_does_not_grow() -> None:
    limiter = ConcurrencyLimiter(4)
    controller = AdaptiveLimit(limiter, minimum=4, maximum=64, clock=lambda: 0.0)
    for _ in range(500):  # one call at a time, always fast: the cap is never the limit
        async with limiter.slot():
            controller.record(0.01, started=1.0, overloaded=False)
    assert limiter.limit == 4
