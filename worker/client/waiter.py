"""One reader of the verdict topic shared by every ``Publisher.moderate()`` of a publisher: it follows the
topic from its current end and hands each awaited verdict to the calls waiting for that id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from worker.config.settings import Settings
from worker.core.verdict import ProvisionalVerdict, Verdict, parse_verdict
from worker.kafka import clients as kafka
from worker.kafka.reading import assign_all, seek_to_current_end

log = logging.getLogger(__name__)

AnyVerdict = Verdict | ProvisionalVerdict

# A reader that fails (the broker went away) tries again after this long; the calls keep waiting.
READ_RETRY_S = 1.0


@dataclass(eq=False)
class Expected:
    """A call waiting for one id's verdict: of its content (a digest), final only or not."""

    message_id: str
    content_sha256: str
    final_only: bool
    verdict: asyncio.Future[AnyVerdict]

    def accepts(self, verdict: AnyVerdict) -> bool:
        """Whether ``verdict`` answers this call: its content (a reused id's verdict is not ours) and its
        kind (a provisional verdict only when the call takes one)."""
        if verdict.content_sha256 and verdict.content_sha256 != self.content_sha256:
            return False
        return not (self.final_only and verdict.provisional)


class VerdictWaiter:
    """Reads the verdict topic from its end (as of ``start``) and settles the calls that wait for an id."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._waiting: dict[str, list[Expected]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Position at the end of every partition, then read in the background: a verdict published
        after ``start`` returns is seen."""
        consumer = kafka.make_consumer(self._settings, group_id=None, fetch_max_wait_ms=50)
        try:
            await consumer.start()
            tps = await assign_all(consumer, self._settings.verdict_topic)
            await seek_to_current_end(consumer, tps)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(consumer), name="guardq-verdict-reader")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def expect(self, message_id: str, content_sha256: str, *, final_only: bool) -> Expected:
        """Register a call waiting for ``message_id``; ``forget`` it when done."""
        expected = Expected(
            message_id, content_sha256, final_only, asyncio.get_running_loop().create_future()
        )
        self._waiting.setdefault(message_id, []).append(expected)
        return expected

    def forget(self, expected: Expected) -> None:
        calls = self._waiting.get(expected.message_id, [])
        if expected in calls:
            calls.remove(expected)
        if not calls:
            self._waiting.pop(expected.message_id, None)

    @property
    def waiting(self) -> int:
        """Calls waiting now."""
        return sum(len(calls) for calls in self._waiting.values())

    def offer(self, verdict: AnyVerdict) -> None:
        """Settle every waiting call that ``verdict`` answers."""
        for expected in self._waiting.get(verdict.id, []):
            if not expected.verdict.done() and expected.accepts(verdict):
                expected.verdict.set_result(verdict)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            except Exception as exc:  # the broker went away: keep the calls waiting, try again
                log.warning("reading %s failed (%r); retrying", self._settings.verdict_topic, exc)
                await asyncio.sleep(READ_RETRY_S)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        self._take(record.key, record.value)
                    except Exception:  # no record of the topic may stop the reader every call waits on
                        log.exception("a record of %s could not be read", self._settings.verdict_topic)

    def _take(self, key: bytes | None, value: bytes | None) -> None:
        # The record key is the id: most verdicts on a shared topic are someone else's and are not parsed.
        if key is not None and key.decode("utf-8", errors="replace") not in self._waiting:
            return
        if value is None:
            return
        try:
            verdict = parse_verdict(value)
        except ValueError as exc:
            log.warning("a record of %s is not a verdict: %s", self._settings.verdict_topic, exc)
            return
        self.offer(verdict)
