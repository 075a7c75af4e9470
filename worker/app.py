"""The worker's lifecycle: build the components, run the fetch loop, drain and stop in order.

Components are composed with an ``AsyncExitStack`` so they stop in reverse order of start: the consumer
leaves its group only after the final commit; the producer flushes after the last verdict. The HTTP server
(health, readiness, metrics, status) starts first and stops last, so probes are answered throughout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from redis.asyncio import Redis

from worker.config.settings import Settings
from worker.core.errors import GuardConfigError, GuardError, GuardModelMissing
from worker.failures.outbox import Outbox
from worker.failures.schedule import RetrySchedule
from worker.guard.base import GuardBackend
from worker.guard.factory import build_backend
from worker.kafka import clients as kafka
from worker.kafka.codecs import install_inflation_cap
from worker.kafka.fetchloop import FetchLoop
from worker.ops import eventloop
from worker.ops.alerts import AlertWebhook, worker_id
from worker.ops.health import Health, OpsServer
from worker.processing.adaptive import AdaptiveLimit
from worker.processing.breaker import BreakerPolicy, CircuitBreaker
from worker.processing.guardcall import GuardCaller
from worker.processing.limiter import ConcurrencyLimiter
from worker.processing.pipeline import Pipeline
from worker.processing.retry import Backoffs, RetryPolicy
from worker.processing.throttle import Throttle
from worker.store.checks import check_store
from worker.store.connect import RedisSecurity, connect_redis
from worker.store.verdicts import LeaseKeeper, VerdictStore
from worker.telemetry import tracing
from worker.telemetry.metrics import Metrics

NONE_HELD: frozenset[str] = frozenset()
log = logging.getLogger(__name__)

FETCH_STOP_S = 10.0


@dataclass
class Worker:
    """One guardq worker process: consumes the input topic until ``stop`` is set or a fatal error."""

    settings: Settings
    tracer_provider: TracerProvider | None = None
    guard: GuardBackend | None = None
    backend: GuardBackend = field(init=False)
    provider: TracerProvider = field(init=False)
    limiter: ConcurrencyLimiter = field(init=False)
    adaptive: AdaptiveLimit | None = field(init=False)
    breaker: CircuitBreaker = field(init=False)
    throttle: Throttle = field(init=False, default_factory=Throttle)
    backoffs: Backoffs = field(init=False, default_factory=Backoffs)
    metrics: Metrics = field(init=False, default_factory=Metrics)
    health: Health = field(init=False)
    fetch_loop: FetchLoop | None = field(init=False, default=None)
    http_port: int | None = field(init=False, default=None)
    ready: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # Built before anything connects: a backend or span exporter whose extra is missing (or an OTEL_*
        # variable guardq cannot honour) stops the start at once.
        self.backend = self.guard or build_backend(self.settings)
        self.provider = self.tracer_provider or tracing.build_provider()
        settings = self.settings
        self.breaker = CircuitBreaker(BreakerPolicy.from_settings(settings))
        self.limiter = ConcurrencyLimiter(settings.concurrency or settings.concurrency_min)
        self.adaptive = (
            None
            if settings.concurrency is not None
            else AdaptiveLimit(
                self.limiter, minimum=settings.concurrency_min, maximum=settings.concurrency_max
            )
        )
        self.health = Health(settings, self.metrics, self.breaker, self.limiter, self.adaptive)
        self.metrics.watch(self.health.live_state)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (graceful drain) or a record fails fatally (raises that error)."""
        settings = self.settings
        # Every batch fetched from now on inflates at most this far (aiokafka's reader and guardq's own).
        install_inflation_cap(settings.max_inflate_bytes)
        guard = self.backend
        async with AsyncExitStack() as stack:
            if settings.alert_webhook_url:
                webhook = AlertWebhook(
                    settings.alert_webhook_url, worker=worker_id(), counts=self._alert_counts
                )
                self.breaker.watch(webhook.notify)
                stack.push_async_callback(webhook.close)
            server = OpsServer(self.health, host=settings.http_host, port=settings.http_port)
            await server.start()
            stack.push_async_callback(server.stop)
            self.http_port = server.port
            if settings.create_topics == "auto":
                await kafka.ensure_topics(settings)  # one metadata request when the topics exist
            redis, store, probe_store = self._stores(stack)
            producer = await kafka.producer_for(settings)
            consumer = kafka.make_consumer(settings, group_id=settings.group_id)
            # Stopped in reverse: the consumer leaves its group first, the producer flushes after it.
            stack.push_async_callback(guard.stop)
            stack.push_async_callback(producer.stop)
            stack.push_async_callback(consumer.stop)
            leases = LeaseKeeper(store)
            schedule = RetrySchedule.from_settings(settings)
            tracer = tracing.get_tracer(self.provider)
            pipeline = self._pipeline(guard, store, leases, producer, tracer, schedule)
            loop = self._fetch_loop(consumer, pipeline, schedule)
            # Retry topics are consumed beside the input topic; their partitions wait for their head's due
            # time. Parked messages (provisional verdicts given in an outage) wait for the guard.
            consumer.subscribe([settings.input_topic, *schedule.topics, settings.parked_topic], listener=loop)
            await consumer.start()
            # The group is joined in the background (seconds, on some brokers): Redis, the guard and the
            # producer are checked and started meanwhile. Nothing is fetched until all three are.
            try:
                async with asyncio.TaskGroup() as starting:
                    starting.create_task(self._check_store(store, redis))
                    starting.create_task(self._start_guard(guard))
                    starting.create_task(producer.start())
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None  # the error itself, as the CLI reports it in one line
            self.fetch_loop = self.health.fetch_loop = loop
            helpers = {
                "lease-keeper": leases.run(),
                "guard-prober": self.breaker.run_prober(guard.check),
                "guard-heartbeat": self.breaker.run_heartbeat(guard.check, period_s=settings.heartbeat_s),
                "health-checks": self.health.run_checks(consumer, probe_store.probe),
                "loop-watch": self.health.watch_loop(),
            }
            await self._serve(loop, stop, helpers)

    def _stores(self, stack: AsyncExitStack) -> tuple[Redis, VerdictStore, VerdictStore]:
        """The verdict store on a pool sized for the records in flight, and a second one on a connection
        of its own for readiness probes (the pool may be busy with records). Nothing connects yet."""
        settings = self.settings
        security = RedisSecurity.from_settings(settings)
        redis = connect_redis(settings.redis_url, max_connections=settings.redis_pool_size, security=security)
        # A pool passed in is not closed by aclose() unless asked: close it with the client.
        stack.push_async_callback(redis.aclose, close_connection_pool=True)
        probe_redis = connect_redis(settings.redis_url, max_connections=1, security=security)
        stack.push_async_callback(probe_redis.aclose, close_connection_pool=True)
        store, probe_store = (
            VerdictStore(
                client,
                prefix=settings.redis_prefix,
                verdict_ttl_s=settings.verdict_ttl_s,
                lease_ttl_s=settings.lease_ttl_s,
            )
            for client in (redis, probe_redis)
        )
        stack.push_async_callback(store.aclose)
        stack.push_async_callback(probe_store.aclose)
        return redis, store, probe_store

    @staticmethod
    async def _check_store(store: VerdictStore, redis: Redis) -> None:
        await redis.ping()
        await check_store(store, redis)

    def _fetch_loop(
        self, consumer: AIOKafkaConsumer, pipeline: Pipeline, schedule: RetrySchedule
    ) -> FetchLoop:
        settings = self.settings
        parked = frozenset({settings.parked_topic})
        return FetchLoop(
            consumer,
            pipeline.handle,
            max_buffered=settings.max_buffered,
            max_buffered_bytes=settings.max_buffered_bytes,
            commit_interval_s=settings.commit_interval_s,
            slots=lambda: self.limiter.limit,
            waiting=lambda: self.backoffs.waiting,
            # An open circuit pauses consumption, unless a fallback gives provisional verdicts meanwhile;
            # parked messages wait while it is open (half-open, they make the trial calls).
            hold=lambda: self.breaker.is_open and not self.breaker.in_fallback,
            held_topics=lambda: parked if self.breaker.is_open else NONE_HELD,
            due_in_s=schedule.due_in_s,
            salvage_max_bytes=kafka.MAX_PARTITION_FETCH_BYTES,
            inflate_cap_bytes=settings.max_inflate_bytes,
        )

    def _pipeline(
        self,
        guard: GuardBackend,
        store: VerdictStore,
        leases: LeaseKeeper,
        producer: AIOKafkaProducer,
        tracer: Tracer,
        schedule: RetrySchedule,
    ) -> Pipeline:
        settings = self.settings
        caller = GuardCaller(
            guard,
            limiter=self.limiter,
            breaker=self.breaker,
            throttle=self.throttle,
            backoffs=self.backoffs,
            retry=RetryPolicy(
                max_attempts=settings.guard_attempts,
                max_total_s=settings.guard_retry_budget_s,
                initial_backoff_s=settings.guard_backoff_s[0],
                max_backoff_s=settings.guard_backoff_s[1],
            ),
            tracer=tracer,
            store=store,
            chunk_chars=settings.chunk_chars,
            metrics=self.metrics,
            adaptive=self.adaptive,
            batch_max=settings.guard_batch_max,
            batch_wait_s=settings.guard_batch_wait_s,
        )
        return Pipeline(
            settings,
            store=store,
            leases=leases,
            caller=caller,
            outbox=Outbox(
                producer,
                tracer,
                verdict_topic=settings.verdict_topic,
                dlq_topic=settings.dlq_topic,
                metrics=self.metrics,
            ),
            tracer=tracer,
            schedule=schedule,
            metrics=self.metrics,
        )

    async def _start_guard(self, guard: GuardBackend) -> None:
        """Start the backend; refuse to start on a misconfigured guard, only warn when it is merely down
        (it may come back)."""
        await guard.start()
        try:
            await guard.check()
        except GuardModelMissing as exc:
            if exc.served:  # a guard that serves other models: this worker is pointed at the wrong one
                raise GuardConfigError(str(exc), status=exc.status) from None
            self._down_at_start(exc)
        except GuardError as exc:
            if exc.fatal:
                raise
            self._down_at_start(exc)

    def _alert_counts(self) -> dict[str, Any]:
        metrics = self.metrics
        loop = self.fetch_loop
        return {
            "in_flight": loop.in_flight if loop is not None else 0,
            "provisional_verdicts": metrics.total(metrics.provisional_verdicts),
            "parked": metrics.total(metrics.parked),
            "dead_letters": metrics.total(metrics.dead_letters),
        }

    def _down_at_start(self, error: GuardError) -> None:
        """Start anyway, with the circuit open: readiness false and nothing consumed (or, with a fallback
        policy, provisional verdicts once the outage is old enough) until a probe finds the guard."""
        log.warning("guard not usable at start-up (%s); starting with the circuit open", error)
        self.breaker.open_now(f"guard not usable at start-up: {error}")

    async def _serve(
        self, loop: FetchLoop, stop: asyncio.Event, helpers: dict[str, Coroutine[Any, Any, None]]
    ) -> None:
        """Run the fetch loop, its commits and ``helpers``; any of them ending (a crash) or ``stop`` begins
        the drain. Helpers (lease renewal, the guard prober) run until the drain is over."""
        log.info("worker started: topic=%s group=%s", self.settings.input_topic, self.settings.group_id)
        eventloop.settle_heap()
        self.ready.set()
        self.health.serving = True
        fetching = asyncio.create_task(loop.run(), name="fetch-loop")
        committing = asyncio.create_task(loop.commit_periodically(), name="commit-loop")
        helping = [asyncio.create_task(coro, name=name) for name, coro in helpers.items()]
        supervised = [fetching, committing, *helping]
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            await asyncio.wait({*supervised, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.health.draining = True
            # No guard call starts from now on: records not yet calling the guard stay uncommitted for the
            # next owner; calls in flight finish up to the deadline.
            self.limiter.close()
            loop.stop_fetching()
            stopping.cancel()
            # getmany returns within 100 ms, except while a rebalance is under way: bound the wait.
            await asyncio.wait({fetching}, timeout=FETCH_STOP_S)
            fetching.cancel()
            # The periodic commit may hang in a broker outage holding the commit lock: end it first.
            committing.cancel()
            await asyncio.gather(fetching, committing, return_exceptions=True)
            cut_off = await loop.drain(self.settings.shutdown_timeout_s)
            # Only now: in-flight records held leases and waited on the circuit until the drain ended.
            for task in helping:
                task.cancel()
            await asyncio.gather(*helping, return_exceptions=True)
            self.ready.clear()
            self.health.serving = False
            log.info("worker stopped: %d record(s) cut off at the deadline (left uncommitted)", cut_off)
        for task in supervised:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if loop.fatal_error is not None:
            raise loop.fatal_error
