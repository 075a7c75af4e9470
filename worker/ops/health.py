"""What the worker tells operators over HTTP (GUARDQ_HTTP_PORT): ``/healthz``, ``/readyz``, ``/metrics`` and
``/status``.

- ``/healthz`` (liveness): the process answers and its event loop is not stalled: no tick of the loop
  watch came more than ``STALL_S`` late in the last minute, and the fetch loop polls while it should.
- ``/readyz`` (readiness): started, Kafka and Redis answered the last check (every ``CHECK_EVERY_S``),
  the guard's circuit is not open, and the worker is not shutting down.
- ``/metrics``: Prometheus text; ``/status``: the same facts as JSON, for humans and ``guardq status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer

from worker import __version__
from worker.config.settings import Settings
from worker.core.errors import one_line
from worker.kafka.fetchloop import FetchLoop
from worker.processing.adaptive import AdaptiveLimit
from worker.processing.breaker import CircuitBreaker
from worker.processing.limiter import ConcurrencyLimiter
from worker.telemetry.metrics import LiveState, Metrics

log = logging.getLogger(__name__)

TICK_S = 0.5
STALL_S = 5.0  # a tick this late means the event loop was blocked
STALL_MEMORY_S = 60.0
CHECK_EVERY_S = 5.0
CHECK_TIMEOUT_S = 3.0
FETCH_SILENCE_S = 120.0  # the fetch loop polls every 100 ms; this long without a poll means it is stuck
RATE_WINDOW_S = 60.0


@dataclass
class Health:
    """Live facts about one worker, kept by its watch tasks and read by the HTTP routes."""

    settings: Settings
    metrics: Metrics
    breaker: CircuitBreaker
    limiter: ConcurrencyLimiter
    adaptive: AdaptiveLimit | None = None  # GUARDQ_CONCURRENCY=auto
    fetch_loop: FetchLoop | None = None
    serving: bool = False  # started and consuming
    draining: bool = False
    started_at: float = field(default_factory=time.time)
    checks: dict[str, str] = field(default_factory=lambda: {"kafka": "unknown", "redis": "unknown"})
    stalls: deque[tuple[float, float]] = field(default_factory=deque)  # (when, seconds late)
    done_samples: deque[tuple[float, int]] = field(default_factory=deque)
    stall_s: float = STALL_S

    def _concurrency(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "mode": "fixed" if self.adaptive is None else "auto",
            "limit": self.limiter.limit,
            "in_flight": self.limiter.in_flight,
        }
        if self.adaptive is not None:
            noload = self.adaptive.noload_s
            shown["noload_latency_ms"] = round(noload * 1000, 1) if noload is not None else None
        return shown

    # -- watch tasks ------------------------------------------------------------------------------

    async def watch_loop(self) -> None:
        """Tick every ``TICK_S`` and remember ticks that came ``stall_s`` late (a blocked loop)."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK_S)
            late_s = loop.time() - before - TICK_S
            if late_s >= self.stall_s:
                log.warning("event loop stalled for %.1f s", late_s)
                self.stalls.append((time.monotonic(), late_s))

    async def run_checks(
        self, consumer: AIOKafkaConsumer, redis_probe: Callable[[], Awaitable[object]]
    ) -> None:
        """Check Kafka and Redis every ``CHECK_EVERY_S``; sample throughput. The Redis check writes (it
        runs a script that sets a short-lived key), so a Redis that answers PING but refuses writes
        (MISCONF, NOREPLICAS, NOPERM, OOM ...) makes the worker not ready for as long as it lasts."""
        while True:
            self.checks["kafka"] = await _check(consumer.topics())
            self.checks["redis"] = await _check(redis_probe())
            if self.fetch_loop is not None:
                now = time.monotonic()
                self.done_samples.append((now, self.fetch_loop.stats.done))
                while self.done_samples and self.done_samples[0][0] < now - RATE_WINDOW_S:
                    self.done_samples.popleft()
            await asyncio.sleep(CHECK_EVERY_S)

    # -- what the routes answer -------------------------------------------------------------------

    def live_state(self) -> LiveState | None:
        loop = self.fetch_loop
        if loop is None:
            return None
        return LiveState(
            in_flight=loop.in_flight,
            guard_in_flight=self.limiter.in_flight,
            concurrency_limit=self.limiter.limit,
            noload_latency_s=self.adaptive.noload_s if self.adaptive is not None else None,
            breaker_state=self.breaker.state.value,
            partitions=loop.partition_lags(),
            paused=loop.paused,
            consumed_by_topic=dict(loop.stats.fetched_by_topic),
            infra_retries=loop.stats.infra_retries,
            outage_s=round(self.breaker.outage_s or 0.0, 1),
            fallback=self.breaker.in_fallback,
            ready=self.readiness()[0],
        )

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        while self.stalls and self.stalls[0][0] < now - STALL_MEMORY_S:
            self.stalls.popleft()
        problems = [f"event loop stalled for {late:.1f} s" for _, late in self.stalls]
        loop = self.fetch_loop
        if loop is not None and self.serving and not self.draining:
            silent_s = asyncio.get_running_loop().time() - loop.last_poll_at
            if silent_s > FETCH_SILENCE_S:
                problems.append(f"fetch loop has not polled for {silent_s:.0f} s")
        return not problems, {"alive": not problems, "problems": problems}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        reasons = []
        if not self.serving:
            reasons.append("starting" if not self.draining else "stopped")
        if self.draining:
            reasons.append("shutting down")
        reasons += [f"{name}: {result}" for name, result in self.checks.items() if result != "ok"]
        if self.breaker.is_open:
            reasons.append("guard circuit open")
        return not reasons, {"ready": not reasons, "reasons": reasons}

    def status(self) -> dict[str, Any]:
        """Everything above as one JSON document."""
        ready, readiness = self.readiness()
        alive, liveness = self.liveness()
        state = self.live_state()
        partitions = [
            {
                "topic": p.topic,
                "partition": p.partition,
                "done_offset": p.done_offset,
                "committed": p.committed,
                "highwater": p.highwater,
                "lag": p.lag,
            }
            for p in (state.partitions if state else [])
        ]
        metrics = self.metrics
        return {
            "version": __version__,
            "group": self.settings.group_id,
            "input_topic": self.settings.input_topic,
            "uptime_s": round(time.time() - self.started_at, 1),
            "alive": alive,
            "ready": ready,
            "not_ready_because": readiness["reasons"],
            "problems": liveness["problems"],
            "checks": dict(self.checks),
            "guard": {"backend": self.settings.guard_backend, "model": self.settings.guard_model},
            "policy": self._policy(),
            "breaker": self.breaker.state.value,
            "outage": self._outage(),
            "concurrency": self._concurrency(),
            "in_flight": state.in_flight if state else 0,
            "paused": state.paused if state else False,
            "throughput_per_s": self.throughput_per_s(),
            "outcomes": metrics.by_label(metrics.outcomes),
            "verdicts": metrics.by_label(metrics.verdicts),
            "actions": metrics.by_label(metrics.verdicts, "action"),
            "dead_letters": metrics.by_label(metrics.dead_letters),
            "retry_hops": metrics.by_label(metrics.retry_hops),
            "guard_calls": metrics.total(metrics.guard_calls),
            "partitions": partitions,
        }

    def _outage(self) -> dict[str, Any]:
        outage_s = self.breaker.outage_s
        return {
            "policy": self.settings.outage_policy,
            "after_s": self.settings.outage_after_s,
            "since_s": None if outage_s is None else round(outage_s, 1),
            "fallback": self.breaker.in_fallback,
            "reason": self.breaker.last_reason if outage_s is not None else None,
        }

    def _policy(self) -> dict[str, Any]:
        policy = self.settings.policy
        return {
            "unsafe": policy.unsafe,
            "controversial": policy.controversial,
            "categories": dict(policy.categories),
        }

    def throughput_per_s(self) -> float:
        """Records finished per second over the last minute (0 until two samples exist)."""
        if len(self.done_samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.done_samples[0], self.done_samples[-1]
        return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else 0.0


async def _check(probe: Any) -> str:
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives as the
        # probe finishes, and this loop would then outlive the drain that cancelled it.
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
    except Exception as exc:  # any failure means "not reachable"; say which
        return one_line(f"{type(exc).__name__}: {exc}", 200)
    return "ok"


class OpsServer:
    """The aiohttp server of the routes above; ``start`` binds (port 0: any free one), ``stop`` closes."""

    def __init__(self, health: Health, *, host: str, port: int) -> None:
        self._health = health
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        addresses = runner.addresses  # the bound (host, port, ...) tuples: the real port when 0 was asked
        self.port = int(addresses[0][1]) if addresses else self._port
        log.info("http server on %s:%d (/healthz /readyz /metrics /status)", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = self._health.liveness()
        return web.json_response(body, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, body = self._health.readiness()
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._health.metrics.exposition(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self._health.status())
