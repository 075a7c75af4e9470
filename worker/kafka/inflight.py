"""What the fetch loop keeps of the records it fetched: per partition, its offsets and the handlers working
on its records (``PartitionWork``); across partitions, how many are unfinished and their bytes
(``InFlight``); its counters (``FetchStats``); and the lag of each partition (``partition_lags``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from worker.core.offsets import PartitionOffsets
from worker.telemetry.metrics import PartitionLag


@dataclass
class PartitionWork:
    """One assignment of one partition: its offsets and the tasks working on its records."""

    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    committed: int | None = None
    due_at: float | None = None  # loop time at which a held-back retry partition's head record is due
    held_offset: int | None = None  # the record it was held back for: dispatched without asking again
    topic_held: bool = False  # paused because its topic is held (parked messages while the guard is down)


class InFlight:
    """The fetched records not finished yet: how many and how many bytes (the buffer the fetch loop
    bounds)."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size

    def finished(self, size: int) -> None:
        """A record's handler ended (done, failed or cancelled)."""
        self.count -= 1
        self.bytes -= size


@dataclass
class FetchStats:
    """Counters for tests, the demo and later metrics."""

    fetched: int = 0
    done: int = 0
    infra_retries: int = 0
    pauses: int = 0
    peak_buffered: int = 0
    held_back: int = 0  # times a retry partition was paused until its head record was due
    fetch_errors: int = 0  # failed fetches, each followed by a read with guardq's own reader
    fetched_by_topic: dict[str, int] = field(default_factory=dict)


def partition_lags(
    consumer: AIOKafkaConsumer, parts: dict[TopicPartition, PartitionWork]
) -> list[PartitionLag]:
    """Per partition of ``parts``: the done watermark, the last commit and the highwater mark (None when
    the consumer does not know it)."""
    return [
        PartitionLag(
            tp.topic, tp.partition, part.offsets.committable(), part.committed, _highwater(consumer, tp)
        )
        for tp, part in sorted(parts.items(), key=lambda item: (item[0].topic, item[0].partition))
    ]


def _highwater(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    try:
        mark = consumer.highwater(tp)
    except (IllegalStateError, KafkaError, AssertionError):
        return None
    return int(mark) if mark is not None else None
