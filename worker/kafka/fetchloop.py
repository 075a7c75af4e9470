"""The fetch loop: many records in flight (several per partition), bounded buffering, watermark commits.

When is an offset committed? Only through ``FetchLoop.commit``: per partition, the watermark of
``PartitionOffsets`` (everything below it is done), periodically, on revoke and at stop. Records of a
revoked partition are dropped (their tasks cancelled, never committed); redelivery to the new owner is
absorbed by idempotency.

A fetch that fails (a batch aiokafka cannot decode, a broker error) never stops the loop: every partition
is rewound to the record after the last one dispatched (a failed ``getmany`` may already have moved past
records it then dropped), and each is read once with guardq's own reader (``worker.kafka.salvage``), which
hands over what decodes and marks the rest ``Undecodable``, so the loop moves past it. Only a fetch
refused for lack of authorisation stops the worker: that is configuration, not data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from worker.core.backoff import Backoff, until_available
from worker.core.errors import one_line
from worker.kafka.codecs import DEFAULT_INFLATE_CAP_BYTES
from worker.kafka.inflight import FetchStats, InFlight, PartitionWork, partition_lags
from worker.kafka.records import record_size, tracked_offset
from worker.kafka.salvage import FATAL_FETCH_ERRORS, first_offset, read_partition
from worker.telemetry.metrics import PartitionLag

log = logging.getLogger(__name__)

Handler = Callable[[ConsumerRecord], Awaitable[object]]

INFRA_BACKOFF_INITIAL_S = 0.2
INFRA_BACKOFF_MAX_S = 10.0
CANCEL_GRACE_S = 5.0  # how long cancelled records may take to unwind at shutdown
COMMIT_DEADLINE_S = 10.0  # a commit at revoke or stop gives up after this
FETCH_BACKOFF_MIN_S = 0.2
FETCH_BACKOFF_MAX_S = 5.0
# Fetching resumes once the buffered records fall to this share of the record cap. The records fetched
# then all start in one turn of the event loop, a pause of it while guard replies wait: a fifth of the cap
# holds it less than half as long as a half did, and still shares one Redis round trip for the claims
# (measured at a cap of 1,000: lognormal round +2 to +10 % in four paired runs, instant guard unchanged).
RESUME_AT = 0.8
# Records buffered per guard call the limiter lets through (at least BUFFER_FLOOR, at most
# GUARDQ_MAX_BUFFERED): enough to keep every slot fed between fetches, few enough that a resumed fetch
# starts in a short turn of the event loop and that few records hold a lease while they wait for a slot.
# Against a flat 1,000 (measured, paired): lognormal +3 % (call latency 103 ms instead of 105), instant
# guard at cap 64 +12 %, auto unchanged.
BUFFER_PER_SLOT = 4
BUFFER_FLOOR = 256


class FetchLoop(ConsumerRebalanceListener):  # type: ignore[misc]
    """Feeds records to ``handler`` concurrently and commits only what is done."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: Handler,
        *,
        max_buffered: int,
        max_buffered_bytes: int,
        commit_interval_s: float,
        slots: Callable[[], int] | None = None,
        waiting: Callable[[], int] | None = None,
        hold: Callable[[], bool] | None = None,
        held_topics: Callable[[], frozenset[str]] | None = None,
        due_in_s: Callable[[ConsumerRecord], float] | None = None,
        salvage_max_bytes: int = 1024 * 1024,
        inflate_cap_bytes: int = DEFAULT_INFLATE_CAP_BYTES,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._max_buffered = max_buffered
        self._slots = slots
        self._waiting = waiting
        self._max_bytes = max_buffered_bytes
        self._commit_interval_s = commit_interval_s
        self._hold = hold or (lambda: False)
        self._held_topics = held_topics or (lambda: frozenset())
        self._due_in_s = due_in_s or (lambda record: 0.0)
        self._parts: dict[TopicPartition, PartitionWork] = {}
        self._paused = False
        self._stopping = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._fatal: BaseException | None = None
        self._last_poll_at = 0.0
        self._salvage_max_bytes = salvage_max_bytes
        self._inflate_cap = inflate_cap_bytes
        self._fetch_backoff = Backoff(FETCH_BACKOFF_MIN_S, FETCH_BACKOFF_MAX_S)
        self._flight = InFlight()
        self.stats = FetchStats()

    @property
    def fatal_error(self) -> BaseException | None:
        """The error that stopped the loop, if one did."""
        return self._fatal

    @property
    def in_flight(self) -> int:
        """Fetched records not finished yet."""
        return self._flight.count

    @property
    def paused(self) -> bool:
        """True while every partition is paused (backpressure or an open circuit)."""
        return self._paused

    @property
    def last_poll_at(self) -> float:
        """Loop time of the last fetch (``run`` polls at least every 100 ms while it is alive)."""
        return self._last_poll_at

    def partition_lags(self) -> list[PartitionLag]:
        """Per assigned partition: the done watermark, the last commit and the highwater mark."""
        return partition_lags(self._consumer, self._parts)

    def stop_fetching(self) -> None:
        """Ask ``run`` to return; in-flight records keep going (see ``drain``)."""
        self._stopping.set()

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch and dispatch until ``stop_fetching`` is called or a record fails fatally."""
        while not self._stopping.is_set():
            self._last_poll_at = asyncio.get_running_loop().time()
            self._apply_backpressure()
            self._apply_topic_holds()
            room = max(1, self._record_cap() - self._flight.count)
            try:
                batches = await self._consumer.getmany(timeout_ms=100, max_records=room)
            except FATAL_FETCH_ERRORS:
                raise
            except Exception as exc:  # a record or a broker error: never a reason to stop
                await self._recover(exc)
                continue
            self._fetch_backoff.reset()
            for tp, records in batches.items():
                part = self._parts.get(tp)
                if part is not None:  # else revoked while the fetch was under way: the new owner reads these
                    self._take(tp, part, records)
            self._resume_due()

    def _take(self, tp: TopicPartition, part: PartitionWork, records: Sequence[ConsumerRecord]) -> bool:
        """Dispatch ``records`` in order; False when one had to wait (its partition is held back)."""
        for record in records:
            # A record held back once goes when its time comes: the hold is never renewed, so a due
            # time far in the future (a skewed clock, a forged header) costs one delay at most.
            wait_s = 0.0 if record.offset == part.held_offset else self._due_in_s(record)
            if wait_s > 0:
                self._hold_back(tp, part, record.offset, wait_s)
                return False
            self._dispatch(part, record)
        return True

    # -- a fetch that failed ----------------------------------------------------------------------

    async def _recover(self, error: Exception) -> None:
        """After a failed fetch: rewind every partition to the record after its last dispatched one and
        read each once with guardq's own reader; back off (with jitter) when that moved nothing."""
        self.stats.fetch_errors += 1
        log.warning(
            "fetch failed (%s: %s); reading the partitions with guardq's own reader",
            type(error).__name__,
            one_line(str(error), 300),
        )
        moved = False
        for tp in list(self._parts):
            try:
                moved |= await self._salvage(tp)
            except (KafkaError, IllegalStateError, OSError, TimeoutError) as exc:
                log.warning("reading %s/%d failed: %s: %s", tp.topic, tp.partition, type(exc).__name__, exc)
        if moved:
            self._fetch_backoff.reset()
            return
        await asyncio.sleep(self._fetch_backoff.next_s())

    async def _salvage(self, tp: TopicPartition) -> bool:
        """Rewind ``tp`` and, unless it is paused, dispatch what one raw fetch of it holds. True when
        records were dispatched (or one made the partition wait)."""
        part = self._parts.get(tp)
        if part is None or tp not in self._consumer.assignment():
            return False
        start = part.offsets.next_offset
        if start is None:
            start = await first_offset(self._consumer, tp)
        if self._parts.get(tp) is not part:
            return False  # revoked (and maybe reassigned) meanwhile
        self._consumer.seek(tp, start)  # drops whatever the failed fetch had drained from ``tp``
        room = self._record_cap() - self._flight.count
        if self._paused or not self._flows_alone(part) or room <= 0:
            return False
        records = await read_partition(
            self._consumer, tp, start, max_bytes=self._salvage_max_bytes, inflate_cap=self._inflate_cap
        )
        if not records or self._parts.get(tp) is not part:
            return False
        if self._take(tp, part, records[:room]) and part.offsets.next_offset is not None:
            self._consumer.seek(tp, part.offsets.next_offset)
        return True

    async def commit_periodically(self) -> None:
        """Commit watermarks every ``commit_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._commit_interval_s)
            await self.commit()

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for in-flight records, cancel the rest, commit. Returns how many were cut off."""
        tasks = [task for part in self._parts.values() for task in part.tasks]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
        await self.commit_within(COMMIT_DEADLINE_S)
        return len(pending)

    async def commit_within(self, timeout_s: float, only: set[TopicPartition] | None = None) -> None:
        """``commit``, but give up after ``timeout_s`` (a broker outage must not hold up a stop or a rebalance)."""
        try:
            async with asyncio.timeout(timeout_s):  # keeps a cancellation, unlike 3.11's wait_for
                await self.commit(only)
        except TimeoutError:
            log.warning(
                "commit did not finish within %g s; the uncommitted records will be redelivered", timeout_s
            )

    # -- delayed retry partitions -----------------------------------------------------------------

    def _hold_back(self, tp: TopicPartition, part: PartitionWork, offset: int, wait_s: float) -> None:
        """The head record of ``tp`` is not due yet: pause the partition and rewind to the record, so it
        (and everything behind it) is fetched again once due. Other partitions keep flowing."""
        part.due_at = asyncio.get_running_loop().time() + wait_s
        part.held_offset = offset
        self.stats.held_back += 1
        self._consumer.seek(tp, offset)
        self._consumer.pause(tp)

    def _resume_due(self) -> None:
        """Resume held-back partitions whose head record is due (unless every partition is paused)."""
        now = asyncio.get_running_loop().time()
        due = [tp for tp, part in self._parts.items() if part.due_at is not None and part.due_at <= now]
        for tp in due:
            self._parts[tp].due_at = None
        if due and not self._paused:
            assignment = self._consumer.assignment()
            self._consumer.resume(*[tp for tp in due if tp in assignment and not self._parts[tp].topic_held])

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self, part: PartitionWork, record: ConsumerRecord) -> None:
        if part.offsets.seen(record.offset):
            return  # already dispatched in this assignment (a refetch after a seek)
        tracked = tracked_offset(record)
        part.offsets.add(tracked)
        size = record_size(record)
        self._flight.add(size)
        self.stats.fetched += 1
        self.stats.fetched_by_topic[record.topic] = self.stats.fetched_by_topic.get(record.topic, 0) + 1
        self.stats.peak_buffered = max(self.stats.peak_buffered, self._flight.count)
        task = asyncio.create_task(
            self._process(record), name=f"record:{record.topic}/{record.partition}@{record.offset}"
        )
        part.tasks.add(task)
        task.add_done_callback(lambda done: self._finished(part, tracked, size, done))

    async def _process(self, record: ConsumerRecord) -> None:
        """Handle ``record``; while a service around us (not the message) fails, keep it uncommitted and
        try again. A bug or a fatal error stops the worker; a cancellation stays one."""

        def report(exc: Exception, delay_s: float) -> None:
            self.stats.infra_retries += 1
            where = f"{record.topic}/{record.partition}@{record.offset}"
            log.warning("record %s: %s: %s; retrying in %.1f s", where, type(exc).__name__, exc, delay_s)

        backoff = Backoff(INFRA_BACKOFF_INITIAL_S, INFRA_BACKOFF_MAX_S)
        await until_available(lambda: self._handler(record), backoff=backoff, on_retry=report)

    def _finished(self, part: PartitionWork, offset: int, size: int, task: asyncio.Task[None]) -> None:
        part.tasks.discard(task)
        self._flight.finished(size)
        if task.cancelled():
            return  # dropped (revoked or cut off at shutdown): never committed
        error = task.exception()
        if error is not None:
            if self._fatal is None:
                self._fatal = error
                log.error("stopping: %s: %s", type(error).__name__, error)
            self._stopping.set()
            return
        part.offsets.done(offset)
        self.stats.done += 1
        self._apply_backpressure()

    def _apply_backpressure(self) -> None:
        """Pause every assigned partition while too much is buffered (or ``hold()`` is true); resume below
        ``RESUME_AT`` of the record cap and half of the byte cap."""
        held = self._hold()  # the guard's circuit is open: fetch nothing until it closes
        cap = self._record_cap()
        over = held or self._flight.count >= cap or self._flight.bytes >= self._max_bytes
        under = (
            not held and self._flight.count <= cap * RESUME_AT and self._flight.bytes <= self._max_bytes // 2
        )
        if over and not self._paused:
            self._paused = True
            self.stats.pauses += 1
            self._consumer.pause(*self._assigned())
        elif under and self._paused:
            self._paused = False
            self._consumer.resume(*[tp for tp in self._assigned() if self._flows_alone(self._parts[tp])])

    def _record_cap(self) -> int:
        """How many unfinished records may be buffered now: ``BUFFER_PER_SLOT`` per guard call allowed in
        flight (``slots``), at least ``BUFFER_FLOOR``, plus one per guard call waiting out a retry's backoff
        (``waiting``: it holds no slot; counted in, 5 % of 503s at cap 64 left three quarters of the
        buffer asleep and the guard idle), at most GUARDQ_MAX_BUFFERED."""
        if self._slots is None:
            return self._max_buffered
        asleep = self._waiting() if self._waiting is not None else 0
        return min(self._max_buffered, max(BUFFER_FLOOR, BUFFER_PER_SLOT * self._slots()) + asleep)

    @staticmethod
    def _flows_alone(part: PartitionWork) -> bool:
        """Nothing of its own holds this partition back (a due time, a held topic)."""
        return part.due_at is None and not part.topic_held

    def _apply_topic_holds(self) -> None:
        """Pause the partitions of held topics; resume those whose topic is no longer held."""
        held = self._held_topics()
        assignment = self._consumer.assignment()
        for tp, part in self._parts.items():
            if (tp.topic in held) == part.topic_held:
                continue
            part.topic_held = not part.topic_held
            if tp not in assignment:
                continue
            if part.topic_held:
                self._consumer.pause(tp)
            elif not self._paused and part.due_at is None:
                self._consumer.resume(tp)

    def _assigned(self) -> list[TopicPartition]:
        """Our partitions the consumer really holds: pausing an unassigned partition raises."""
        assignment = self._consumer.assignment()
        return [tp for tp in self._parts if tp in assignment]

    # -- commits and rebalances -------------------------------------------------------------------

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the watermark of each (or each given) partition that moved since its last commit."""
        async with self._commit_lock:
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, part in self._parts.items():
                mark = part.offsets.committable()
                if (only is None or tp in only) and mark is not None and mark != part.committed:
                    offsets[tp] = OffsetAndMetadata(mark, "")
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                log.warning("commit failed (%s: %s); will retry", type(exc).__name__, exc)
                return
            for tp, meta in offsets.items():
                if tp in self._parts:
                    self._parts[tp].committed = meta.offset

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is done for the revoked partitions, then drop their unfinished work."""
        await self.commit_within(COMMIT_DEADLINE_S, only=set(revoked))
        for tp in revoked:
            part = self._parts.pop(tp, None)
            if part is None:
                continue
            for task in part.tasks:
                task.cancel()
            if part.tasks:
                log.info("revoked %s: dropped %d unfinished record(s)", tp, len(part.tasks))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start tracking newly assigned partitions (paused too if the loop is paused)."""
        for tp in assigned:
            self._parts.setdefault(tp, PartitionWork())
        if self._paused and assigned:
            self._consumer.pause(*assigned)
        self._apply_topic_holds()
        log.info("assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
