"""The fetch loop's start window: buffered records beyond it wait as records, not as running handlers; a
handler that ends, or whose guard call is over, starts the next one in fetch order; a stop or a revocation
never starts a queued record, and what was never handled is never committed."""

from __future__ import annotations

import asyncio

from aiokafka.structs import ConsumerRecord

from tests.helpers import wait_until
from tests.test_fetch_loop_unit import TP, StandInConsumer, _record
from worker.core.startwindow import leave_start_window
from worker.kafka.fetchloop import FetchLoop


class Gate:
    """A handler that records which offsets started and holds each until it is let go."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self._release: dict[int, asyncio.Event] = {}

    async def __call__(self, record: ConsumerRecord) -> None:
        self.started.append(record.offset)
        await self._release.setdefault(record.offset, asyncio.Event()).wait()

    def let_go(self, offset: int) -> None:
        self._release.setdefault(offset, asyncio.Event()).set()


async def _window_loop(records: int, window: int, gate: Gate) -> tuple[FetchLoop, StandInConsumer]:
    consumer = StandInConsumer([_record(i) for i in range(records)])
    loop = FetchLoop(
        consumer,  # type: ignore[arg-type]
        gate,
        max_buffered=100,
        max_buffered_bytes=10**6,
        commit_interval_s=60,
        start_window=lambda: window,
    )
    await loop.on_partitions_assigned({TP})
    return loop, consumer


async def _started(gate: Gate, count: int) -> None:
    async def enough() -> bool:
        return len(gate.started) >= count

    await wait_until(enough, timeout_s=5, what=f"{count} handler(s) started")


async def test_records_beyond_the_window_wait_and_start_in_order_as_handlers_finish() -> None:
    gate = Gate()
    loop, consumer = await _window_loop(10, 3, gate)
    running = asyncio.create_task(loop.run())
    await _started(gate, 3)
    await asyncio.sleep(0.05)  # room for a wrong start to show
    assert gate.started == [0, 1, 2]
    assert loop.in_flight == 10  # all ten are buffered: they hold the watermark and count for backpressure
    gate.let_go(1)
    await _started(gate, 4)
    assert gate.started == [0, 1, 2, 3]
    for offset in range(10):
        gate.let_go(offset)
    await _started(gate, 10)
    assert gate.started == list(range(10))

    async def all_done() -> bool:
        return loop.stats.done == 10

    await wait_until(all_done, timeout_s=5, what="ten records done")
    await loop.commit()
    assert consumer.commits[-1] == {TP: 10}
    loop.stop_fetching()
    await running


async def test_a_stop_starts_no_queued_record_and_commits_only_what_finished() -> None:
    gate = Gate()
    loop, consumer = await _window_loop(6, 2, gate)
    running = asyncio.create_task(loop.run())
    await _started(gate, 2)
    loop.stop_fetching()
    await running
    gate.let_go(0)
    gate.let_go(1)
    cut_off = await loop.drain(timeout_s=5)
    assert cut_off == 0
    assert gate.started == [0, 1]  # the four queued records never reached the handler
    assert consumer.commits == [{TP: 2}]
    assert loop.in_flight == 0


async def test_a_revoked_partitions_queued_records_are_dropped_unhandled_and_uncommitted() -> None:
    gate = Gate()
    loop, consumer = await _window_loop(5, 2, gate)
    running = asyncio.create_task(loop.run())
    await _started(gate, 2)
    await loop.on_partitions_revoked({TP})
    assert loop.in_flight == 2  # three queued records dropped at once; the two running are cancelled

    async def settled() -> bool:
        return loop.in_flight == 0 and not loop.partition_lags()

    await wait_until(settled, timeout_s=5, what="the revoked partition forgotten")
    assert gate.started == [0, 1]
    assert all(commit[TP] == 0 for commit in consumer.commits)  # nothing finished: nothing passed
    loop.stop_fetching()
    await running


async def test_a_handler_past_its_guard_call_lets_the_next_record_start_before_it_ends() -> None:
    started: list[int] = []
    finish = asyncio.Event()

    async def handler(record: ConsumerRecord) -> None:
        started.append(record.offset)
        leave_start_window()  # its guard call is over; storing and publishing take a while yet
        await finish.wait()

    consumer = StandInConsumer([_record(i) for i in range(5)])
    loop = FetchLoop(
        consumer,  # type: ignore[arg-type]
        handler,
        max_buffered=100,
        max_buffered_bytes=10**6,
        commit_interval_s=60,
        start_window=lambda: 2,
    )
    await loop.on_partitions_assigned({TP})
    running = asyncio.create_task(loop.run())

    async def all_started() -> bool:
        return len(started) == 5

    await wait_until(all_started, timeout_s=5, what="every record started though none ended")
    assert started == [0, 1, 2, 3, 4]
    assert loop.stats.done == 0
    finish.set()

    async def all_done() -> bool:
        return loop.stats.done == 5

    await wait_until(all_done, timeout_s=5, what="five records done")
    loop.stop_fetching()
    await running
