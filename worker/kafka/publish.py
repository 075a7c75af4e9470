"""Publishing input messages: the producer behind `worker.client.Publisher`, `guardq publish` and the demo,
and the JSONL reader of `guardq publish`.

Every published message starts a trace (a ``<topic> publish`` span) and carries its W3C ``traceparent``
header, so the worker's verdict reports the same trace id.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from worker.config.settings import Settings
from worker.core.errors import InvalidInput
from worker.core.messages import ModerationRequest, decode_json_object, parse_request
from worker.kafka import clients as kafka
from worker.telemetry import tracing


@dataclass(frozen=True)
class Published:
    """Where a message went, and the trace it started."""

    id: str
    partition: int
    offset: int
    trace_id: str


class InputProducer:
    """Sends moderation requests to the input topic, each in a ``<topic> publish`` span (a child of the
    caller's current span) whose ``traceparent`` header it carries. ``enqueue`` returns at once with the
    send's future, so many requests share a batch; ``publish`` waits for the acknowledgement.

    Usage::

        async with InputProducer(settings) as producer:
            sent = await producer.publish({"id": "m1", "text": "hello"})
    """

    def __init__(self, settings: Settings, *, tracer_provider: TracerProvider | None = None) -> None:
        self._settings = settings
        self._tracer = tracing.get_tracer(tracer_provider or tracing.build_provider())
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> InputProducer:
        producer = await kafka.producer_for(self._settings)
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
        """Validate and publish one request, waiting for its acknowledgement; an ``id`` is added when
        missing. Raises ``InvalidInput``."""
        return await (await self.enqueue(document))

    async def enqueue(self, document: dict[str, Any]) -> asyncio.Future[Published]:
        """Validate one request and queue it for sending; the future resolves when the broker has it."""
        return await self.enqueue_prepared(self.prepare(document))

    def prepare(self, document: dict[str, Any]) -> Prepared:
        """``prepare`` with this producer's GUARDQ_MAX_TEXT_CHARS."""
        return prepare(document, self._settings.max_text_chars)

    async def enqueue_prepared(self, prepared: Prepared) -> asyncio.Future[Published]:
        """Queue a ``prepare``d request for sending; the future resolves when the broker has it."""
        request = prepared.request
        return await self._send(request.id.encode("utf-8"), prepared.value, message_id=request.id)

    async def publish_raw(self, key: bytes | None, value: bytes) -> Published:
        """Publish bytes as they are (no validation), with a traceparent header."""
        return await (await self._send(key, value, message_id=None))

    async def _send(
        self, key: bytes | None, value: bytes, *, message_id: str | None
    ) -> asyncio.Future[Published]:
        if self._producer is None:
            raise RuntimeError("InputProducer used outside 'async with'")
        topic = self._settings.input_topic
        span = self._tracer.start_span(
            f"{topic} publish", kind=SpanKind.PRODUCER, attributes=tracing.send_attributes(topic, message_id)
        )
        published: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
        try:
            headers = [(tracing.TRACEPARENT, tracing.traceparent_of(span).encode("ascii"))]
            acked = await self._producer.send(topic, value, key=key, headers=headers)
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise

        def settle(done: asyncio.Future[RecordMetadata]) -> None:
            if published.cancelled():
                pass
            elif done.cancelled():
                published.cancel()
            elif (error := done.exception()) is not None:
                span.record_exception(error)
                published.set_exception(error)
            else:
                meta = done.result()
                tracing.set_sent(span, meta.partition, meta.offset)
                published.set_result(
                    Published(
                        id=key.decode("utf-8", errors="replace") if key else "",
                        partition=meta.partition,
                        offset=meta.offset,
                        trace_id=tracing.trace_id_hex(span),
                    )
                )
            span.end()

        acked.add_done_callback(settle)
        return published


def _dumps(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; the standard library only for what orjson refuses (an integer past 64 bits)."""
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        return json.dumps(document, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Prepared:
    """A request ready to send: its record value, and the request as the worker will read it."""

    value: bytes
    request: ModerationRequest


def prepare(document: dict[str, Any], max_text_chars: int) -> Prepared:
    """A request document (an ``id`` added when missing) encoded and validated once, as the worker will
    read it. Raises ``InvalidInput`` for one it would dead-letter."""
    document = dict(document)
    document.setdefault("id", str(uuid.uuid4()))
    value = _dumps(document)
    return Prepared(value, parse_request(value, max_text_chars))


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that was not published, and why."""

    line: int
    error: str


def read_jsonl(lines: Iterable[bytes], max_text_chars: int) -> Iterator[Prepared | BadLine]:
    """Parse JSONL input lines into prepared requests (id added when missing), or ``BadLine``s."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield prepare(decode_json_object(raw.strip()), max_text_chars)
        except InvalidInput as exc:
            yield BadLine(number, f"{exc.reason}: {exc}")
