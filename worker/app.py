"""The worker's lifecycle: build the components, run the fetch loop, drain and stop in order.

Components are composed with an ``AsyncExitStack`` so they stop in reverse order of start: the consumer
leaves its group only after the final commit; the producer flushes after the last verdict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from worker import kafka, tracing
from worker.breaker import CircuitBreaker
from worker.consumer import FetchLoop
from worker.errors import GuardError
from worker.guard.base import GuardBackend, build_backend
from worker.guardcall import GuardCaller
from worker.limiter import ConcurrencyLimiter
from worker.outbox import Outbox
from worker.pipeline import Pipeline
from worker.retry import RetryPolicy
from worker.schedule import RetrySchedule
from worker.settings import Settings
from worker.store import LeaseKeeper, VerdictStore, connect_redis
from worker.throttle import Throttle

log = logging.getLogger(__name__)

FETCH_STOP_S = 10.0


@dataclass
class Worker:
    """One guardq worker process: consumes the input topic until ``stop`` is set or a fatal error."""

    settings: Settings
    tracer_provider: TracerProvider | None = None
    guard: GuardBackend | None = None
    limiter: ConcurrencyLimiter = field(init=False)
    breaker: CircuitBreaker = field(init=False, default_factory=CircuitBreaker)
    throttle: Throttle = field(init=False, default_factory=Throttle)
    fetch_loop: FetchLoop | None = field(init=False, default=None)
    ready: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.limiter = ConcurrencyLimiter(self.settings.concurrency)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (graceful drain) or a record fails fatally (raises that error)."""
        settings = self.settings
        provider = self.tracer_provider or tracing.build_provider()
        async with AsyncExitStack() as stack:
            await kafka.ensure_topics(settings)
            redis = connect_redis(settings.redis_url, max_connections=max(16, settings.concurrency * 2))
            # A pool passed in is not closed by aclose() unless asked: close it with the client.
            stack.push_async_callback(redis.aclose, close_connection_pool=True)
            await redis.ping()
            guard = self.guard or build_backend(settings)
            await guard.start()
            stack.push_async_callback(guard.stop)
            await self._check_guard(guard)
            producer = kafka.make_producer(settings)
            await producer.start()
            stack.push_async_callback(producer.stop)
            tracer = tracing.get_tracer(provider)
            store = VerdictStore(
                redis,
                prefix=settings.redis_prefix,
                verdict_ttl_s=settings.verdict_ttl_s,
                lease_ttl_s=settings.lease_ttl_s,
            )
            leases = LeaseKeeper(store)
            breaker = self.breaker
            schedule = RetrySchedule.from_settings(settings)
            caller = GuardCaller(
                guard,
                limiter=self.limiter,
                breaker=breaker,
                throttle=self.throttle,
                retry=RetryPolicy(
                    max_attempts=settings.guard_attempts, max_total_s=2 * settings.guard_timeout_s + 10
                ),
                tracer=tracer,
                store=store,
                chunk_chars=settings.chunk_chars,
            )
            pipeline = Pipeline(
                settings,
                store=store,
                leases=leases,
                caller=caller,
                outbox=Outbox(
                    producer, tracer, verdict_topic=settings.verdict_topic, dlq_topic=settings.dlq_topic
                ),
                tracer=tracer,
                schedule=schedule,
            )
            consumer = kafka.make_consumer(settings, group_id=settings.group_id)
            loop = FetchLoop(
                consumer,
                pipeline.handle,
                max_buffered=settings.max_buffered,
                max_buffered_bytes=settings.max_buffered_mb * 1024 * 1024,
                commit_interval_s=settings.commit_interval_s,
                hold=lambda: breaker.is_open,
                due_in_s=schedule.due_in_s,
            )
            # Retry topics are consumed beside the input topic; their partitions wait for their head's due time.
            consumer.subscribe([settings.input_topic, *schedule.topics], listener=loop)
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            self.fetch_loop = loop
            await self._serve(loop, leases, stop, prober=breaker.run_prober(guard.check))

    async def _check_guard(self, guard: GuardBackend) -> None:
        """Refuse to start on a misconfigured guard; only warn when it is merely down (it may come back)."""
        try:
            await guard.check()
        except GuardError as exc:
            if exc.fatal:
                raise
            log.warning("guard not reachable at start-up (%s); starting anyway", exc)

    async def _serve(
        self, loop: FetchLoop, leases: LeaseKeeper, stop: asyncio.Event, *, prober: Coroutine[Any, Any, None]
    ) -> None:
        """Run the fetch loop and its helpers; any of them ending (a crash) or ``stop`` begins the drain."""
        log.info("worker started: topic=%s group=%s", self.settings.input_topic, self.settings.group_id)
        self.ready.set()
        supervised = [
            asyncio.create_task(loop.run(), name="fetch-loop"),
            asyncio.create_task(loop.commit_periodically(), name="commit-loop"),
            asyncio.create_task(leases.run(), name="lease-keeper"),
            asyncio.create_task(prober, name="guard-prober"),
        ]
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            await asyncio.wait({*supervised, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.stop_fetching()
            stopping.cancel()
            fetching, committing, renewing, probing = supervised
            # getmany returns within 100 ms, except while a rebalance is under way: bound the wait.
            await asyncio.wait({fetching}, timeout=FETCH_STOP_S)
            fetching.cancel()
            # The periodic commit may hang in a broker outage holding the commit lock: end it first.
            committing.cancel()
            await asyncio.gather(fetching, committing, return_exceptions=True)
            cut_off = await loop.drain(self.settings.shutdown_timeout_s)
            # Only now: in-flight records held leases and waited on the circuit until the drain ended.
            renewing.cancel()
            probing.cancel()
            await asyncio.gather(renewing, probing, return_exceptions=True)
            self.ready.clear()
            log.info("worker stopped: %d record(s) cut off at the deadline (left uncommitted)", cut_off)
        for task in supervised:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if loop.fatal_error is not None:
            raise loop.fatal_error
