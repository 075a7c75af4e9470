"""Fault injection and load behaviour of the simulated guard: in-text fault markers, seeded random faults,
latency sampling, the capacity gate that queues calls like vLLM does, and the counters behind ``/sim/stats``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import statistics
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from worker.dev.sim.config import SimConfig

FaultKind = Literal[
    "503", "429", "reset", "hang", "garbage", "length", "400", "overflow", "redirect", "flood", "echo"
]
# redirect: a 307 to ``redirect_url``; flood: a 200 whose body streams ``flood_mb`` MiB; echo: a 200 whose
# reply repeats the moderated text (a model fooled into copying an injected verdict).
FAULT_KINDS: tuple[FaultKind, ...] = (
    "503",
    "429",
    "reset",
    "hang",
    "garbage",
    "length",
    "400",
    "overflow",
    "redirect",
    "flood",
    "echo",
)

# Random faults in priority order (the first one drawn wins) with the knob holding each one's rate.
_RANDOM_FAULTS: tuple[tuple[FaultKind, str], ...] = (
    ("reset", "reset_rate"),
    ("503", "fail_503_rate"),
    ("429", "fail_429_rate"),
    ("hang", "hang_rate"),
    ("garbage", "garbage_rate"),
    ("length", "length_rate"),
)

# `[[sim:503]]` fails every call; `[[sim:503x2]]` fails the first 2 calls with exactly that content.
_MARKER = re.compile(r"\[\[sim:(" + "|".join(FAULT_KINDS) + r")(?:x(\d+))?\]\]")

# Per-content maps would otherwise grow without bound under a long benchmark.
MAX_TRACKED_CONTENTS = 200_000

_V = TypeVar("_V")


@dataclass(frozen=True)
class Marker:
    """A fault marker found in moderated content; ``count`` None means every call fails."""

    kind: FaultKind
    count: int | None


def find_marker(content: str) -> Marker | None:
    """The first fault marker in ``content``, if any."""
    match = _MARKER.search(content)
    if match is None:
        return None
    count = int(match.group(2)) if match.group(2) else None
    return Marker(cast(FaultKind, match.group(1)), count)


def content_key(content: str) -> str:
    """The key per-content statistics and marker counters use: the SHA-1 hex digest of the content."""
    return hashlib.sha1(content.encode("utf-8")).hexdigest()


def random_fault(config: SimConfig, rng: random.Random) -> FaultKind | None:
    """Draw each fault independently at its configured rate; the first hit in priority order wins."""
    hit: FaultKind | None = None
    for kind, knob in _RANDOM_FAULTS:
        # Draw for every kind even after a hit, so one knob's rate does not shift the others' stream.
        drawn = rng.random() < getattr(config, knob)
        if drawn and hit is None:
            hit = kind
    return hit


def sample_latency_s(config: SimConfig, rng: random.Random, content: str) -> float:
    """One call's processing time in seconds: fixed, or lognormal whose mean is ``latency_mean_ms``,
    drawn from the RNG or (``latency_from_text``) from the content, so every client sees the same set."""
    if config.latency_dist == "fixed":
        return config.latency_ms / 1000.0
    if config.latency_from_text:
        return text_latency_s(content, config.latency_mean_ms, config.latency_sigma)
    mean_s = config.latency_mean_ms / 1000.0
    if mean_s <= 0.0:
        return 0.0
    return rng.lognormvariate(_lognormal_mu(mean_s, config.latency_sigma), config.latency_sigma)


def text_latency_s(content: str, mean_ms: float, sigma: float) -> float:
    """The lognormal latency (mean ``mean_ms``) a ``latency_from_text`` guard takes for ``content``."""
    mean_s = mean_ms / 1000.0
    if mean_s <= 0.0:
        return 0.0
    digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()
    uniform = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64  # strictly inside (0, 1)
    return math.exp(_lognormal_mu(mean_s, sigma) + sigma * _STANDARD_NORMAL.inv_cdf(uniform))


def _lognormal_mu(mean_s: float, sigma: float) -> float:
    # E[lognormal(mu, sigma)] = exp(mu + sigma^2 / 2), so this mu makes the mean exactly mean_s.
    return math.log(mean_s) - sigma * sigma / 2.0


def bounded_put(
    mapping: OrderedDict[str, _V], key: str, value: _V, limit: int = MAX_TRACKED_CONTENTS
) -> None:
    """Set ``mapping[key]``, evicting the oldest entry first when a new key would exceed ``limit``. An
    ordered dict: deleting a plain dict's first key again and again leaves holes that each next lookup of
    the first key walks over (60 µs a call at 200,000 keys: the simulator slowed down 3x in a long run)."""
    if key not in mapping and len(mapping) >= limit:
        mapping.popitem(last=False)
    mapping[key] = value


_STANDARD_NORMAL = statistics.NormalDist()


class CapacityGate:
    """At most ``limit()`` holders at once; the rest wait in arrival order, never rejected (as vLLM queues).

    The limit is read on every admission so a live ``capacity`` change takes effect; call ``admit()``
    after raising it to let waiters in.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.active = 0
        self.max_active = 0

    async def acquire(self) -> None:
        """Wait for a slot; a slot is handed over directly by ``release`` so queued calls keep their order."""
        if not self._waiters and self.active < self._limit():
            self._take()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was handed to us just as we were cancelled: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def has_room(self) -> bool:
        """True when a call arriving now would be served at once."""
        return not self._waiters and self.active < self._limit()

    def release(self) -> None:
        """Give a slot back and hand it to the longest-waiting call, if any."""
        self.active -= 1
        self.admit()

    def admit(self) -> None:
        """Hand free slots to waiters in arrival order."""
        while self._waiters and self.active < self._limit():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def reset_peak(self) -> None:
        """Restart peak tracking from the current number of holders."""
        self.max_active = self.active

    def _take(self) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)


@dataclass
class SimStats:
    """Counters behind ``GET /sim/stats``; ``max_active`` lives in the ``CapacityGate``."""

    requests: int = 0
    verdicts: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    calls_by_content: OrderedDict[str, int] = field(default_factory=OrderedDict)
    traceparent_by_content: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def request_started(self) -> None:
        """Count a chat request on arrival (queued calls count as in flight)."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def request_finished(self) -> None:
        """A chat request left, with any outcome."""
        self.in_flight -= 1

    def record_call(self, key: str, traceparent: str | None) -> None:
        """Count one call for a content key and remember the last trace context it carried."""
        bounded_put(self.calls_by_content, key, self.calls_by_content.get(key, 0) + 1)
        if traceparent is not None:
            bounded_put(self.traceparent_by_content, key, traceparent)

    def to_json(self, max_active: int, *, brief: bool = False) -> dict[str, Any]:
        """The JSON document of ``GET /sim/stats``; ``brief`` leaves out the per-content maps (a copy of
        up to 200,000 entries each: polled every 50 ms, it took CPU from the worker being measured)."""
        document: dict[str, Any] = {
            "requests": self.requests,
            "verdicts": self.verdicts,
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_active": max_active,
        }
        if not brief:
            document["calls_by_content"] = dict(self.calls_by_content)
            document["traceparent_by_content"] = dict(self.traceparent_by_content)
        return document


class SimState:
    """Everything the simulator keeps between requests: live config, RNG, capacity gate and counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.gate = CapacityGate(lambda: self.config.capacity)
        self.stats = SimStats()
        self.marker_calls: OrderedDict[str, int] = OrderedDict()

    def reset(self) -> None:
        """Clear counters and marker counts and reseed the RNG, so a run after reset replays identically."""
        in_flight = self.stats.in_flight
        self.stats = SimStats(in_flight=in_flight, max_in_flight=in_flight)
        self.gate.reset_peak()
        self.marker_calls.clear()
        self.rng.seed(self.config.seed)

    def decide_fault(self, key: str, content: str) -> FaultKind | None:
        """The fault to inject for this call: its marker if it has one, else a random draw."""
        marker = find_marker(content)
        if marker is None:
            return random_fault(self.config, self.rng)
        if marker.count is None:
            return marker.kind
        calls = self.marker_calls.get(key, 0) + 1
        bounded_put(self.marker_calls, key, calls)
        # Marked content never gets random faults, so counted markers stay deterministic.
        return marker.kind if calls <= marker.count else None
