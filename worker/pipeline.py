"""One message, start to finish: validate → idempotency claim → guard → store → publish, or dead-letter.

``Pipeline.handle`` returns the ``Outcome`` once the message is *done*: its verdict is in Redis and the
verdict record acknowledged by the broker, or its dead letter acknowledged. Infrastructure errors (Redis,
Kafka) propagate so the caller can retry the whole message later without committing it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import Span, SpanKind, Tracer

from worker import tracing
from worker.dlq import DeadLetterEnvelope, carried_headers, format_history_entry
from worker.errors import GuardqError, InvalidInput
from worker.guard.base import GuardBackend, GuardVerdict
from worker.limiter import ConcurrencyLimiter
from worker.messages import ModerationRequest, Verdict, format_rfc3339, parse_request, utc_now_rfc3339
from worker.retry import GuardCallFailed, RetryPolicy
from worker.settings import Settings
from worker.store import ClaimState, Lease, LeaseKeeper, VerdictStore

log = logging.getLogger(__name__)

LEASE_POLL_MIN_S = 0.05
LEASE_POLL_MAX_S = 1.0


class Outcome(enum.Enum):
    """What became of one message."""

    MODERATED = "moderated"  # guard called, verdict stored and published
    DUPLICATE = "duplicate"  # a verdict was already stored: re-published, no guard call
    DEAD_LETTERED = "dead_lettered"  # bad input or a guard failure: sent to the DLQ with a reason


class Pipeline:
    """Processes single input records; safe to run many at once."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: VerdictStore,
        leases: LeaseKeeper,
        guard: GuardBackend,
        limiter: ConcurrencyLimiter,
        producer: AIOKafkaProducer,
        tracer: Tracer,
        retry: RetryPolicy,
    ) -> None:
        self._settings = settings
        self._store = store
        self._leases = leases
        self._guard = guard
        self._limiter = limiter
        self._producer = producer
        self._tracer = tracer
        self._retry = retry

    async def handle(self, record: ConsumerRecord) -> Outcome:
        """Process one record until it is done; see the module docstring for what propagates."""
        headers = list(record.headers or ())
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": self._settings.group_id,
        }
        with self._tracer.start_as_current_span(
            f"{record.topic} process",
            context=tracing.extract(headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            started = time.monotonic()
            try:
                request = parse_request(record.value, self._settings.max_text_chars)
            except InvalidInput as exc:
                log.warning("dead-lettering %s/%d@%d: %s", record.topic, record.partition, record.offset, exc)
                await self._dead_letter(record, span, exc, attempts=0)
                return Outcome.DEAD_LETTERED
            span.set_attribute("messaging.message.id", request.id)
            outcome = await self._moderate(record, request, span, started)
            span.set_attribute("guardq.outcome", outcome.value)
            return outcome

    async def _moderate(
        self, record: ConsumerRecord, request: ModerationRequest, span: Span, started: float
    ) -> Outcome:
        lease = await self._wait_for_lease(request.id)
        if isinstance(lease, bytes):
            await self._publish(request.id, lease)
            return Outcome.DUPLICATE
        held: Lease | None = lease
        try:
            with self._leases.holding(lease):
                try:
                    verdict, attempts = await self._retry.call(lambda n: self._call_guard(request, n))
                except GuardCallFailed as failed:
                    if failed.error.fatal:
                        raise failed.error from failed
                    log.warning(
                        "dead-lettering id=%s after %d attempt(s): %s", request.id, failed.attempts, failed
                    )
                    await self._dead_letter(record, span, failed.error, attempts=failed.attempts)
                    return Outcome.DEAD_LETTERED
                document = self._verdict(request, verdict, span, attempts, started).to_json()
                with self._tracer.start_as_current_span("redis store", kind=SpanKind.CLIENT) as store_span:
                    store_span.set_attribute("db.system.name", "redis")
                    await self._store.save(lease, document)
                held = None
        finally:
            if held is not None:  # no verdict stored: free the id for the next delivery at once
                await asyncio.shield(self._store.release(held))
        await self._publish(request.id, document)
        log.debug("verdict id=%s label=%s attempts=%d", request.id, verdict.label, attempts)
        return Outcome.MODERATED

    async def _wait_for_lease(self, message_id: str) -> Lease | bytes:
        """Take the in-flight lease, or return the stored verdict. Waits while another delivery holds it."""
        poll_s = LEASE_POLL_MIN_S
        while True:
            claim, lease = await self._store.claim(message_id)
            if claim.state is ClaimState.ACQUIRED and lease is not None:
                return lease
            if claim.state is ClaimState.VERDICT and claim.verdict is not None:
                return claim.verdict
            # Busy: another delivery is moderating this id. Re-check after a short, growing pause,
            # never past the moment its lease would expire.
            await asyncio.sleep(min(poll_s, max(claim.lease_ttl_ms / 1000, 0.01)))
            poll_s = min(poll_s * 2, LEASE_POLL_MAX_S)

    async def _call_guard(self, request: ModerationRequest, attempt: int) -> GuardVerdict:
        async with self._limiter.slot():
            with self._tracer.start_as_current_span("guard moderate", kind=SpanKind.CLIENT) as span:
                span.set_attribute("guardq.guard.model", self._guard.model)
                span.set_attribute("guardq.attempt", attempt)
                return await self._guard.moderate(request.guard_request())

    def _verdict(
        self, request: ModerationRequest, verdict: GuardVerdict, span: Span, attempts: int, started: float
    ) -> Verdict:
        return Verdict(
            id=request.id,
            label=verdict.label,
            categories=list(verdict.categories),
            refusal=verdict.refusal if request.kind == "response" else None,
            model=verdict.model,
            trace_id=tracing.trace_id_hex(span),
            attempts=attempts,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
            processed_at=utc_now_rfc3339(),
            metadata=request.metadata,
        )

    async def _publish(self, message_id: str, document: bytes) -> None:
        """Publish a verdict; its traceparent header carries the trace id written in the document."""
        trace_id = json.loads(document)["trace_id"]
        with self._tracer.start_as_current_span(
            f"{self._settings.verdict_topic} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": self._settings.verdict_topic,
            },
        ) as span:
            headers = [(tracing.TRACEPARENT, tracing.traceparent(trace_id, span).encode("ascii"))]
            await self._producer.send_and_wait(
                self._settings.verdict_topic, document, key=message_id.encode("utf-8"), headers=headers
            )

    async def _dead_letter(
        self, record: ConsumerRecord, span: Span, error: GuardqError, *, attempts: int
    ) -> None:
        headers = list(record.headers or ())
        envelope = DeadLetterEnvelope.for_failure(
            record_topic=record.topic,
            record_partition=record.partition,
            record_offset=record.offset,
            record_timestamp=format_rfc3339(datetime.fromtimestamp(max(record.timestamp, 0) / 1000, UTC)),
            incoming=headers,
            error=error,
            attempts=attempts,
            now=utc_now_rfc3339(),
            traceparent=tracing.traceparent_of(span),
        ).with_attempt(format_history_entry(error, attempts, record.topic))
        span.set_attribute("guardq.error.reason", envelope.error_reason)
        with self._tracer.start_as_current_span(
            f"{self._settings.dlq_topic} publish", kind=SpanKind.PRODUCER
        ):
            await self._producer.send_and_wait(
                self._settings.dlq_topic,
                record.value,
                key=record.key,
                headers=carried_headers(headers) + envelope.to_headers(),
            )
