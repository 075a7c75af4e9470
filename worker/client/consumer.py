"""``VerdictConsumer``: reading the verdict topic in a consumer group, each id's verdict once.

The worker publishes at least once: a redelivered message republishes its stored verdict, and during a
guard outage an id may get a provisional verdict and later its final one. This consumer drops the repeats
it remembers (the last ``remember`` ids), so a caller sees a provisional verdict (maybe), then the final
one, and a final one made anew (`guardq dlq replay --force`) again. Offsets are committed by ``commit()``, after the
caller has acted on what it was given: a crash before it means those verdicts come again (act idempotently).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

from aiokafka import AIOKafkaConsumer

from worker.client.options import settings_from_keywords
from worker.client.waiter import AnyVerdict
from worker.config.settings import Settings
from worker.core.verdict import parse_verdict
from worker.kafka import clients as kafka


class SeenVerdicts:
    """What the last ``remember`` ids have had: nothing yet, a provisional verdict, or a final verdict
    (and when it was made: a forced replay's re-moderation makes a new one, a redelivery repeats it)."""

    def __init__(self, remember: int) -> None:
        self._remember = remember
        self._final_at: OrderedDict[str, str | None] = OrderedDict()  # None: provisional only

    def first(self, verdict: AnyVerdict) -> bool:
        """Whether ``verdict`` is news, and records it: an id's first verdict; its first final one after a
        provisional one; a final one made anew (``processed_at`` differs). A provisional verdict after a
        final one, or a verdict republished as it was, is not."""
        known = verdict.id in self._final_at
        made_at = self._final_at.get(verdict.id)
        news = not known if verdict.provisional else made_at != verdict.processed_at
        if news:
            self._final_at[verdict.id] = None if verdict.provisional else verdict.processed_at
        if known or news:
            self._final_at.move_to_end(verdict.id)
        while len(self._final_at) > self._remember:
            self._final_at.popitem(last=False)
        return news


class VerdictConsumer:
    """Yields verdicts of the verdict topic in a consumer group, each id's once (see the module).

    Usage::

        async with VerdictConsumer("kafka:9092", group_id="my-service") as verdicts:
            async for verdict in verdicts:
                act_on(verdict)
                await verdicts.commit()
    """

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:9092",
        *,
        group_id: str,
        topic: str = "moderation.verdicts",
        remember: int = 100_000,
        **options: str | int | None,
    ) -> None:
        settings = settings_from_keywords(
            "VerdictConsumer", {"bootstrap": bootstrap, "verdict_topic": topic, **options}
        )
        self._init(settings, group_id, remember)

    def _init(self, settings: Settings, group_id: str, remember: int) -> None:
        self._settings = settings
        self._group_id = group_id
        self._seen = SeenVerdicts(remember)
        self._consumer: AIOKafkaConsumer | None = None
        self.skipped = 0  # records that were not verdicts

    @classmethod
    def from_env(
        cls, *, group_id: str, env: Mapping[str, str] | None = None, remember: int = 100_000
    ) -> VerdictConsumer:
        """A consumer configured by the worker's variables (GUARDQ_KAFKA_*, GUARDQ_VERDICT_TOPIC)."""
        consumer = cls.__new__(cls)
        consumer._init(Settings.load(os.environ if env is None else env), group_id, remember)
        return consumer

    async def __aenter__(self) -> VerdictConsumer:
        consumer = kafka.make_consumer(self._settings, group_id=self._group_id)
        consumer.subscribe([self._settings.verdict_topic])
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aiter__(self) -> AsyncIterator[AnyVerdict]:
        consumer = self._started()
        async for record in consumer:
            try:
                verdict = parse_verdict(record.value or b"")
            except ValueError:
                self.skipped += 1
                continue
            if self._seen.first(verdict):
                yield verdict

    async def commit(self) -> None:
        """Commit what has been yielded so far."""
        await self._started().commit()

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("VerdictConsumer used outside 'async with'")
        return self._consumer
