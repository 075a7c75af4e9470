"""`guardq tail`: print a topic as JSON lines, from the current end or from the beginning.

The current end comes from each partition's highwater mark, learnt from a first fetch: ``seek_to_end``
and ``end_offsets`` are unreliable on tansu.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from worker.config.settings import Settings
from worker.kafka import clients as kafka


def render(record: ConsumerRecord, *, value_only: bool) -> str:
    """One JSON line: the value itself for verdicts, else the record with key, value and headers."""
    value: bytes | None = record.value
    if value_only and value is not None:
        try:
            return json.dumps(json.loads(value), ensure_ascii=False)
        except ValueError:
            pass  # not JSON after all: fall through to the record form
    entry: dict[str, Any] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    entry["timestamp_ms"] = record.timestamp
    entry.update(_bytes_field("key", record.key))
    entry.update(_bytes_field("value", value))
    entry["headers"] = {name: _text_or_b64(raw) for name, raw in record.headers or ()}
    return json.dumps(entry, ensure_ascii=False)


def _text_or_b64(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


def _bytes_field(name: str, raw: bytes | None) -> dict[str, str | None]:
    if raw is None:
        return {name: None}
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {name + "_b64": base64.b64encode(raw).decode("ascii")}


async def assign_all(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a group-less consumer."""
    await consumer.topics()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"topic {topic!r} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    return tps


async def seek_to_current_end(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float = 10
) -> None:
    """Position each partition at its highwater mark, learnt from a first fetch."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(consumer.highwater(tp) is None for tp in tps):
        if loop.time() > deadline:
            raise TimeoutError("the broker reported no highwater marks")
        await consumer.getmany(*tps, timeout_ms=200, max_records=1)
    for tp in tps:
        consumer.seek(tp, consumer.highwater(tp))


async def records(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool,
    timeout_s: float | None,
    on_positioned: Callable[[list[TopicPartition]], None] | None = None,
) -> AsyncGenerator[ConsumerRecord, None]:
    """Yield records of ``topic`` until ``timeout_s`` has passed (forever when None).

    ``on_positioned`` is called once every partition has its start position."""
    consumer = kafka.make_consumer(settings, group_id=None)
    try:
        await consumer.start()
        tps = await assign_all(consumer, topic)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await seek_to_current_end(consumer, tps)
        if on_positioned is not None:
            on_positioned(tps)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while deadline is None or loop.time() < deadline:
            wait_ms = 200 if deadline is None else max(1, min(200, int((deadline - loop.time()) * 1000)))
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=500)
            for batch in batches.values():
                for record in batch:
                    yield record
    finally:
        await consumer.stop()


async def tail(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool,
    max_records: int | None,
    timeout_s: float | None,
    out: TextIO,
    status: TextIO | None = None,
) -> int:
    """Print records as JSON lines to ``out``; stop after ``max_records`` or ``timeout_s``. A line on
    ``status`` says where reading starts. Returns how many records were printed."""
    printed = 0
    value_only = topic == settings.verdict_topic
    if max_records == 0:
        return 0

    def positioned(tps: list[TopicPartition]) -> None:
        if status is not None:
            start = "the beginning" if from_beginning else "the current end"
            status.write(f"following {topic} ({len(tps)} partitions) from {start}\n")
            status.flush()

    stream = records(
        settings, topic, from_beginning=from_beginning, timeout_s=timeout_s, on_positioned=positioned
    )
    async with contextlib.aclosing(stream):
        async for record in stream:
            out.write(render(record, value_only=value_only) + "\n")
            out.flush()
            printed += 1
            if max_records is not None and printed >= max_records:
                break
    return printed
