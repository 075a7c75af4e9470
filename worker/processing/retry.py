"""The one retry policy for guard calls, built on tenacity: bounded by attempts and by total time,
exponential backoff with jitter, only for transient errors, honouring a server's Retry-After.

Nothing else in guardq retries guard calls, so the attempt counts reported in verdicts and dead-letter
headers are exact. ``until_available`` is the other kind of retry: a write that must not be lost (a
verdict, a chunk verdict, a retry hop, a dead letter) waits out a Redis or Kafka outage in place, so the
guard calls already paid for are not made again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from worker.core.backoff import Backoff
from worker.core.backoff import until_available as retry_infrastructure
from worker.core.errors import GuardError, is_transient

T = TypeVar("T")
log = logging.getLogger(__name__)

AVAILABLE_BACKOFF_INITIAL_S = 0.2
AVAILABLE_BACKOFF_MAX_S = 5.0


async def until_available(operation: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run ``operation`` until it succeeds, waiting out infrastructure errors (Redis, Kafka unavailable)
    with growing, jittered pauses (``core.backoff``); any other error propagates, and so does a
    cancellation (a drain deadline)."""

    def report(exc: Exception, delay_s: float) -> None:
        log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay_s)

    backoff = Backoff(AVAILABLE_BACKOFF_INITIAL_S, AVAILABLE_BACKOFF_MAX_S)
    return await retry_infrastructure(operation, backoff=backoff, on_retry=report)


class GuardCallFailed(Exception):
    """A guard call that failed for good: the last error and how many attempts were made."""

    def __init__(self, error: GuardError, attempts: int) -> None:
        super().__init__(f"{type(error).__name__} after {attempts} attempt(s): {error}")
        self.error = error
        self.attempts = attempts

    @property
    def exhausted(self) -> bool:
        """True when the error was transient and the retry budget ran out: the message may try again later
        through the retry topics (an error that declares ``reschedule=False`` never does)."""
        return self.error.retriable and self.error.reschedule


class _stop_at_error_cap(stop_base):
    """Stop once the last error's kind has failed its own ``max_attempts`` times (a bad guard reply is
    tried twice: a 503 before it does not use up its second try)."""

    def __init__(self, failures: Counter[type[BaseException]]) -> None:
        self._failures = failures

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        cap = getattr(error, "max_attempts", None)
        return cap is not None and error is not None and self._failures[type(error)] >= cap


class Backoffs:
    """How many guard calls are waiting out a retry's backoff right now: they hold no guard slot, so the
    fetch loop buffers that many more records (``FetchLoop``'s ``waiting``) and the slots stay busy."""

    def __init__(self) -> None:
        self.waiting = 0

    async def sleep(self, seconds: float) -> None:
        self.waiting += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.waiting -= 1


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a guard call is retried in process."""

    max_attempts: int = 3
    max_total_s: float = 60.0
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(
            multiplier=self.initial_backoff_s, max=self.max_backoff_s, jitter=0.5
        )
        delay = backoff(state)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, GuardError) and error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        return delay

    async def call(
        self,
        attempt: Callable[[int], Awaitable[T]],
        *,
        hold: Callable[[], bool] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> tuple[T, int]:
        """Run ``attempt(n)`` (n = 1, 2, ...) until it succeeds; return its result and the attempts made.

        When attempts or time run out, or at once for an error that is not transient, the last
        ``GuardError`` is raised wrapped in ``GuardCallFailed`` with the number of attempts made.
        While ``hold()`` is true (the circuit is open) no further attempt is made: the caller waits for
        the guard instead of spending attempts on it. ``sleep`` waits out each backoff.
        """

        def should_retry(exc: BaseException) -> bool:
            return is_transient(exc) and not (hold is not None and hold())

        # The first attempt runs without tenacity (most calls need no other); a failure hands it to
        # tenacity as its first outcome, with the time it took counted against the budget.
        started = time.monotonic()
        try:
            return await attempt(1), 1
        except GuardError as exc:
            first: GuardError = exc
        spent_s = time.monotonic() - started
        failures: Counter[type[BaseException]] = Counter({type(first): 1})
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts)
            | stop_before_delay(max(self.max_total_s - spent_s, 0.0))
            | _stop_at_error_cap(failures),
            wait=self._wait,
            sleep=sleep,
            retry=retry_if_exception(should_retry),
            reraise=True,
        )
        made = 0
        try:
            async for trial in retrying:
                with trial:
                    made += 1
                    if made == 1:
                        raise first
                    try:
                        return await attempt(made), made
                    except GuardError as exc:
                        failures[type(exc)] += 1
                        raise
        except GuardError as exc:
            raise GuardCallFailed(exc, made) from exc
        raise AssertionError("tenacity ended without a result or an error")  # pragma: no cover
