"""ConcurrencyLimiter: a resizable FIFO semaphore that never over-admits and never leaks a slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from worker.processing.limiter import ConcurrencyLimiter
from worker.processing.retry import RetryPolicy


async def _until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Poll ``condition()`` with a deadline, yielding to the loop between checks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0)


async def _holder(limiter: ConcurrencyLimiter, release: asyncio.Event, entered: list[int], name: int) -> None:
    async with limiter.slot():
        entered.append(name)
        await release.wait()


async def test_fifty_concurrent_tasks_never_exceed_the_limit() -> None:
    limiter = ConcurrencyLimiter(5)
    in_flight = 0
    highest = 0

    async def work(number: int) -> None:
        nonlocal in_flight, highest
        async with limiter.slot():
            in_flight += 1
            highest = max(highest, in_flight)
            assert limiter.in_flight <= limiter.limit
            await asyncio.sleep(0.001 * (number % 3))
            in_flight -= 1

    await asyncio.gather(*(work(n) for n in range(50)))
    assert highest == 5
    assert limiter.peak == 5
    assert limiter.in_flight == 0
    assert limiter.waiting == 0


async def test_waiters_enter_in_arrival_order() -> None:
    limiter = ConcurrencyLimiter(1)
    release = asyncio.Event()
    entered: list[int] = []
    first = asyncio.create_task(_holder(limiter, release, entered, 0))
    await _until(lambda: entered == [0])

    order: list[int] = []

    async def waiter(number: int) -> None:
        async with limiter.slot():
            order.append(number)
            await asyncio.sleep(0)

    tasks = []
    for number in range(1, 11):
        tasks.append(asyncio.create_task(waiter(number)))
        await _until(lambda n=number: limiter.waiting == n)
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == list(range(1, 11))


async def test_newcomer_does_not_overtake_queued_waiters_when_a_slot_frees() -> None:
    limiter = ConcurrencyLimiter(1)
    release = asyncio.Event()
    entered: list[int] = []
    holder = asyncio.create_task(_holder(limiter, release, entered, 0))
    await _until(lambda: entered == [0])
    queued = asyncio.create_task(_holder(limiter, asyncio.Event(), entered, 1))
    await _until(lambda: limiter.waiting == 1)
    release.set()
    await holder
    newcomer = asyncio.create_task(_holder(limiter, asyncio.Event(), entered, 2))
    await _until(lambda: 1 in entered)
    await asyncio.sleep(0.01)
    assert entered == [0, 1]
    assert limiter.in_flight == 1
    for task in (queued, newcomer):
        task.cancel()
    await asyncio.gather(queued, newcomer, return_exceptions=True)
    assert limiter.in_flight == 0
    assert limiter.waiting == 0


async def test_raising_the_limit_lets_waiters_in_at_once() -> None:
    limiter = ConcurrencyLimiter(1)
    release = asyncio.Event()
    entered: list[int] = []
    tasks = [asyncio.create_task(_holder(limiter, release, entered, n)) for n in range(4)]
    await _until(lambda: limiter.in_flight == 1 and limiter.waiting == 3)
    limiter.set_limit(3)
    await _until(lambda: len(entered) == 3)
    assert limiter.in_flight == 3
    assert limiter.waiting == 1
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(entered) == [0, 1, 2, 3]


async def test_lowering_the_limit_never_interrupts_calls_in_flight() -> None:
    limiter = ConcurrencyLimiter(3)
    releases = [asyncio.Event() for _ in range(3)]
    entered: list[int] = []
    running = [asyncio.create_task(_holder(limiter, releases[n], entered, n)) for n in range(3)]
    await _until(lambda: limiter.in_flight == 3)
    limiter.set_limit(1)
    late = asyncio.create_task(_holder(limiter, asyncio.Event(), entered, 9))
    await asyncio.sleep(0.01)
    assert limiter.in_flight == 3
    assert not any(task.done() for task in running)
    # The late caller gets in only once in_flight has dropped below the new limit of 1.
    releases[0].set()
    releases[1].set()
    await asyncio.gather(running[0], running[1])
    await asyncio.sleep(0.01)
    assert 9 not in entered
    releases[2].set()
    await running[2]
    await _until(lambda: 9 in entered)
    assert limiter.in_flight == 1
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert limiter.in_flight == 0


async def test_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    limiter = ConcurrencyLimiter(1)
    release = asyncio.Event()
    entered: list[int] = []
    holder = asyncio.create_task(_holder(limiter, release, entered, 0))
    await _until(lambda: entered == [0])
    waiter = asyncio.create_task(_holder(limiter, asyncio.Event(), entered, 1))
    await _until(lambda: limiter.waiting == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting == 0
    release.set()
    await holder
    assert limiter.in_flight == 0
    async with limiter.slot():
        assert limiter.in_flight == 1
    assert entered == [0]


async def test_waiter_cancelled_just_as_its_slot_was_granted_hands_the_slot_on() -> None:
    limiter = ConcurrencyLimiter(1)
    release = asyncio.Event()
    entered: list[int] = []
    holder = asyncio.create_task(_holder(limiter, release, entered, 0))
    await _until(lambda: entered == [0])
    unlucky = asyncio.create_task(_holder(limiter, asyncio.Event(), entered, 1))
    await _until(lambda: limiter.waiting == 1)
    next_release = asyncio.Event()
    next_in_line = asyncio.create_task(_holder(limiter, next_release, entered, 2))
    await _until(lambda: limiter.waiting == 2)

    # Release the holder's slot synchronously: the grant resolves the unlucky waiter's future, and the
    # cancel lands before that waiter runs again.
    release.set()
    await _until(lambda: limiter.waiting == 1 and limiter.in_flight == 1 and holder.done())
    unlucky.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unlucky

    await _until(lambda: 2 in entered)
    assert 1 not in entered
    assert limiter.in_flight == 1
    next_release.set()
    await next_in_line
    assert limiter.in_flight == 0
    assert limiter.waiting == 0


async def test_grant_and_cancel_in_the_same_loop_step_do_not_leak_a_slot() -> None:
    limiter = ConcurrencyLimiter(1)
    entered: list[int] = []
    cm = limiter.slot()
    await cm.__aenter__()
    unlucky = asyncio.create_task(_holder(limiter, asyncio.Event(), entered, 1))
    await _until(lambda: limiter.waiting == 1)
    await cm.__aexit__(None, None, None)  # grants the slot to the waiter's future
    unlucky.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    assert entered == []
    assert limiter.in_flight == 0
    assert limiter.waiting == 0


async def test_slot_is_released_when_the_body_raises() -> None:
    limiter = ConcurrencyLimiter(1)
    with pytest.raises(RuntimeError):
        async with limiter.slot():
            raise RuntimeError("guard exploded")
    assert limiter.in_flight == 0
    async with limiter.slot():
        assert limiter.in_flight == 1


async def test_peak_reports_the_highest_in_flight_until_reset() -> None:
    limiter = ConcurrencyLimiter(4)
    release = asyncio.Event()
    entered: list[int] = []
    tasks = [asyncio.create_task(_holder(limiter, release, entered, n)) for n in range(3)]
    await _until(lambda: limiter.in_flight == 3)
    assert limiter.peak == 3
    release.set()
    await asyncio.gather(*tasks)
    assert limiter.peak == 3
    limiter.reset_peak()
    assert limiter.peak == 0
    async with limiter.slot():
        assert limiter.peak == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_limit_below_one_is_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimiter(bad)
    with pytest.raises(ValueError):
        ConcurrencyLimiter(1).set_limit(bad)


async def test_close_refuses_waiting_and_later_callers_and_lets_calls_in_flight_finish() -> None:
    limiter = ConcurrencyLimiter(2)
    release = asyncio.Event()
    entered: list[int] = []
    holders = [asyncio.create_task(_holder(limiter, release, entered, n)) for n in range(2)]
    waiters = [asyncio.create_task(_holder(limiter, release, entered, n)) for n in range(2, 5)]
    await _until(lambda: limiter.in_flight == 2 and limiter.waiting == 3)
    limiter.close()
    await asyncio.wait(waiters, timeout=2)
    # A refused call ends its task as cancelled: the record is left uncommitted, not failed.
    assert all(task.cancelled() for task in waiters)
    late = asyncio.create_task(_holder(limiter, release, entered, 9))
    await asyncio.wait([late], timeout=2)
    assert late.cancelled()
    assert entered == [0, 1] and limiter.in_flight == 2 and limiter.waiting == 0
    release.set()
    await asyncio.gather(*holders)
    assert limiter.in_flight == 0 and limiter.closed


async def test_a_refused_slot_passes_through_the_retry_policy_as_a_cancellation() -> None:
    limiter = ConcurrencyLimiter(1)
    limiter.close()
    calls = 0

    async def attempt(number: int) -> str:
        nonlocal calls
        async with limiter.slot():
            calls += 1
            return "verdict"

    task = asyncio.create_task(RetryPolicy(max_attempts=3, initial_backoff_s=0.001).call(attempt))
    await asyncio.wait([task], timeout=2)
    assert task.cancelled() and calls == 0
