"""The fetch loop's own logic, with a stand-in for the aiokafka consumer (the real broker is covered by the
integration tests): watermark commits, infrastructure retries, fatal errors, and a bounded drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import wait_until
from worker.kafka.fetchloop import CANCEL_GRACE_S, FetchLoop

TP = TopicPartition("in", 0)


class StandInConsumer:
    """Hands out the given records once, then nothing; records commits, pauses and resumes."""

    def __init__(self, records: list[ConsumerRecord]) -> None:
        self._batches = [{TP: records}]
        self.commits: list[dict[TopicPartition, int]] = []

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        if self._batches:
            return self._batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, *tps: TopicPartition) -> None:
        return None

    def resume(self, *tps: TopicPartition) -> None:
        return None

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


def _record(offset: int) -> ConsumerRecord:
    return ConsumerRecord("in", 0, offset, 0, 0, b"k", b"v", None, 1, 1, [])


async def _until_done(loop: FetchLoop, count: int) -> None:
    async def enough() -> bool:
        return loop.stats.done >= count

    await wait_until(enough, timeout_s=10, what=f"{count} record(s) done")


async def _loop_with(records: int, handler: Any) -> tuple[FetchLoop, StandInConsumer, asyncio.Task[None]]:
    consumer = StandInConsumer([_record(i) for i in range(records)])
    loop = FetchLoop(consumer, handler, max_buffered=100, max_buffered_bytes=10**6, commit_interval_s=60)  # type: ignore[arg-type]
    await loop.on_partitions_assigned({TP})
    return loop, consumer, asyncio.create_task(loop.run())


async def test_commit_never_passes_an_unfinished_earlier_record() -> None:
    release_first = asyncio.Event()

    async def handler(record: ConsumerRecord) -> None:
        if record.offset == 0:
            await release_first.wait()

    loop, consumer, running = await _loop_with(5, handler)
    await _until_done(loop, 4)
    await loop.commit()
    assert consumer.commits == [{TP: 0}]
    release_first.set()
    await _until_done(loop, 5)
    await loop.commit()
    assert consumer.commits[-1] == {TP: 5}
    loop.stop_fetching()
    await running


async def test_infrastructure_error_retries_the_same_record_until_it_succeeds() -> None:
    failures = {"left": 2}

    async def handler(record: ConsumerRecord) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RedisConnectionError("Redis is restarting")

    loop, _, running = await _loop_with(1, handler)
    await _until_done(loop, 1)
    assert loop.stats.done == 1 and loop.stats.infra_retries == 2
    loop.stop_fetching()
    await running


async def test_unexpected_error_stops_the_loop_loudly_without_committing_the_record() -> None:
    async def handler(record: ConsumerRecord) -> None:
        raise RuntimeError("a bug below the pipeline")

    loop, consumer, running = await _loop_with(1, handler)
    await asyncio.wait_for(running, timeout=5)
    assert isinstance(loop.fatal_error, RuntimeError)
    await loop.commit()
    assert consumer.commits == [{TP: 0}]


async def test_drain_cuts_off_a_record_whose_cleanup_fails_and_still_returns_in_time() -> None:
    async def handler(record: ConsumerRecord) -> None:
        if record.offset == 1:
            try:
                await asyncio.sleep(3600)
            finally:
                raise RedisConnectionError("cannot release the lease: Redis is down")

    loop, consumer, running = await _loop_with(2, handler)
    await _until_done(loop, 1)
    loop.stop_fetching()
    await running
    started = time.monotonic()
    cut_off = await loop.drain(0.2)
    assert time.monotonic() - started < 0.2 + CANCEL_GRACE_S + 1
    assert cut_off == 1
    assert consumer.commits[-1] == {TP: 1}


class RewindingConsumer(StandInConsumer):
    """Serves its records from a position that ``seek`` moves back; a paused partition gets nothing."""

    def __init__(self, records: list[ConsumerRecord]) -> None:
        super().__init__([])
        self._records = records
        self._position = 0
        self._paused = False

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        if self._paused or self._position >= len(self._records):
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        batch = self._records[self._position :]
        self._position = len(self._records)
        return {TP: batch}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._position = offset

    def pause(self, *tps: TopicPartition) -> None:
        self._paused = self._paused or TP in tps

    def resume(self, *tps: TopicPartition) -> None:
        self._paused = self._paused and TP not in tps


async def test_a_held_back_retry_record_goes_after_one_delay_even_if_its_due_time_keeps_receding() -> None:
    consumer = RewindingConsumer([_record(i) for i in range(3)])
    started = time.monotonic()
    dispatched: list[tuple[int, float]] = []

    async def handler(record: ConsumerRecord) -> None:
        dispatched.append((record.offset, time.monotonic() - started))

    # Every look at the head record says "0.3 s more" (a forged or skewed due time, capped at the delay).
    loop = FetchLoop(
        consumer,  # type: ignore[arg-type]
        handler,
        max_buffered=100,
        max_buffered_bytes=10**6,
        commit_interval_s=60,
        due_in_s=lambda record: 0.3 if record.offset == 0 else 0.0,
    )
    await loop.on_partitions_assigned({TP})
    task = asyncio.create_task(loop.run())
    try:
        await _until_done(loop, 3)
    finally:
        loop.stop_fetching()
        await task
    assert [offset for offset, _ in dispatched] == [0, 1, 2]  # nothing overtook the held record
    assert dispatched[0][1] >= 0.3
    assert dispatched[0][1] < 2.0  # one delay, not one per look
    assert loop.stats.held_back == 1
