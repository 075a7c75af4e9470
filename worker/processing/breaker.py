"""The circuit breaker of one guard endpoint: closed (green), open (red), half-open (yellow).

It opens on a run of consecutive transient failures, or on a failure rate over a sliding window once
that window has a minimum call volume, so scattered failures that retries absorb do not open it. While it
is open, nothing is sent: callers wait in ``admit`` (their attempts are not spent) and the consumer
pauses. A prober owned by the worker calls the guard's models endpoint after a short cool-down that grows
while the guard stays down; when the probe succeeds the breaker turns half-open and lets a few trial calls
through, and closes when they succeed.

An outage begins when the breaker first opens (or when the guard is down at start-up, ``outage_began``)
and ends with the first successful call; failed trial calls do not restart its clock. With a fallback
policy (GUARDQ_OUTAGE_POLICY other than ``wait``), a caller waiting in ``admit`` once the outage has
lasted GUARDQ_OUTAGE_AFTER_S gets ``OutageFallback`` instead of waiting on: the pipeline gives its message
a provisional verdict and parks it. ``watch`` tells a listener (the alert webhook) of each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.core.errors import GuardError
from worker.processing.callwindow import CallWindow

if TYPE_CHECKING:
    from worker.config.settings import Settings

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
    """When the breaker opens, how it probes, and when a fallback begins."""

    consecutive_failures: int = 5
    window_s: float = 60.0
    min_calls: int = 10
    failure_rate: float = 0.5
    cooldown_initial_s: float = 0.5
    cooldown_max_s: float = 30.0
    trial_calls: int = 3
    half_open_timeout_s: float = 60.0
    fallback_after_s: float | None = None  # None: wait out every outage (GUARDQ_OUTAGE_POLICY=wait)

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerPolicy:
        """GUARDQ_BREAKER_*: the rate rule needs twice the consecutive-failure count of calls in its window;
        probes start at 0.5 s (or GUARDQ_BREAKER_OPEN_S if shorter) and double up to GUARDQ_BREAKER_OPEN_S."""
        return cls(
            consecutive_failures=settings.breaker_failures,
            window_s=settings.breaker_window_s,
            min_calls=2 * settings.breaker_failures,
            failure_rate=settings.breaker_failure_rate,
            cooldown_initial_s=min(0.5, settings.breaker_open_s),
            cooldown_max_s=settings.breaker_open_s,
            fallback_after_s=None if settings.outage_policy == "wait" else settings.outage_after_s,
        )


class OutageFallback(GuardError):
    """No guard call was made: the outage outlasted GUARDQ_OUTAGE_AFTER_S and a fallback policy is set."""

    guard_down = True


Listener = Callable[[str, dict[str, Any]], None]


class CircuitBreaker:
    """Counts guard outcomes and gates calls; ``run_prober`` must run while the worker does."""

    def __init__(
        self, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._run_needed = self._policy.consecutive_failures  # the length of run that opens it (``record``)
        self._in_flight = 1  # calls in flight as the last outcome came (``record``)
        self._run_texts: set[object] = set()  # the texts the current run of failures was for
        self._trial_failed: set[object] = set()  # texts whose trial call failed in this outage
        self._window = CallWindow(self._policy.window_s)
        self._trials_left = 0
        self._trial_successes = 0
        self._cooldown_s = self._policy.cooldown_initial_s
        self._opened = asyncio.Event()  # set while open: wakes the prober
        self._settled = asyncio.Event()  # cleared while half-open: set when trials open or close it
        self.opened_count = 0
        self._outage_since: float | None = None  # monotonic clock
        self._fallback = asyncio.Event()  # set while a fallback is under way
        self._fallback_timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()  # set (and replaced) on every change ``admit`` waits for
        self._listeners: list[Listener] = []
        self.last_reason = ""

    def watch(self, listener: Listener) -> None:
        """Call ``listener(event, details)`` on ``open``, ``fallback`` and ``back`` (the outage ended)."""
        self._listeners.append(listener)

    def _tell(self, event: str, **details: Any) -> None:
        for listener in self._listeners:
            try:
                listener(event, details)
            except Exception:  # a listener's bug must not break the breaker
                log.exception("breaker listener failed on %s", event)

    @property
    def outage_s(self) -> float | None:
        """How long the current outage has lasted (None: no outage)."""
        return None if self._outage_since is None else self._clock() - self._outage_since

    @property
    def in_fallback(self) -> bool:
        """True while provisional verdicts are given (a fallback policy, and an outage past its deadline)."""
        return self._fallback.is_set()

    def outage_began(self, why: str) -> None:
        """An outage from now, before the breaker opens (it opens on the first failures)."""
        if self._outage_since is None:
            self._outage_since = self._clock()
            self.last_reason = why
            self._arm_fallback()

    def open_now(self, why: str) -> None:
        """Open at once (the guard is not usable at start-up): the prober takes it from here."""
        self._open(why)

    def _arm_fallback(self) -> None:
        after = self._policy.fallback_after_s
        if after is None or self._fallback_timer is not None or self._fallback.is_set():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        remaining = max(0.0, after - (self.outage_s or 0.0))
        self._fallback_timer = loop.call_later(remaining, self._begin_fallback)

    def _begin_fallback(self) -> None:
        self._fallback_timer = None
        if self._outage_since is None or (self._state is BreakerState.CLOSED and self._consecutive == 0):
            return
        self._fallback.set()
        self._pulse()
        log.warning(
            "guard outage for %.0f s: giving provisional verdicts and parking messages until it is back",
            self.outage_s or 0.0,
        )
        self._tell("fallback", since_s=round(self.outage_s or 0.0, 1), reason=self.last_reason)

    def _outage_over(self) -> None:
        if self._outage_since is None:
            return
        lasted = self.outage_s or 0.0
        self._outage_since = None
        self._trial_failed.clear()
        if self._fallback_timer is not None:
            self._fallback_timer.cancel()
            self._fallback_timer = None
        was_fallback = self._fallback.is_set()
        self._fallback.clear()
        log.info("guard is back after an outage of %.1f s", lasted)
        self._tell("back", outage_s=round(lasted, 1), fallback=was_fallback)

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is BreakerState.OPEN

    async def admit(self) -> None:
        """Wait until a call may be sent: closed, or a half-open trial slot is free. While open in a
        fallback (see the module docstring), raise ``OutageFallback`` instead of waiting."""
        while True:
            if self._state is BreakerState.CLOSED:
                return
            if self._state is BreakerState.HALF_OPEN and self._trials_left > 0:
                self._trials_left -= 1
                return
            if self._state is BreakerState.OPEN and self._fallback.is_set():
                raise OutageFallback("the guard is down and the outage outlasted GUARDQ_OUTAGE_AFTER_S")
            await self._changed.wait()  # a state change, or the fallback beginning

    def _pulse(self) -> None:
        """Wake everyone waiting in ``admit`` to look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def record(
        self, *, success: bool, error: BaseException | None = None, text: object = None, in_flight: int = 1
    ) -> None:
        """Count the outcome of one call (a transient failure, or a success); ``error`` says why it
        failed (the reason shown when this opens the circuit), ``text`` what was sent (hashable): the
        failures of one text alone never open the circuit, so one message the guard (or a gateway) always
        refuses cannot pause the worker; it goes through the retry topics to a dead letter instead.

        ``in_flight``: the calls in flight as this one ended, itself included. A 503 or a reset comes back
        at once while a verdict takes the model's time, so with many calls in flight the failures among
        them arrive first, in a row, ahead of the verdicts of the same calls. So a run of failures opens
        the circuit once it is as long as the calls in flight when it began (and at least
        GUARDQ_BREAKER_FAILURES), and the failure rate counts once the window holds as many calls as are
        in flight (and at least its minimum): a guard that is down fails every one of them."""
        now = self._clock()
        self._in_flight = in_flight
        # A failure's text: unnamed, every call its own; named, known by its hash, so the window never holds
        # a text alive (a minute of failures of texts up to GUARDQ_MAX_TEXT_CHARS each).
        if not success:
            text = object() if text is None else hash(text)
        if success and self._state is BreakerState.CLOSED:
            # The outage ends when the circuit closes (trial calls succeeded) or with a success while
            # closed (a guard down at start-up, found working): a stray success while open or half-open
            # says nothing about the guard now.
            self._outage_over()
        self._window.add(now, failed_text=None if success else text)
        if success:
            self._consecutive = 0
            self._run_texts.clear()
        else:
            if self._consecutive == 0:
                self._run_needed = max(self._policy.consecutive_failures, in_flight)
            self._consecutive += 1
            self._run_texts.add(text)
        if self._state is BreakerState.HALF_OPEN:
            self._record_trial(success, text)
        elif self._state is BreakerState.CLOSED and not success and self._should_open():
            self._open(
                f"guard calls failing, the last: {error}" if error is not None else "guard calls failing"
            )

    def _record_trial(self, success: bool, text: object) -> None:
        if not success and (self._trial_successes > 0 or text in self._trial_failed):
            # Another trial succeeded, or this text already failed a trial in this outage: the message,
            # not the guard. Its slot goes back; its own retries take it to the retry topics.
            self._trials_left += 1
            self._pulse()
            return
        if not success:
            self._trial_failed.add(text)
        if not success:
            self._cooldown_s = min(self._cooldown_s * 2, self._policy.cooldown_max_s)
            self._open("a trial call failed")
            return
        self._trial_successes += 1
        if self._trial_successes >= self._policy.trial_calls:
            self._close()

    def _should_open(self) -> bool:
        if self._consecutive >= self._run_needed and len(self._run_texts) > 1:
            return True
        calls = self._window.calls
        return (
            calls >= max(self._policy.min_calls, self._in_flight)
            and self._window.failures / calls >= self._policy.failure_rate
            and self._window.failing_texts > 1
        )

    def _open(self, why: str) -> None:
        if self._state is not BreakerState.OPEN:
            self.opened_count += 1
            log.warning("guard circuit open (red): %s; pausing consumption until the guard answers", why)
            self.last_reason = why
            self._tell("open", reason=why)
        if self._outage_since is None:  # a failed trial call does not restart the outage's clock
            self._outage_since = self._clock()
        self._arm_fallback()
        self._state = BreakerState.OPEN
        self._opened.set()
        self._settled.set()
        self._pulse()

    def _half_open(self) -> None:
        self._state = BreakerState.HALF_OPEN
        self._trials_left = self._policy.trial_calls
        self._trial_successes = 0
        self._consecutive = 0  # the trials judge the guard afresh: failures before the open do not count
        self._run_texts.clear()
        self._opened.clear()
        self._settled.clear()
        self._pulse()
        log.info("guard circuit half-open (yellow): %d trial call(s)", self._policy.trial_calls)

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._run_texts.clear()
        self._window.clear()
        self._cooldown_s = self._policy.cooldown_initial_s
        self._opened.clear()
        self._settled.set()
        self._pulse()
        log.info("guard circuit closed (green)")
        self._outage_over()

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
                    self._open(f"{failed} heartbeats failed in a row, the last: {exc}")
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
        if self._state is not BreakerState.HALF_OPEN:
            return
        if self._trials_left == self._policy.trial_calls:
            # The probe succeeded and nothing came to try the guard (no message waiting): closed.
            self._close()
        else:
            self._open("trial calls did not finish in time")
