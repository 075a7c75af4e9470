"""Publishing input messages: the producer helper clients can use, and the JSONL reader behind
`guardq publish`.

Every published message starts a trace (a ``<topic> publish`` span) and carries its W3C ``traceparent``
header, so the worker's verdict reports the same trace id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from worker.config.settings import Settings
from worker.core.errors import InvalidInput
from worker.core.messages import decode_json_object, parse_request
from worker.kafka import clients as kafka
from worker.telemetry import tracing


@dataclass(frozen=True)
class Published:
    """Where a message went, and the trace it started."""

    id: str
    partition: int
    offset: int
    trace_id: str


class Publisher:
    """Publishes moderation requests to the input topic, with a traceparent header.

    Usage::

        async with Publisher(settings) as publisher:
            sent = await publisher.publish({"id": "m1", "text": "hello"})
    """

    def __init__(self, settings: Settings, *, tracer_provider: TracerProvider | None = None) -> None:
        self._settings = settings
        self._tracer = tracing.get_tracer(tracer_provider or tracing.build_provider())
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Publisher:
        producer = kafka.make_producer(self._settings)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, document: dict[str, Any]) -> Published:
        """Validate and publish one request; an ``id`` is added when missing. Raises ``InvalidInput``."""
        document = dict(document)
        document.setdefault("id", str(uuid.uuid4()))
        value = json.dumps(document, ensure_ascii=False).encode("utf-8")
        request = parse_request(value, self._settings.max_text_chars)
        return await self._send(request.id.encode("utf-8"), value, message_id=request.id)

    async def publish_raw(self, key: bytes | None, value: bytes) -> Published:
        """Publish bytes as they are (no validation), with a traceparent header."""
        return await self._send(key, value, message_id=None)

    async def _send(self, key: bytes | None, value: bytes, *, message_id: str | None) -> Published:
        if self._producer is None:
            raise RuntimeError("Publisher used outside 'async with'")
        topic = self._settings.input_topic
        with self._tracer.start_as_current_span(
            f"{topic} publish", kind=SpanKind.PRODUCER, attributes=tracing.send_attributes(topic, message_id)
        ) as span:
            headers = [(tracing.TRACEPARENT, tracing.traceparent_of(span).encode("ascii"))]
            meta = await self._producer.send_and_wait(topic, value, key=key, headers=headers)
            tracing.set_sent(span, meta.partition, meta.offset)
            return Published(
                id=key.decode("utf-8", errors="replace") if key else "",
                partition=meta.partition,
                offset=meta.offset,
                trace_id=tracing.trace_id_hex(span),
            )


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that was not published, and why."""

    line: int
    error: str


def read_jsonl(lines: Iterable[bytes], max_text_chars: int) -> Iterator[dict[str, Any] | BadLine]:
    """Parse JSONL input lines into request documents (id added when missing), or ``BadLine``s."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            document = decode_json_object(raw.strip())
            document.setdefault("id", str(uuid.uuid4()))
            parse_request(json.dumps(document, ensure_ascii=False).encode("utf-8"), max_text_chars)
        except InvalidInput as exc:
            yield BadLine(number, f"{exc.reason}: {exc}")
            continue
        yield document
