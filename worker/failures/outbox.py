"""What the worker writes to Kafka: verdict records, retry hops and dead letters, each acknowledged (acks=all).

A dead letter the broker refuses as too large is written reduced, in ever smaller forms (``_forms``): a
prefix of the value, then without the original record's own headers, then a small prefix with only the
envelope. Markers say what was cut (``guardq.value_truncated_from``, ``guardq.headers_dropped``). A dead
letter that cannot be written in any form is a logged, counted skip: the worker goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import Span, SpanKind, Tracer

from worker.core.errors import GuardqError, is_infrastructure
from worker.core.messages import MAX_HEADER_BYTES, MAX_HEADERS, header_bytes
from worker.core.times import epoch_rfc3339, utc_now_rfc3339
from worker.failures.envelope import (
    DeadLetterEnvelope,
    Headers,
    carried_headers,
    format_history_entry,
    reduction_markers,
    retry_hop_headers,
    without_history,
)
from worker.failures.schedule import Hop
from worker.telemetry import tracing
from worker.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# What the broker (or the client's max request size) answers for a record that is too large.
TOO_LARGE: Final = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
# A dead letter the broker refuses as too large keeps this much of the value, then this little.
TRUNCATED_VALUE_BYTES = 256 * 1024
SMALLEST_VALUE_BYTES = 1024
SMALLEST_KEY_BYTES = 512


@dataclass(frozen=True)
class _Form:
    """One way to write a dead letter: its name (for the metric), key, value and headers."""

    name: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def _forms(record: ConsumerRecord, envelope: Headers) -> Iterator[_Form]:
    """The dead letter of ``record`` whole, then smaller and smaller (see the module docstring)."""
    if record.key is None and record.value is None:
        yield _Form("whole", None, b"", envelope + reduction_markers(value_absent=True))
        return
    own = carried_headers(record.headers or ())
    value: bytes | None = record.value
    size = len(value or b"")
    cut = size > TRUNCATED_VALUE_BYTES
    prefix = value[:TRUNCATED_VALUE_BYTES] if value is not None else None
    # Headers past the caps are never copied (their record was dead-lettered for them, as too_large).
    if len(own) <= MAX_HEADERS and header_bytes(own) <= MAX_HEADER_BYTES:
        yield _Form("whole", record.key, value, own + envelope)
        if cut:
            yield _Form(
                "value_prefix", record.key, prefix, own + envelope + reduction_markers(value_cut_from=size)
            )
    cut_from = size if cut else None
    markers = reduction_markers(value_cut_from=cut_from, headers_dropped=len(own))
    yield _Form("no_headers", record.key, prefix, envelope + markers)
    smallest = value[:SMALLEST_VALUE_BYTES] if value is not None else None
    key = record.key[:SMALLEST_KEY_BYTES] if record.key is not None else None
    cut_from = size if size > SMALLEST_VALUE_BYTES else None
    markers = reduction_markers(value_cut_from=cut_from, headers_dropped=len(own))
    yield _Form("minimal", key, smallest, without_history(envelope) + markers)


def _where(record: ConsumerRecord) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"


def _key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", errors="replace")[:512] if key else None


def record_time(timestamp_ms: object) -> str:
    """The record's timestamp as RFC 3339 UTC; the time of reading when it has none or a nonsense one."""
    try:
        return epoch_rfc3339(int(timestamp_ms) / 1000)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return utc_now_rfc3339()


class Outbox:
    """Publishes verdicts to the verdict topic and dead letters to the DLQ topic."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        tracer: Tracer,
        *,
        verdict_topic: str,
        dlq_topic: str,
        metrics: Metrics | None = None,
    ) -> None:
        self._producer = producer
        self._tracer = tracer
        self._verdict_topic = verdict_topic
        self._dlq_topic = dlq_topic
        self._metrics = metrics or Metrics()

    async def publish_verdict(self, message_id: str, document: bytes, trace_id: str) -> None:
        """Publish a verdict; its traceparent header carries ``trace_id`` (the one the document names)."""
        with self._span(self._verdict_topic, message_id) as span:
            headers = [(tracing.TRACEPARENT, tracing.traceparent(trace_id, span).encode("ascii"))]
            await self._send(span, self._verdict_topic, document, message_id.encode("utf-8"), headers)

    async def dead_letter(
        self,
        record: ConsumerRecord,
        span: Span,
        error: GuardqError,
        *,
        attempts: int,
        carried: Sequence[tuple[str, bytes]],
    ) -> str | None:
        """Send the record, bytes unchanged, to the DLQ with the failure in headers (reduced if the broker
        refuses it whole). ``carried``: the record's ``guardq.*`` headers worth believing (a retry hop's,
        a replay's), from which the envelope keeps coordinates and history. Returns the reason, or None
        when no form could be written (logged with the coordinates and counted)."""
        envelope = self._envelope(record, span, error, attempts, carried)
        headers = envelope.to_headers()
        with self._span(self._dlq_topic, _key_text(record.key)) as sending:
            refused: KafkaError | None = None
            for form in _forms(record, headers):
                try:
                    await self._send(sending, self._dlq_topic, form.value, form.key, form.headers)
                except TOO_LARGE as exc:
                    refused = exc
                    continue
                except KafkaError as exc:
                    if is_infrastructure(exc):
                        raise  # the broker is away: the caller waits it out, nothing is lost
                    refused = exc
                    break  # not about size: no smaller form will fare better
                if form.name != "whole":
                    log.warning("dead letter of %s written reduced (%s)", _where(record), form.name)
                    self._metrics.dead_letters_reduced.labels(form.name).inc()
                return envelope.error_reason
        log.error(
            "dead letter of %s (reason %s) could not be written in any form (%s): skipped",
            _where(record),
            envelope.error_reason,
            type(refused).__name__,
        )
        self._metrics.dead_letters_unwritable.labels(envelope.error_reason).inc()
        return None

    async def retry_later(
        self,
        record: ConsumerRecord,
        span: Span,
        error: GuardqError,
        *,
        attempts: int,
        hop: Hop,
        carried: Sequence[tuple[str, bytes]],
    ) -> None:
        """Send the record, bytes unchanged, to the retry topic of ``hop``: same key, value, headers and
        trace, plus the failure so far, the cumulative attempts and the time it is due. Raises one of
        ``TOO_LARGE`` when the broker will not take it (the caller dead-letters it instead)."""
        envelope = replace(
            self._envelope(record, span, error, attempts, carried), retry_hop=hop.number, due_at=hop.due_at
        )
        headers = retry_hop_headers(record.headers or (), envelope)
        with self._span(hop.topic, _key_text(record.key)) as sending:
            await self._send(sending, hop.topic, record.value, record.key, headers)

    def _span(self, topic: str, message_id: str | None) -> AbstractContextManager[Span]:
        """A ``<topic> publish`` producer span with the messaging attributes."""
        return tracing.child_span(
            self._tracer,
            f"{topic} publish",
            SpanKind.PRODUCER,
            functools.partial(tracing.send_attributes, topic, message_id),
        )

    async def _send(
        self, span: Span, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        """Send one record and wait for every in-sync replica (acks=all); note where it went on ``span``."""
        sent = await self._producer.send_and_wait(topic, value, key=key, headers=headers)
        tracing.set_sent(span, sent.partition, sent.offset)

    @staticmethod
    def _envelope(
        record: ConsumerRecord,
        span: Span,
        error: GuardqError,
        attempts: int,
        carried: Sequence[tuple[str, bytes]],
    ) -> DeadLetterEnvelope:
        return DeadLetterEnvelope.for_failure(
            record_topic=record.topic,
            record_partition=record.partition,
            record_offset=record.offset,
            record_timestamp=record_time(record.timestamp),
            incoming=carried,
            error=error,
            attempts=attempts,
            now=utc_now_rfc3339(),
            traceparent=tracing.traceparent_of(span),
        ).with_attempt(format_history_entry(error, attempts, record.topic))
