"""The circuit breaker of one guard endpoint: closed (green), open (red), half-open (yellow).

It opens on a run of consecutive transient failures, or on a failure rate over a sliding window once
that window has a minimum call volume, so scattered failures that retries absorb do not open it. While it
is open, nothing is sent: callers wait in ``admit`` (their attempts are not spent) and the consumer
pauses. A prober owned by the worker calls the guard's models endpoint after a short cool-down that grows
while the guard stays down; when the probe succeeds the breaker turns half-open and lets a few trial calls
through, and closes when they succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _raise_if_fatal(exc: Exception) -> None:
    """A misconfigured guard (wrong model, rejected key: errors marked ``fatal``) will not come back by
    waiting: raise it, so the worker stops with its one clear line instead of staying red for ever."""
    if getattr(exc, "fatal", False):
        raise exc


class BreakerState(enum.Enum):
    CLOSED = "green"
    HALF_OPEN = "yellow"
    OPEN = "red"


@dataclass(frozen=True)
class BreakerPolicy:
    """When the breaker opens and how it probes."""

    consecutive_failures: int = 20
    window_s: float = 10.0
    min_calls: int = 40
    failure_rate: float = 0.5
    cooldown_initial_s: float = 0.25
    cooldown_max_s: float = 1.5
    trial_calls: int = 3
    half_open_timeout_s: float = 60.0


class CircuitBreaker:
    """Counts guard outcomes and gates calls; ``run_prober`` must run while the worker does."""

    def __init__(
        self, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._window_failures = 0  # kept with the window, so each call costs O(1)
        self._trials_left = 0
        self._trial_successes = 0
        self._cooldown_s = self._policy.cooldown_initial_s
        self._usable = asyncio.Event()
        self._usable.set()
        self._opened = asyncio.Event()  # set while open: wakes the prober
        self._settled = asyncio.Event()  # cleared while half-open: set when trials open or close it
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is BreakerState.OPEN

    async def admit(self) -> None:
        """Wait until a call may be sent: closed, or a half-open trial slot is free."""
        while True:
            await self._usable.wait()
            if self._state is BreakerState.CLOSED:
                return
            if self._state is BreakerState.HALF_OPEN and self._trials_left > 0:
                self._trials_left -= 1
                if self._trials_left == 0:
                    self._usable.clear()
                return

    def record(self, *, success: bool) -> None:
        """Count the outcome of one call (a transient failure, or a success)."""
        now = self._clock()
        self._window.append((now, success))
        self._window_failures += not success
        while self._window and self._window[0][0] < now - self._policy.window_s:
            _, ok = self._window.popleft()
            self._window_failures -= not ok
        self._consecutive = 0 if success else self._consecutive + 1
        if self._state is BreakerState.HALF_OPEN:
            self._record_trial(success)
        elif self._state is BreakerState.CLOSED and not success and self._should_open():
            self._open("failures")

    def _record_trial(self, success: bool) -> None:
        if not success:
            self._cooldown_s = min(self._cooldown_s * 2, self._policy.cooldown_max_s)
            self._open("a trial call failed")
            return
        self._trial_successes += 1
        if self._trial_successes >= self._policy.trial_calls:
            self._close()

    def _should_open(self) -> bool:
        if self._consecutive >= self._policy.consecutive_failures:
            return True
        calls = len(self._window)
        return calls >= self._policy.min_calls and self._window_failures / calls >= self._policy.failure_rate

    def _open(self, why: str) -> None:
        if self._state is not BreakerState.OPEN:
            self.opened_count += 1
            log.warning("guard circuit open (red): %s; pausing consumption until the guard answers", why)
        self._state = BreakerState.OPEN
        self._usable.clear()
        self._opened.set()
        self._settled.set()

    def _half_open(self) -> None:
        self._state = BreakerState.HALF_OPEN
        self._trials_left = self._policy.trial_calls
        self._trial_successes = 0
        self._opened.clear()
        self._settled.clear()
        self._usable.set()
        log.info("guard circuit half-open (yellow): %d trial call(s)", self._policy.trial_calls)

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window.clear()
        self._window_failures = 0
        self._cooldown_s = self._policy.cooldown_initial_s
        self._usable.set()
        self._opened.clear()
        self._settled.set()
        log.info("guard circuit closed (green)")

    async def run_prober(self, probe: Callable[[], Awaitable[object]]) -> None:
        """While open, call ``probe`` after each cool-down; when it returns, turn half-open. Runs until cancelled."""
        while True:
            await self._opened.wait()
            await asyncio.sleep(self._cooldown_s)
            if self._state is not BreakerState.OPEN:
                continue
            try:
                await probe()
            except Exception as exc:  # any probe failure means: still down, unless it is misconfiguration
                _raise_if_fatal(exc)
                self._cooldown_s = min(self._cooldown_s * 2, self._policy.cooldown_max_s)
                log.debug("guard probe failed: %s", exc)
                continue
            self._half_open()
            await self._await_trials()

    async def run_heartbeat(
        self, check: Callable[[], Awaitable[object]], *, period_s: float, failures_to_open: int = 3
    ) -> None:
        """While closed, call ``check`` (the guard's models endpoint) every ``period_s``; ``failures_to_open``
        failures in a row open the circuit (and so flip readiness). An open circuit is the prober's: its
        first successful probe turns it half-open, and the trial calls close it. Runs until cancelled."""
        failed = 0
        while True:
            await asyncio.sleep(period_s)
            if self._state is not BreakerState.CLOSED:
                failed = 0
                continue
            try:
                await check()
            except Exception as exc:  # any failure of the heartbeat counts: the guard is not answering
                _raise_if_fatal(exc)
                failed += 1
                log.warning("guard heartbeat failed (%d in a row): %s", failed, exc)
                if failed >= failures_to_open:
                    self._open(f"{failed} heartbeats failed in a row")
                    failed = 0
                continue
            failed = 0

    async def _await_trials(self) -> None:
        # Trial calls that never report (their callers were cancelled) must not leave it half-open forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(
                self._policy.half_open_timeout_s
            ):  # keeps a cancellation, unlike wait_for
                await self._settled.wait()
        if self._state is BreakerState.HALF_OPEN:
            self._open("trial calls did not finish in time")
