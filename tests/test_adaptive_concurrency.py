"""AdaptiveLimit against a model guard with K slots: it settles just above K without a long queue, opens up
to its maximum for a guard that never queues, and backs off on 429s. A fake clock drives it: each round,
every slot's call takes the service time stretched by the guard's queue."""

from __future__ import annotations

import contextlib
import itertools

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

    async def round(self, *workers: tuple[AdaptiveLimit, ConcurrencyLimiter]) -> None:
        """One round: every worker's ``limit`` calls take their slots together; each ends after its share
        of the guard's queue (all workers' calls) and reports while it still holds its slot, as the
        worker's calls do."""
        in_flight = sum(limiter.limit for _, limiter in workers)
        started = self.now
        latency = self.service_s * max(1.0, in_flight / self.capacity)
        self.now += latency
        served = 0
        for controller, limiter in workers:
            async with contextlib.AsyncExitStack() as slots:
                for _ in range(limiter.limit):
                    await slots.enter_async_context(limiter.slot())
                for _ in range(limiter.limit):
                    self.calls += 1
                    refused = self.refuse_above and served >= self.capacity
                    served += 1
                    self.refused += refused
                    controller.record(latency, started=started, overloaded=refused)


async def _run(
    guard: ModelGuard, rounds: int, *, minimum: int = 4, maximum: int = 256
) -> tuple[AdaptiveLimit, list[int]]:
    limiter = ConcurrencyLimiter(minimum)
    controller = AdaptiveLimit(limiter, minimum=minimum, maximum=maximum, clock=guard.clock, wall=guard.clock)
    limits = []
    for _ in range(rounds):
        await guard.round((controller, limiter))
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


async def test_four_workers_sharing_a_guard_keep_it_busy_and_share_it_fairly() -> None:
    guard = ModelGuard(capacity=16, service_s=0.05)
    limiters = [ConcurrencyLimiter(4) for _ in range(4)]
    # One wall clock for the fleet: their no-load probes fall together.
    workers = [
        (AdaptiveLimit(limiter, minimum=4, maximum=256, clock=guard.clock, wall=guard.clock), limiter)
        for limiter in limiters
    ]
    shares: list[list[int]] = []
    for _ in range(3000):
        await guard.round(*workers)
        shares.append([limiter.limit for limiter in limiters])
    settled = shares[1000:]
    totals = [sum(share) for share in settled]
    assert sum(total >= 16 for total in totals) / len(totals) >= 0.95
    assert sum(totals) / len(totals) <= 1.5 * 16
    means = [sum(share[i] for share in settled) / len(settled) for i in range(4)]
    assert max(means) <= 1.5 * min(means), means
    for controller, _ in workers:
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


async def test_a_slow_start_reaches_the_guards_capacity_in_a_few_rounds_in_small_steps() -> None:
    guard = ModelGuard(capacity=16, service_s=0.05)
    _, limits = await _run(guard, 120)
    # One round of calls a step, with no probe first, while the guard keeps up: K is reached within ten
    # rounds (with a probe of 32 calls first and one-slot steps it took 22), never by a step larger than
    # later ones.
    assert next(i for i, limit in enumerate(limits) if limit >= 16) < 10, limits[:30]
    steps = [(before, now) for before, now in itertools.pairwise(limits) if now > before]
    assert all(now - before <= max(1, before // 10) + 1 for before, now in steps), steps
    settled = limits[40:]
    assert all(16 <= limit <= 24 for limit in settled), settled
