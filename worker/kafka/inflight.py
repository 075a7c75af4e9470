"""What the fetch loop keeps of the records it fetched: per partition, its offsets and the handlers working
on its records (``PartitionWork``); across partitions, the fetched records whose handler has not started
yet, in fetch order, and the size of the buffer (``InFlight``); and its counters (``FetchStats``).

A fetched record is buffered at once: it counts against the buffer caps and holds its partition's
watermark back. Its handler starts only when fewer than the window's number of started handlers may
still need a guard call, so a thousand buffered records wait as records in a queue, not as a thousand
tasks each holding a Redis lease and a chain of coroutines that the garbage collector walks again and
again (every pass a pause of the event loop while guard replies wait). A handler leaves the window when
its guard call is over (``worker.core.startwindow``) or when it ends; each leaving starts the next
waiting record."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

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


@dataclass(frozen=True, slots=True)
class Queued:
    """A fetched record and what the loop tracks of it."""

    part: PartitionWork
    record: ConsumerRecord
    offset: int  # the offset tracked for it (``tracked_offset``)
    size: int


class InFlight:
    """The fetched records not finished yet: how many and how many bytes (the buffer the fetch loop
    bounds), and among them the ones waiting for their handler to start, in fetch order. A record
    starts while fewer than ``window()`` handlers run (always, with no window), and never before one
    fetched earlier."""

    def __init__(self, window: Callable[[], int] | None) -> None:
        self._window = window
        self._waiting: deque[Queued] = deque()
        self.running = 0  # handlers started that may still need a guard call
        self.count = 0  # records fetched and not finished, started or waiting
        self.bytes = 0

    def _has_room(self) -> bool:
        return self._window is None or self.running < self._window()

    def add(self, queued: Queued) -> bool:
        """Count a fetched record in. True when it may start now (the caller starts it and calls
        ``started``); otherwise it waits here."""
        self.count += 1
        self.bytes += queued.size
        if not self._waiting and self._has_room():
            return True
        self._waiting.append(queued)
        return False

    def started(self) -> None:
        self.running += 1

    def left(self) -> None:
        """A started record left the window: it needs no guard call any more, or its handler ended."""
        self.running -= 1

    def finished(self, queued: Queued) -> None:
        """A started record's handler ended (done, failed or cancelled)."""
        self.count -= 1
        self.bytes -= queued.size

    def next_ready(self) -> Queued | None:
        """The next waiting record, if the window has room for it."""
        if self._waiting and self._has_room():
            return self._waiting.popleft()
        return None

    def drop(self, parts: list[PartitionWork]) -> dict[int, int]:
        """Forget the waiting records of ``parts`` (never started: never committed either); how many
        each had, by ``id`` of its ``PartitionWork``."""
        gone = {id(part) for part in parts}
        dropped: dict[int, int] = {}
        kept: deque[Queued] = deque()
        for queued in self._waiting:
            if id(queued.part) in gone:
                dropped[id(queued.part)] = dropped.get(id(queued.part), 0) + 1
                self.count -= 1
                self.bytes -= queued.size
            else:
                kept.append(queued)
        self._waiting = kept
        return dropped


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
