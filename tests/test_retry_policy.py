"""RetryPolicy.call: bounded by attempts and total time, only transient errors retried, Retry-After honoured."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from worker.core.errors import (
    GuardBadReply,
    GuardConfigError,
    GuardContextOverflow,
    GuardError,
    GuardRejected,
    GuardTimeout,
    GuardUnavailable,
)
from worker.processing.retry import GuardCallFailed, RetryPolicy

# Tiny backoffs: max_backoff_s also caps the jitter, so every wait here is at most 10 ms.
FAST = RetryPolicy(max_attempts=4, max_total_s=5.0, initial_backoff_s=0.001, max_backoff_s=0.01)


def _failing_then(
    errors: list[GuardError], result: str = "verdict"
) -> tuple[Callable[[int], Awaitable[str]], list[int]]:
    """An attempt function that raises ``errors`` in turn, then returns ``result``; records attempt numbers."""
    calls: list[int] = []

    async def attempt(number: int) -> str:
        calls.append(number)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return attempt, calls


async def test_first_attempt_success_reports_one_attempt() -> None:
    attempt, calls = _failing_then([])
    assert await FAST.call(attempt) == ("verdict", 1)
    assert calls == [1]


async def test_success_on_the_third_attempt_reports_three_attempts() -> None:
    attempt, calls = _failing_then([GuardUnavailable("HTTP 503", status=503), GuardTimeout("timed out")])
    assert await FAST.call(attempt) == ("verdict", 3)
    assert calls == [1, 2, 3]


@pytest.mark.parametrize(
    "error",
    [
        GuardRejected("HTTP 422", status=422),
        GuardContextOverflow("maximum context length", status=400),
        GuardConfigError("HTTP 401", status=401),
        GuardError("HTTP 418", status=418),
    ],
    ids=["rejected", "context-overflow", "config", "unclassified"],
)
async def test_non_transient_error_fails_after_one_attempt(error: GuardError) -> None:
    attempt, calls = _failing_then([error])
    with pytest.raises(GuardCallFailed) as caught:
        await FAST.call(attempt)
    assert calls == [1]
    assert caught.value.attempts == 1
    assert caught.value.error is error
    assert not caught.value.exhausted


async def test_a_bad_reply_is_tried_once_more_and_never_sent_through_the_retry_topics() -> None:
    errors = [GuardBadReply("no Safety line") for _ in range(10)]
    attempt, calls = _failing_then(errors)
    with pytest.raises(GuardCallFailed) as caught:
        await FAST.call(attempt)
    assert calls == [1, 2]
    assert caught.value.attempts == 2
    assert not caught.value.exhausted  # dead-lettered as guard_bad_reply, not rescheduled
    assert caught.value.error is errors[1]


async def test_a_bad_reply_after_a_503_still_gets_its_second_try() -> None:
    attempt, calls = _failing_then(
        [GuardUnavailable("HTTP 503", status=503), GuardBadReply("no Safety line")]
    )
    assert await FAST.call(attempt) == ("verdict", 3)
    assert calls == [1, 2, 3]


async def test_two_bad_replies_around_a_503_stop_at_the_second() -> None:
    errors: list[GuardError] = [
        GuardBadReply("a"),
        GuardUnavailable("HTTP 503", status=503),
        GuardBadReply("b"),
    ]
    attempt, calls = _failing_then(errors)
    with pytest.raises(GuardCallFailed) as caught:
        await FAST.call(attempt)
    assert calls == [1, 2, 3] and caught.value.error is errors[2]


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: GuardUnavailable("HTTP 503", status=503),
        lambda: GuardTimeout("timed out"),
    ],
    ids=["unavailable", "timeout"],
)
async def test_transient_errors_exhaust_max_attempts(make_error: Callable[[], GuardError]) -> None:
    errors = [make_error() for _ in range(10)]
    attempt, calls = _failing_then(errors)
    with pytest.raises(GuardCallFailed) as caught:
        await FAST.call(attempt)
    assert calls == [1, 2, 3, 4]
    assert caught.value.attempts == FAST.max_attempts
    assert caught.value.exhausted
    assert caught.value.error is errors[3]
    assert "after 4 attempt(s)" in str(caught.value)


async def test_transient_then_permanent_stops_at_the_permanent_error() -> None:
    attempt, calls = _failing_then([GuardTimeout("timed out"), GuardRejected("HTTP 413", status=413)])
    with pytest.raises(GuardCallFailed) as caught:
        await FAST.call(attempt)
    assert calls == [1, 2]
    assert isinstance(caught.value.error, GuardRejected)
    assert not caught.value.exhausted


async def test_total_time_budget_stops_retrying_before_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=1000, max_total_s=0.15, initial_backoff_s=0.001, max_backoff_s=0.01)
    attempt, calls = _failing_then([GuardUnavailable("HTTP 503", status=503)] * 1000)
    started = time.monotonic()
    with pytest.raises(GuardCallFailed) as caught:
        await policy.call(attempt)
    elapsed = time.monotonic() - started
    assert len(calls) == caught.value.attempts
    assert 1 < caught.value.attempts < 1000
    assert caught.value.exhausted
    # It gives up rather than start a wait that would end past the budget (1000 attempts would take
    # seconds); the upper bound leaves room for a loaded machine's scheduling.
    assert 0.12 <= elapsed <= 0.6


async def test_retry_after_is_honoured_as_a_minimum_wait() -> None:
    gaps: list[float] = []
    last = 0.0

    async def attempt(number: int) -> str:
        nonlocal last
        now = time.monotonic()
        if number > 1:
            gaps.append(now - last)
        last = now
        if number == 1:
            raise GuardUnavailable("HTTP 429", status=429, retry_after_s=0.3)
        return "verdict"

    assert await FAST.call(attempt) == ("verdict", 2)
    assert gaps[0] >= 0.3
    assert gaps[0] < 1.0


async def test_backoff_without_retry_after_stays_within_max_backoff() -> None:
    policy = RetryPolicy(max_attempts=6, max_total_s=5.0, initial_backoff_s=0.001, max_backoff_s=0.02)
    attempt, calls = _failing_then([GuardUnavailable("HTTP 503")] * 5)
    started = time.monotonic()
    assert await policy.call(attempt) == ("verdict", 6)
    assert calls == [1, 2, 3, 4, 5, 6]
    # Five waits of at most 20 ms each, plus generous scheduling slack.
    assert time.monotonic() - started < 1.0


async def test_retry_after_beyond_the_total_budget_gives_up_instead_of_sleeping_past_it() -> None:
    # A Retry-After longer than what is left of max_total_s is not slept (a server saying "Retry-After:
    # 3600" would park the message for an hour): the policy stops before a wait that ends past the budget.
    policy = RetryPolicy(max_attempts=3, max_total_s=0.1, initial_backoff_s=0.001, max_backoff_s=0.01)
    attempt, _ = _failing_then([GuardUnavailable("HTTP 429", status=429, retry_after_s=5.0)] * 3)
    started = time.monotonic()
    with pytest.raises(GuardCallFailed) as caught:
        await policy.call(attempt)
    assert caught.value.exhausted
    assert time.monotonic() - started < 2.0  # far below the 5 s Retry-After
