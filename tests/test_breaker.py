"""The circuit breaker's rules: what opens it, what does not, probing, trials, and callers waiting."""

from __future__ import annotations

import asyncio
import random

from tests.helpers import wait_until
from worker.processing.breaker import BreakerPolicy, BreakerState, CircuitBreaker

FAST = BreakerPolicy(cooldown_initial_s=0.01, cooldown_max_s=0.05, trial_calls=2, half_open_timeout_s=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_run_of_consecutive_failures_opens_it() -> None:
    breaker = CircuitBreaker(FAST)
    for _ in range(FAST.consecutive_failures - 1):
        breaker.record(success=False)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(success=False)
    assert breaker.state is BreakerState.OPEN and breaker.state.value == "red"


def test_scattered_failures_that_retries_absorb_do_not_open_it() -> None:
    breaker, rng = CircuitBreaker(FAST), random.Random(7)
    for _ in range(5000):  # 30 % transient failures, as with resets and 503s mixed
        breaker.record(success=rng.random() >= 0.3)
    assert breaker.state is BreakerState.CLOSED


def test_a_high_failure_rate_opens_it_only_with_enough_calls_in_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(FAST, clock=clock)
    for index in range(FAST.min_calls - 1):
        breaker.record(success=index % 3 == 0)  # two in three fail, never 20 in a row
    assert breaker.state is BreakerState.CLOSED
    breaker.record(success=False)
    assert breaker.state is BreakerState.OPEN


def test_failures_outside_the_window_are_forgotten() -> None:
    clock = Clock()
    breaker = CircuitBreaker(FAST, clock=clock)
    for index in range(FAST.min_calls - 1):
        breaker.record(success=index % 3 == 0)
    clock.now += FAST.window_s + 1
    breaker.record(success=False)
    assert breaker.state is BreakerState.CLOSED


async def test_open_circuit_holds_callers_until_a_probe_and_trials_succeed() -> None:
    breaker = CircuitBreaker(FAST)
    for _ in range(FAST.consecutive_failures):
        breaker.record(success=False)
    guard_up = asyncio.Event()

    async def probe() -> None:
        if not guard_up.is_set():
            raise ConnectionError("still down")

    prober = asyncio.create_task(breaker.run_prober(probe))
    waiting = [asyncio.create_task(breaker.admit()) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in waiting), "no call may pass while the circuit is open"
    guard_up.set()

    async def two_admitted() -> bool:
        return sum(task.done() for task in waiting) == FAST.trial_calls

    await wait_until(two_admitted, timeout_s=5, what="the trial calls to be let through")
    assert breaker.state is BreakerState.HALF_OPEN and breaker.state.value == "yellow"
    for _ in range(FAST.trial_calls):
        breaker.record(success=True)
    assert breaker.state is BreakerState.CLOSED
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=1)
    prober.cancel()


async def test_a_failed_trial_opens_it_again() -> None:
    breaker = CircuitBreaker(FAST)
    for _ in range(FAST.consecutive_failures):
        breaker.record(success=False)

    async def probe() -> None:
        return None

    prober = asyncio.create_task(breaker.run_prober(probe))

    async def half_open() -> bool:
        return breaker.state is BreakerState.HALF_OPEN

    await wait_until(half_open, timeout_s=5, what="half-open")
    await breaker.admit()
    breaker.record(success=False)
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_count == 2
    prober.cancel()


async def test_trials_that_never_report_do_not_leave_it_half_open_forever() -> None:
    breaker = CircuitBreaker(BreakerPolicy(cooldown_initial_s=0.01, trial_calls=1, half_open_timeout_s=0.2))
    for _ in range(breaker_threshold := 20):
        breaker.record(success=False)
    assert breaker_threshold == BreakerPolicy().consecutive_failures
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1

    prober = asyncio.create_task(breaker.run_prober(probe))

    async def probed_twice() -> bool:
        return calls >= 2

    await wait_until(probed_twice, timeout_s=5, what="a second probe after the silent trial")
    prober.cancel()
