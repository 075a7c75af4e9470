"""Liveness, readiness and heartbeat rules, without a broker: a blocked event loop is detected, a draining
or starting worker is not ready, and three failed guard heartbeats in a row open the circuit."""

from __future__ import annotations

import asyncio
import time

from worker.config.settings import Settings
from worker.ops.health import Health
from worker.processing.breaker import BreakerState, CircuitBreaker
from worker.processing.limiter import ConcurrencyLimiter
from worker.telemetry.metrics import Metrics


def _health(**changes: object) -> Health:
    health = Health(Settings.load({}), Metrics(), CircuitBreaker(), ConcurrencyLimiter(4))
    for name, value in changes.items():
        setattr(health, name, value)
    return health


async def test_a_blocked_event_loop_fails_liveness() -> None:
    health = _health(stall_s=0.3)
    watch = asyncio.create_task(health.watch_loop())
    try:
        await asyncio.sleep(0.1)
        assert health.liveness()[0] is True
        time.sleep(1.0)  # noqa: ASYNC251 - blocking the loop is the point of this test
        await asyncio.sleep(0.7)  # let the late tick land
        alive, body = health.liveness()
    finally:
        watch.cancel()
    assert alive is False
    assert any("event loop stalled" in problem for problem in body["problems"])


def test_readiness_needs_serving_checks_closed_circuit_and_no_drain() -> None:
    health = _health()
    assert health.readiness() == (
        False,
        {"ready": False, "reasons": ["starting", "kafka: unknown", "redis: unknown"]},
    )
    health.serving = True
    health.checks = {"kafka": "ok", "redis": "ok"}
    assert health.readiness()[0] is True
    health.checks["redis"] = "ConnectionError: refused"
    assert health.readiness()[1]["reasons"] == ["redis: ConnectionError: refused"]
    health.checks["redis"] = "ok"
    health.draining = True
    assert health.readiness()[1]["reasons"] == ["shutting down"]


async def test_three_failed_heartbeats_in_a_row_open_the_circuit() -> None:
    breaker = CircuitBreaker()
    outcomes = iter([False, False, True, False, False, False])  # a success resets the count
    calls = 0

    async def check() -> None:
        nonlocal calls
        calls += 1
        if not next(outcomes):
            raise ConnectionError("guard down")

    beat = asyncio.create_task(breaker.run_heartbeat(check, period_s=0.01))
    try:
        for _ in range(200):
            if breaker.state is BreakerState.OPEN:
                break
            await asyncio.sleep(0.01)
    finally:
        beat.cancel()
    assert breaker.state is BreakerState.OPEN
    assert calls == 6
    assert breaker.opened_count == 1


class _Misconfigured(Exception):
    fatal = True


async def test_a_misconfigured_guard_seen_by_the_prober_stops_it_instead_of_staying_red() -> None:
    breaker = CircuitBreaker()
    for _ in range(20):
        breaker.record(success=False)
    assert breaker.state is BreakerState.OPEN

    async def probe() -> None:
        raise _Misconfigured("guard model 'x' is not served")

    prober = asyncio.create_task(breaker.run_prober(probe))
    done, _ = await asyncio.wait({prober}, timeout=5)
    assert prober in done
    assert isinstance(prober.exception(), _Misconfigured)


async def test_a_misconfigured_guard_seen_by_the_heartbeat_stops_it() -> None:
    async def check() -> None:
        raise _Misconfigured("rejected key")

    beat = asyncio.create_task(CircuitBreaker().run_heartbeat(check, period_s=0.01))
    done, _ = await asyncio.wait({beat}, timeout=5)
    assert beat in done
    assert isinstance(beat.exception(), _Misconfigured)
