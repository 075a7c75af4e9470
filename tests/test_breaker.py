"""The circuit breaker's rules: what opens it, what does not, probing, trials, and callers waiting."""

from __future__ import annotations

import asyncio
import random
import tracemalloc

import pytest

from tests.helpers import wait_until
from worker.config.settings import Settings, SettingsError
from worker.core.guard_types import GuardRequest
from worker.processing.breaker import BreakerPolicy, BreakerState, CircuitBreaker, OutageFallback

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


def test_fast_failures_ahead_of_slow_verdicts_of_the_same_round_do_not_open_it() -> None:
    """64 calls in flight, a tenth of them answered at once with a 503 or a reset: those arrive first, in
    a row, before the verdicts of the others."""
    breaker = CircuitBreaker(FAST)  # its window empty, as after it closes
    first = [False] * 7 + [True] * 3 + [False] * 2  # 9 failures in the first 12 outcomes, 7 in a row
    for index, success in enumerate(first + [True] * 52):
        breaker.record(success=success, text=f"t{index}", in_flight=64 - index)
    assert breaker.state is BreakerState.CLOSED


def test_a_guard_down_under_many_calls_opens_it_within_one_round_of_them() -> None:
    breaker = CircuitBreaker(FAST)
    for _ in range(1000):  # a window of successes: only a run of failures opens it at once
        breaker.record(success=True, in_flight=64)
    for index in range(63):
        breaker.record(success=False, text=f"t{index}", in_flight=64)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(success=False, text="t63", in_flight=64)
    assert breaker.state is BreakerState.OPEN


def test_scattered_failures_that_retries_absorb_do_not_open_it() -> None:
    # A policy that tolerates runs (GUARDQ_BREAKER_FAILURES=20): the 5 of the default open on p=0.3 noise.
    tolerant = BreakerPolicy(consecutive_failures=20, window_s=10, min_calls=40)
    breaker, rng = CircuitBreaker(tolerant), random.Random(7)
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


def test_successes_outside_the_window_are_forgotten_too() -> None:
    clock = Clock()
    breaker = CircuitBreaker(FAST, clock=clock)
    for _ in range(1000):  # a busy minute long past: its successes must not dilute today's failure rate
        clock.now += 0.01
        breaker.record(success=True)
    clock.now += FAST.window_s + 1
    for index in range(FAST.min_calls - 1):
        breaker.record(success=index % 3 == 0)
    breaker.record(success=False)
    assert breaker.state is BreakerState.OPEN


def test_the_window_costs_the_same_memory_at_any_call_rate() -> None:
    """A window of one entry per call held every call of the last minute (35 MB at 5,000 calls/s)."""
    clock = Clock()
    breaker = CircuitBreaker(FAST, clock=clock)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):  # 2,000 calls/s for 50 s, all in the window
            clock.now += 0.0005
            breaker.record(success=True)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 100_000, f"{after - before} bytes held for 100,000 successes"
    assert breaker.state is BreakerState.CLOSED


def test_the_window_keeps_no_text_of_a_failed_call_alive() -> None:
    """A guard failing a third of the calls (below the failure rate) for a minute: the window remembers
    which texts failed, not the texts themselves."""
    clock = Clock()
    breaker = CircuitBreaker(FAST, clock=clock)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(3_000):
            clock.now += 0.01
            text = GuardRequest(f"{index:06d}" + "x" * 10_000)
            breaker.record(success=index % 3 != 0, error=None if index % 3 else TimeoutError(), text=text)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert breaker.state is BreakerState.CLOSED
    assert after - before < 1_000_000, f"{after - before} bytes held for 1,000 failed texts of 10 kB"


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
    for _ in range(BreakerPolicy().consecutive_failures):
        breaker.record(success=False)
    assert breaker.is_open
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1

    prober = asyncio.create_task(breaker.run_prober(probe))

    async def half_open() -> bool:
        return breaker.state is BreakerState.HALF_OPEN

    await wait_until(half_open, timeout_s=5, what="half-open")
    await breaker.admit()  # a trial call whose caller never reports

    async def probed_twice() -> bool:
        return calls >= 2

    await wait_until(probed_twice, timeout_s=5, what="a second probe after the silent trial")
    prober.cancel()


async def test_with_nothing_to_try_the_guard_a_good_probe_closes_it() -> None:
    breaker = CircuitBreaker(BreakerPolicy(cooldown_initial_s=0.01, trial_calls=2, half_open_timeout_s=0.2))
    for index in range(BreakerPolicy().consecutive_failures):
        breaker.record(success=False, text=index)

    async def probe() -> None:
        return None

    prober = asyncio.create_task(breaker.run_prober(probe))

    async def closed() -> bool:
        return breaker.state is BreakerState.CLOSED

    await wait_until(closed, timeout_s=5, what="the breaker to close with no trial caller")
    assert breaker.outage_s is None
    prober.cancel()


async def test_a_text_that_fails_its_trial_again_does_not_reopen_it() -> None:
    breaker = CircuitBreaker(FAST)
    for index in range(FAST.consecutive_failures):
        breaker.record(success=False, text=index)
    await _to_half_open(breaker)
    await breaker.admit()
    breaker.record(success=False, text="poison")  # the first failed trial: the guard, for all we know
    assert breaker.is_open
    await _to_half_open(breaker)
    await breaker.admit()
    breaker.record(success=False, text="poison")  # the same text again: its own fault
    assert breaker.state is BreakerState.HALF_OPEN
    await breaker.admit()  # its slot came back
    breaker.record(success=True, text="other")
    await breaker.admit()
    breaker.record(success=True, text="other 2")
    assert breaker.state is BreakerState.CLOSED


def test_settings_set_every_rule_of_the_breaker() -> None:
    env = {
        "GUARDQ_BREAKER_FAILURES": "7",
        "GUARDQ_BREAKER_WINDOW_S": "30",
        "GUARDQ_BREAKER_FAILURE_RATE": "0.25",
        "GUARDQ_BREAKER_OPEN_S": "120",
        "GUARDQ_OUTAGE_POLICY": "block",
        "GUARDQ_OUTAGE_AFTER_S": "45",
    }
    policy = BreakerPolicy.from_settings(Settings.load(env))
    assert (policy.consecutive_failures, policy.window_s, policy.min_calls, policy.failure_rate) == (
        7,
        30,
        14,
        0.25,
    )
    assert (policy.cooldown_initial_s, policy.cooldown_max_s, policy.fallback_after_s) == (0.5, 120, 45)
    defaults = BreakerPolicy.from_settings(Settings.load({}))
    assert (defaults.consecutive_failures, defaults.fallback_after_s) == (5, None)
    short = BreakerPolicy.from_settings(Settings.load({"GUARDQ_BREAKER_OPEN_S": "0.5"}))
    assert short.cooldown_initial_s == short.cooldown_max_s == 0.5


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GUARDQ_BREAKER_OPEN_S": "0.4"}, "GUARDQ_BREAKER_OPEN_S"),
        ({"GUARDQ_BREAKER_FAILURE_RATE": "0"}, "GUARDQ_BREAKER_FAILURE_RATE"),
        ({"GUARDQ_BREAKER_FAILURE_RATE": "1.5"}, "GUARDQ_BREAKER_FAILURE_RATE"),
        ({"GUARDQ_BREAKER_FAILURES": "0"}, "GUARDQ_BREAKER_FAILURES"),
        ({"GUARDQ_GUARD_BACKOFF": "4s,1s"}, "GUARDQ_GUARD_BACKOFF"),
        ({"GUARDQ_GUARD_BACKOFF": "1s"}, "GUARDQ_GUARD_BACKOFF"),
        ({"GUARDQ_GUARD_CONNECT_TIMEOUT_S": "0"}, "GUARDQ_GUARD_CONNECT_TIMEOUT_S"),
        ({"GUARDQ_OUTAGE_POLICY": "deny"}, "GUARDQ_OUTAGE_POLICY"),
        ({"GUARDQ_OUTAGE_AFTER_S": "-1"}, "GUARDQ_OUTAGE_AFTER_S"),
    ],
)
def test_a_bad_breaker_or_outage_setting_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load(env)
    assert str(caught.value).startswith(named)


def test_the_guard_backoff_is_read_in_seconds() -> None:
    assert Settings.load({}).guard_backoff_s == (1.0, 4.0)
    assert Settings.load({"GUARDQ_GUARD_BACKOFF": "250ms,2s"}).guard_backoff_s == (0.25, 2.0)


FALLBACK = BreakerPolicy(cooldown_initial_s=0.01, cooldown_max_s=0.05, trial_calls=1, fallback_after_s=0.2)


async def test_past_the_outage_deadline_waiting_callers_get_a_fallback_instead() -> None:
    breaker, events = CircuitBreaker(FALLBACK), list[str]()
    breaker.watch(lambda event, details: events.append(event))
    for _ in range(FALLBACK.consecutive_failures):
        breaker.record(success=False)
    waiting = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.1)
    assert not waiting.done() and not breaker.in_fallback  # before the deadline: wait, as with `wait`
    with pytest.raises(OutageFallback):
        await asyncio.wait_for(waiting, 2)
    assert breaker.in_fallback and events == ["open", "fallback"]
    with pytest.raises(OutageFallback):  # later callers get it at once
        await asyncio.wait_for(breaker.admit(), 0.05)
    await _to_half_open(breaker)
    breaker.record(success=True)  # the first successful (trial) call ends the outage
    assert not breaker.in_fallback and breaker.outage_s is None and events[-1] == "back"


async def test_a_call_that_succeeds_while_open_does_not_end_the_outage() -> None:
    breaker = CircuitBreaker(FALLBACK)
    for _ in range(FALLBACK.consecutive_failures):
        breaker.record(success=False)
    breaker.record(success=True)  # admitted before the circuit opened: says nothing about now
    assert breaker.outage_s is not None


async def _to_half_open(breaker: CircuitBreaker) -> None:
    """Let a probe that succeeds turn the breaker half-open."""

    async def probe() -> None:
        return None

    prober = asyncio.create_task(breaker.run_prober(probe))

    async def half_open() -> bool:
        return breaker.state is BreakerState.HALF_OPEN

    await wait_until(half_open, timeout_s=5, what="the breaker to turn half-open")
    prober.cancel()


async def test_a_failed_trial_call_does_not_restart_the_outage_clock() -> None:
    clock = Clock()
    breaker = CircuitBreaker(FALLBACK, clock=clock)
    for _ in range(FALLBACK.consecutive_failures):
        breaker.record(success=False)
    clock.now = 10.0
    breaker._half_open()
    breaker.record(success=False)  # the trial call failed: open again
    assert breaker.is_open and breaker.outage_s == 10.0


async def test_a_guard_down_at_start_up_is_an_outage_from_the_start() -> None:
    clock = Clock()
    breaker = CircuitBreaker(FALLBACK, clock=clock)
    breaker.outage_began("guard not reachable at start-up")
    clock.now = 5.0
    for _ in range(FALLBACK.consecutive_failures):
        breaker.record(success=False)
    assert breaker.outage_s == 5.0
    with pytest.raises(OutageFallback):
        await asyncio.wait_for(breaker.admit(), 1)


async def test_with_the_wait_policy_callers_wait_however_long_the_outage() -> None:
    breaker = CircuitBreaker(FAST)
    for _ in range(FAST.consecutive_failures):
        breaker.record(success=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(breaker.admit(), 0.3)
    assert not breaker.in_fallback


def test_the_failures_of_one_text_alone_never_open_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(FAST, clock=clock)
    for _ in range(100):  # a message the guard (or a gateway) always refuses, and nothing else calling
        breaker.record(success=False, text=("poison",))
        clock.now += 0.01
    assert breaker.state is BreakerState.CLOSED
    breaker.record(success=False, text=("another",))
    assert breaker.state is BreakerState.OPEN  # two texts failing: the guard, not a message


def test_a_run_spread_over_texts_opens_it_as_before() -> None:
    breaker = CircuitBreaker(FAST)
    for index in range(FAST.consecutive_failures):
        breaker.record(success=False, text=index)
    assert breaker.is_open
