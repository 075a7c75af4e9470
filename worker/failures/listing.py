"""Reading the dead-letter topic for operators: `guardq dlq list`, `guardq dlq show` and `guardq dlq replay`.

The DLQ is read from the beginning up to each partition's highwater mark as learnt from a fetch (end
offsets are unreliable on some brokers), so a listing ends by itself at the end of the topic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import unicodedata
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from worker.config.settings import Settings
from worker.core.times import parse_rfc3339
from worker.failures.envelope import DeadLetterEnvelope
from worker.kafka import clients as kafka
from worker.kafka.reading import assign_all

READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DeadLetter:
    """One record of the DLQ with its decoded envelope (None when its headers are not guardq's)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    envelope: DeadLetterEnvelope | None
    problem: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def message_id(self) -> str:
        """The input's id when the value is a JSON object with a string id, else the key as text."""
        try:
            document = json.loads(self.value or b"")
            if isinstance(document, dict) and isinstance(document.get("id"), str):
                return str(document["id"])
        except (ValueError, RecursionError):
            pass
        return (self.key or b"").decode("utf-8", errors="replace")

    @property
    def coordinates(self) -> str:
        return f"{self.partition}:{self.offset}"


def _decode(record: ConsumerRecord) -> DeadLetter:
    try:
        envelope, problem = DeadLetterEnvelope.from_headers(record.headers or ()), None
    except (ValueError, UnicodeDecodeError) as exc:
        envelope, problem = None, str(exc)
    return DeadLetter(
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value,
        envelope,
        problem,
        headers=tuple(record.headers or ()),
    )


async def _at_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    for tp in tps:
        mark = consumer.highwater(tp)
        if mark is None or await consumer.position(tp) < mark:
            return False
    return True


async def stream(settings: Settings, *, batch: int = 500) -> AsyncIterator[list[DeadLetter]]:
    """Every dead letter, oldest first per partition, in lists of up to ``batch`` as they are read: a
    listing holds one batch in memory, not the topic."""
    consumer = kafka.make_consumer(settings, group_id=None)
    try:
        await consumer.start()
        tps = await assign_all(consumer, settings.dlq_topic)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_S
        while not await _at_end(consumer, tps):
            if loop.time() > deadline:
                raise TimeoutError(
                    f"the dead-letter topic was not read to its end within {READ_TIMEOUT_S:.0f} s"
                )
            batches = await consumer.getmany(*tps, timeout_ms=200, max_records=batch)
            found = [_decode(record) for records in batches.values() for record in records]
            if found:
                deadline = loop.time() + READ_TIMEOUT_S  # progress: the deadline is for a stalled read
                yield found
    finally:
        await consumer.stop()


async def read_all(settings: Settings) -> list[DeadLetter]:
    """Every dead letter, oldest first per partition."""
    letters: list[DeadLetter] = []
    async for found in stream(settings):
        letters.extend(found)
    return letters


async def read_at(settings: Settings, partition: int, offset: int) -> DeadLetter | None:
    """The dead letter at ``partition:offset``, read by seeking there (None when there is none)."""
    consumer = kafka.make_consumer(settings, group_id=None)
    try:
        await consumer.start()
        tps = await assign_all(consumer, settings.dlq_topic)
        tp = TopicPartition(settings.dlq_topic, partition)
        if tp not in tps:
            return None
        consumer.seek(tp, offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_S
        while loop.time() < deadline:
            records = (await consumer.getmany(tp, timeout_ms=200, max_records=1)).get(tp, [])
            if records:
                return _decode(records[0]) if records[0].offset == offset else None
            mark = consumer.highwater(tp)
            if mark is not None and await consumer.position(tp) >= mark:
                return None  # past the end
        raise TimeoutError(
            f"the dead letter at {partition}:{offset} was not read within {READ_TIMEOUT_S:.0f} s"
        )
    finally:
        await consumer.stop()


def _parse_time(raw: str) -> datetime | None:
    """An RFC 3339 time (UTC assumed when it has no offset), or None when it is not one."""
    try:
        return parse_rfc3339(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class Filter:
    """What `dlq list` and `dlq replay` select by; None means "any"."""

    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    error_class: str | None = None
    ids: Collection[str] | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes every filter that is set."""
        if self.ids is not None and letter.message_id not in self.ids:
            return False
        if self.reason is None and self.error_class is None and self.since is None and self.until is None:
            return True
        envelope = letter.envelope
        if envelope is None:
            return False  # only the id filter can pick a dead letter whose headers are not guardq's
        if self.reason is not None and envelope.error_reason != self.reason:
            return False
        if self.error_class is not None and envelope.error_class != self.error_class:
            return False
        if self.since is None and self.until is None:
            return True
        failed_at = _parse_time(envelope.first_failed_at)
        if failed_at is None:
            return False  # a time filter cannot place a letter whose time is not a time
        return (self.since is None or failed_at >= self.since) and (
            self.until is None or failed_at < self.until
        )


def shown(text: str) -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences, bidi overrides,
    line breaks) written as ``\\uXXXX``, so a dead letter cannot drive the operator's terminal."""
    return "".join(f"\\u{ord(char):04x}" if unicodedata.category(char) in _UNSHOWN else char for char in text)


_UNSHOWN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


TABLE_HEADER = f"{'AT':<10} {'ID':<28} {'REASON':<18} {'TRIES':>5}  {'FIRST FAILED':<24} ERROR"


def table_row(letter: DeadLetter) -> str:
    """One dead letter as a line of the table (every field passed through ``shown``)."""
    env = letter.envelope
    reason = env.error_reason if env else "(not guardq's)"
    tries = str(env.attempts) if env else "-"
    failed = env.first_failed_at if env else "-"
    error = (env.error_message if env else letter.problem or "")[:60]
    return (
        f"{letter.coordinates:<10} {shown(letter.message_id[:28]):<28} {shown(reason):<18} {tries:>5}  "
        f"{shown(failed[:24]):<24} {shown(error)}"
    )


def as_json(letter: DeadLetter) -> dict[str, object]:
    """A dead letter as a JSON-ready object: coordinates, id, key, value and the decoded envelope."""
    entry: dict[str, object] = {
        "partition": letter.partition,
        "offset": letter.offset,
        "id": letter.message_id,
    }
    for name, raw in (("key", letter.key), ("value", letter.value)):
        try:
            entry[name] = None if raw is None else raw.decode("utf-8")
        except UnicodeDecodeError:
            entry[name + "_b64"] = base64.b64encode(raw or b"").decode("ascii")
    if letter.envelope is not None:
        envelope = letter.envelope
        entry["envelope"] = {
            "original": {
                "topic": envelope.original_topic,
                "partition": envelope.original_partition,
                "offset": envelope.original_offset,
                "timestamp": envelope.original_timestamp,
            },
            "reason": envelope.error_reason,
            "error_class": envelope.error_class,
            "error_message": envelope.error_message,
            "attempts": envelope.attempts,
            "first_failed_at": envelope.first_failed_at,
            "replay_count": envelope.replay_count,
            "traceparent": envelope.traceparent,
            "history": list(envelope.history),
        }
    else:
        entry["problem"] = letter.problem
    return entry


def coordinates_of(target: str) -> tuple[int, int] | None:
    """``(partition, offset)`` when ``target`` is written ``PARTITION:OFFSET``, else None (an id)."""
    partition, sep, offset = target.partition(":")
    if sep and partition.isascii() and partition.isdigit() and offset.isascii() and offset.isdigit():
        return int(partition), int(offset)
    return None
