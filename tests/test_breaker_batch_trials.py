"""A half-open breaker in front of a batching guard: every text a successful batch answered counts as one
successful trial, so trial calls gathered into one batch close the breaker (counted once per batch, the
breaker would wait for trials that never come and stay half-open)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis

from tests.helpers import InProcessBackend
from tests.test_breaker import _to_half_open
from worker.core.errors import GuardError
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.processing.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from worker.processing.guardcall import GuardCaller
from worker.processing.limiter import ConcurrencyLimiter
from worker.processing.retry import RetryPolicy
from worker.processing.throttle import Throttle
from worker.store.verdicts import VerdictStore
from worker.telemetry.metrics import Metrics

TRIALS = 3


class BatchGuard(InProcessBackend):
    """A batching guard of its own making: answers every text safe, one request per batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def moderate(self, request: GuardRequest) -> GuardVerdict:
        raise AssertionError("a batching backend is called through moderate_batch")

    async def moderate_batch(self, requests: Sequence[GuardRequest]) -> list[GuardVerdict | GuardError]:
        self.batches.append(len(requests))
        return [GuardVerdict(label="safe", categories=(), refusal=None, model=self.model) for _ in requests]


POLICY = BreakerPolicy(cooldown_initial_s=0.01, trial_calls=TRIALS, half_open_timeout_s=30.0)


async def test_trial_calls_gathered_in_one_batch_close_the_breaker() -> None:
    breaker = CircuitBreaker(POLICY)
    guard = BatchGuard()
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never used: no text here is long enough to chunk
    caller = GuardCaller(
        guard,
        limiter=ConcurrencyLimiter(8),
        breaker=breaker,
        throttle=Throttle(),
        retry=RetryPolicy(max_attempts=1),
        tracer=TracerProvider().get_tracer("test"),
        store=VerdictStore(redis, prefix="unused:", verdict_ttl_s=60, lease_ttl_s=10),
        chunk_chars=None,
        metrics=Metrics(),
        batch_max=TRIALS,
        batch_wait_s=0.05,
    )
    for index in range(POLICY.consecutive_failures):
        breaker.record(success=False, text=index)
    await _to_half_open(breaker)
    async with asyncio.timeout(5):
        answers = await asyncio.gather(
            *(caller.answer(f"id{i}", GuardRequest(text=f"text {i}")) for i in range(TRIALS))
        )
    assert [answer.verdict.label for answer in answers] == ["safe"] * TRIALS
    assert guard.batches == [TRIALS]  # the three trials went as one request
    assert breaker.state is BreakerState.CLOSED
    await redis.aclose()
