"""The delayed retry schedule: where a message goes when its in-process retries run out, and when a
record of a retry topic is due.

GUARDQ_RETRY_SCHEDULE (``10s,1m,10m``) names one topic per step, ``<input>.retry.<step>``. A message whose
transient guard failures outlast the in-process retry budget takes the next step's topic; after the last
step it is dead-lettered. The worker consumes the retry topics beside the input topic and holds back a
retry partition until its head record is due (``FetchLoop`` pauses it), so no handler sleeps and no
partition waits for another's work.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka.structs import ConsumerRecord

from worker.config.settings import Settings
from worker.core.times import format_rfc3339
from worker.failures.envelope import H_ATTEMPTS, H_RETRY_HOP, carried_number, retry_due_epoch_s


@dataclass(frozen=True)
class Hop:
    """The next step of the schedule for one message: its topic, delay and due time (RFC 3339 UTC)."""

    number: int  # 1 for the first retry topic
    topic: str
    delay_s: float
    due_at: str


@dataclass(frozen=True)
class RetrySchedule:
    """The retry topics of one input topic, in order, with their delays."""

    topics: tuple[str, ...]
    delays_s: tuple[float, ...]
    parked_topic: str | None = None  # messages given a provisional verdict in an outage wait here

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(
            settings.retry_topics,
            settings.retry_delays_s,
            settings.parked_topic,
        )

    def is_parked(self, record: ConsumerRecord) -> bool:
        """``record`` came from the parked topic (guardq wrote it: its headers are believed)."""
        return self.parked_topic is not None and record.topic == self.parked_topic

    def park(self, record: ConsumerRecord) -> Hop:
        """Where a message given a provisional verdict goes: the parked topic, due at once, keeping the
        retry steps it has taken."""
        return Hop(self.hops_taken(record), str(self.parked_topic), 0.0, format_rfc3339(datetime.now(UTC)))

    @functools.cached_property
    def _steps(self) -> dict[str, int]:
        return {topic: step for step, topic in enumerate(self.topics)}

    def _step_of(self, topic: str) -> int | None:
        return self._steps.get(topic)

    def hops_taken(self, record: ConsumerRecord) -> int:
        """How many retry steps ``record`` has taken: 0 on the input topic, k on the k-th retry topic.
        Read from the topic it came from, never from headers a producer could set (a parked record's
        headers are guardq's own)."""
        if self.is_parked(record):
            return carried_number(list(record.headers or ()), H_RETRY_HOP)
        step = self._step_of(record.topic)
        return 0 if step is None else step + 1

    def carried_attempts(self, record: ConsumerRecord) -> int:
        """Guard calls already made for ``record`` on earlier hops (only retry-topic and parked records
        carry them)."""
        if self._step_of(record.topic) is None and not self.is_parked(record):
            return 0
        return carried_number(list(record.headers or ()), H_ATTEMPTS)

    def next_hop(self, record: ConsumerRecord, *, now: datetime | None = None) -> Hop | None:
        """Where ``record`` goes after its in-process retries ran out; None after the last step."""
        taken = self.hops_taken(record)
        if taken >= len(self.topics):
            return None
        delay_s = self.delays_s[taken]
        due = (now or datetime.now(UTC)) + timedelta(seconds=delay_s)
        return Hop(taken + 1, self.topics[taken], delay_s, format_rfc3339(due))

    def due_in_s(self, record: ConsumerRecord) -> float:
        """Seconds until ``record`` may be processed: 0 for input records and records already due.

        A due time further away than the topic's own delay (a skewed clock, a bad header) is capped at
        that delay, so no record can hold its partition longer than the schedule says."""
        step = self._step_of(record.topic)
        if step is None:
            return 0.0
        delay_s = self.delays_s[step]
        due_s = retry_due_epoch_s(list(record.headers or ()))
        if due_s is None:  # no usable header: the record's own timestamp plus the topic's delay
            due_s = record.timestamp / 1000 + delay_s if record.timestamp and record.timestamp > 0 else 0.0
        return max(0.0, min(due_s - time.time(), delay_s))
