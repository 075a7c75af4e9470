"""GUARDQ_CONCURRENCY=auto: the cap on guard calls follows what the guard can serve.

vLLM queues without limit, so a cap above what the guard serves at once only adds queueing: latency,
then timeouts and retries. The controller compares the median latency of each window of calls (the
median: a pause of the worker's own event loop stretches a few calls, not the guard) with the guard's
no-load latency: while it stays within ``tolerance`` times the no-load latency the guard is not queueing
and the cap grows (by a tenth, at least one slot) if the window used at least half of it (a cap nobody
reaches proves nothing and is left alone); above it the cap shrinks half of the way the latency ratio
asks (never below half). Until the guard first queues or refuses (a slow start), a window is one round
of calls rather than two and a step is at least two slots: a worker starting at 4 reaches a guard that
serves 16 in about 6 rounds, where it took 22. A 429 or a 503 shrinks it at once, to 0.85 of itself (a
timeout: 0.7), once per window, and remembers where that happened: from there on the cap grows one slot
per window past nine tenths of it (a guard that refuses instead of queueing shows no latency to steer
by).

The no-load latency is the lowest window median seen, from the first window on (at the minimum cap: a
worker does not spend its first rounds on a probe); every ``probe_every_s`` the cap drops to its
minimum for one window to measure it afresh (a guard that got slower for good is learned that way, and a
queue the controller itself built cannot pass for the guard's speed). Samples of calls that started
before the probe do not count in it. Probes fall on multiples of ``probe_every_s`` of the wall clock, so
every worker of a fleet probes at the same moment: together at their minimum they let the guard's queue
drain (while fleet size times minimum stays within what the guard serves at once), and none mistakes the
others' queue for the guard's speed. Below 10 ms the no-load latency counts as 10 ms: latency that
short is mostly the worker's own event loop, not the guard. Decisions go to
``ConcurrencyLimiter.set_limit``; calls in flight are never interrupted.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable

from worker.processing.limiter import ConcurrencyLimiter

log = logging.getLogger(__name__)

GROWTH = 0.1
# Until the guard first queues or refuses, a window is one round of calls (at least this many), and the
# cap climbs by at least this many slots a window.
SLOW_START_WINDOW = 4
SLOW_START_STEP = 2.0
BACKOFF = 0.85  # after a refusal (429, 503): the guard said exactly "too many"
TIMEOUT_BACKOFF = 0.7  # after a timeout: the queue is already far too long
MIN_WINDOW = 32
PROBE_WINDOW = 16  # calls at the minimum cap: at 4 in flight, four rounds of the guard
# Below this, latency is the worker's own event loop more than the guard: a busy loop stretches every call
# by milliseconds, which must not read as the guard queueing (an instant guard would be held to a few slots).
NOLOAD_FLOOR_S = 0.01
LOGGED_CHANGE = 0.25  # a change of the cap by a quarter or more since the last logged value is logged


class AdaptiveLimit:
    """Resizes ``limiter`` between ``minimum`` and ``maximum`` from the latency of guard calls."""

    def __init__(
        self,
        limiter: ConcurrencyLimiter,
        *,
        minimum: int,
        maximum: int,
        tolerance: float = 1.3,
        probe_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self._limiter = limiter
        self._minimum = minimum
        self._maximum = maximum
        self._tolerance = tolerance
        self._probe_every_s = probe_every_s
        self._clock = clock
        self._wall = wall
        self._limit = float(minimum)
        self._logged = minimum
        self.noload_s: float | None = None
        self._samples: list[float] = []  # latencies of the current window
        self._backed_off = False
        self._busy = False
        self._cautious_above = float(maximum)  # nine tenths of the cap at the last overload
        self._slow_start = True  # one-round windows until the guard first queues or refuses
        self._probe_since: float | None = None
        self._resume_at = minimum
        self._next_probe = self._aligned_probe_time()
        limiter.set_limit(minimum)

    @property
    def limit(self) -> int:
        return self._limiter.limit

    def record(self, latency_s: float, *, started: float, overloaded: bool, timed_out: bool = False) -> None:
        """One guard call ended: it took ``latency_s``, began at ``started`` (the clock's time), and
        ``overloaded`` says the guard refused it for load (429, 503) or it timed out (``timed_out``)."""
        if overloaded:
            self._slow_start = False
            if not self._backed_off:
                self._backed_off = True
                self._cautious_above = 0.9 * self._limit
                factor = TIMEOUT_BACKOFF if timed_out else BACKOFF
                self._apply(self._limit * factor, why="the guard is overloaded")
            return
        if self._probe_since is not None and started < self._probe_since:
            return  # queued behind the larger cap: it says nothing of the no-load latency
        self._samples.append(latency_s)
        # Called while the call still holds its slot: in_flight counts it.
        self._busy |= 2 * self._limiter.in_flight >= self._limiter.limit
        if self._probe_since is not None:
            window = PROBE_WINDOW
        elif self._slow_start:
            window = max(SLOW_START_WINDOW, self._limiter.limit)
        else:
            window = max(MIN_WINDOW, 2 * self._limiter.limit)
        if len(self._samples) < window:
            return
        # The median: a pause of the worker's own event loop stretches a few calls, not the guard's speed.
        typical = statistics.median(self._samples)
        busy, self._busy = self._busy, False
        self._samples, self._backed_off = [], False
        if self._probe_since is not None:
            self._end_probe(typical)
            return
        self._adjust(typical, busy=busy)
        if self._clock() >= self._next_probe:
            self._begin_probe()

    def _adjust(self, typical: float, *, busy: bool) -> None:
        if self.noload_s is None or typical < self.noload_s:
            self.noload_s = typical
        gradient = self._tolerance * max(self.noload_s, NOLOAD_FLOOR_S) / max(typical, 1e-9)
        if gradient >= 1.0:
            if not busy:
                return
            least = SLOW_START_STEP if self._slow_start else 1.0
            step = 1.0 if self._limit >= self._cautious_above else max(least, self._limit * GROWTH)
            self._apply(self._limit + step, why="the guard keeps up")
        else:
            self._slow_start = False
            # Half the way to what the gradient asks: one slow window does not halve the cap.
            self._apply(self._limit * max(0.5, (1.0 + gradient) / 2), why="the guard is queueing")

    def _aligned_probe_time(self) -> float:
        """The next multiple of ``probe_every_s`` of the wall clock, on ``clock``'s scale."""
        return self._clock() + self._probe_every_s - self._wall() % self._probe_every_s

    def _begin_probe(self) -> None:
        self._resume_at = self._limiter.limit
        self._probe_since = self._clock()
        self._samples = []
        self._limiter.set_limit(self._minimum)

    def _end_probe(self, reading: float) -> None:
        self.noload_s = reading
        self._probe_since = None
        self._next_probe = self._aligned_probe_time()
        self._limiter.set_limit(self._resume_at)

    def _apply(self, wanted: float, *, why: str) -> None:
        self._limit = min(float(self._maximum), max(float(self._minimum), wanted))
        if self._probe_since is not None:
            self._resume_at = min(self._resume_at, math.floor(self._limit))
            return
        limit = math.floor(self._limit)
        self._limiter.set_limit(limit)
        if abs(limit - self._logged) >= LOGGED_CHANGE * self._logged:
            noload = f"{self.noload_s * 1000:.0f} ms" if self.noload_s is not None else "unknown"
            log.info("guard concurrency %d -> %d (%s; no-load latency %s)", self._logged, limit, why, noload)
            self._logged = limit
