"""What the worker writes to Kafka: verdict records and dead letters, each acknowledged (acks=all)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import Span, SpanKind, Tracer

from worker import tracing
from worker.dlq import (
    H_FORCE,
    H_REPLAYED_FROM,
    DeadLetterEnvelope,
    Headers,
    carried_headers,
    format_history_entry,
)
from worker.errors import GuardqError
from worker.messages import format_rfc3339, utc_now_rfc3339
from worker.schedule import Hop

log = logging.getLogger(__name__)

# A dead letter the broker refuses as too large keeps this much of the value (see ``dead_letter``).
TRUNCATED_VALUE_BYTES = 256 * 1024
H_VALUE_TRUNCATED_FROM = "guardq.value_truncated_from"
# guardq headers a retry hop carries on unchanged (the envelope rewrites the others).
KEPT_ON_RETRY = (H_FORCE, H_REPLAYED_FROM)


def _key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", errors="replace")[:512] if key else None


def record_time(timestamp_ms: object) -> str:
    """The record's timestamp as RFC 3339 UTC; the time of reading when it has none or a nonsense one."""
    try:
        return format_rfc3339(datetime.fromtimestamp(int(timestamp_ms) / 1000, UTC))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return utc_now_rfc3339()


class Outbox:
    """Publishes verdicts to the verdict topic and dead letters to the DLQ topic."""

    def __init__(
        self, producer: AIOKafkaProducer, tracer: Tracer, *, verdict_topic: str, dlq_topic: str
    ) -> None:
        self._producer = producer
        self._tracer = tracer
        self._verdict_topic = verdict_topic
        self._dlq_topic = dlq_topic

    async def publish_verdict(self, message_id: str, document: bytes, fallback_trace_id: str) -> None:
        """Publish a verdict; its traceparent header carries the trace id written in the document."""
        try:
            trace_id = str(json.loads(document).get("trace_id") or fallback_trace_id)
        except (ValueError, AttributeError):
            trace_id = fallback_trace_id
        with self._span(self._verdict_topic, message_id) as span:
            headers = [(tracing.TRACEPARENT, tracing.traceparent(trace_id, span).encode("ascii"))]
            await self._send(span, self._verdict_topic, document, message_id.encode("utf-8"), headers)

    async def dead_letter(
        self, record: ConsumerRecord, span: Span, error: GuardqError, *, attempts: int
    ) -> str:
        """Send the record, bytes unchanged, to the DLQ with the failure in headers. Returns the reason."""
        envelope = self._envelope(record, span, error, attempts)
        headers = carried_headers(record.headers or ()) + envelope.to_headers()
        with self._span(self._dlq_topic, _key_text(record.key)) as sending:
            try:
                await self._send(sending, self._dlq_topic, record.value, record.key, headers)
            except MessageSizeTooLargeError:
                # The broker takes the original but not the original plus headers. Keep a bounded prefix;
                # the headers name the input coordinates where the whole value still is.
                size = len(record.value or b"")
                log.warning(
                    "dead letter of %d bytes refused as too large; keeping its first %d",
                    size,
                    TRUNCATED_VALUE_BYTES,
                )
                headers.append((H_VALUE_TRUNCATED_FROM, str(size).encode()))
                value = (record.value or b"")[:TRUNCATED_VALUE_BYTES]
                await self._send(sending, self._dlq_topic, value, record.key, headers)
        return envelope.error_reason

    async def retry_later(
        self, record: ConsumerRecord, span: Span, error: GuardqError, *, attempts: int, hop: Hop
    ) -> None:
        """Send the record, bytes unchanged, to the retry topic of ``hop``: same key, value, headers and
        trace, plus the failure so far, the cumulative attempts and the time it is due."""
        envelope = replace(
            self._envelope(record, span, error, attempts), retry_hop=hop.number, due_at=hop.due_at
        )
        headers = carried_headers(record.headers or (), keep=KEPT_ON_RETRY) + envelope.to_headers()
        with self._span(hop.topic, _key_text(record.key)) as sending:
            await self._send(sending, hop.topic, record.value, record.key, headers)

    @contextmanager
    def _span(self, topic: str, message_id: str | None) -> Iterator[Span]:
        """A ``<topic> publish`` producer span with the messaging attributes."""
        with self._tracer.start_as_current_span(
            f"{topic} publish", kind=SpanKind.PRODUCER, attributes=tracing.send_attributes(topic, message_id)
        ) as span:
            yield span

    async def _send(
        self, span: Span, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        """Send one record and wait for every in-sync replica (acks=all); note where it went on ``span``."""
        sent = await self._producer.send_and_wait(topic, value, key=key, headers=headers)
        tracing.set_sent(span, sent.partition, sent.offset)

    @staticmethod
    def _envelope(
        record: ConsumerRecord, span: Span, error: GuardqError, attempts: int
    ) -> DeadLetterEnvelope:
        incoming = list(record.headers or ())
        return DeadLetterEnvelope.for_failure(
            record_topic=record.topic,
            record_partition=record.partition,
            record_offset=record.offset,
            record_timestamp=record_time(record.timestamp),
            incoming=incoming,
            error=error,
            attempts=attempts,
            now=utc_now_rfc3339(),
            traceparent=tracing.traceparent_of(span),
        ).with_attempt(format_history_entry(error, attempts, record.topic))
