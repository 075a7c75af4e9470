"""One delivery of one record as the pipeline carries it (``Delivery``), and what became of it (``Outcome``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import Span


class Outcome(enum.Enum):
    """What became of one message."""

    MODERATED = "moderated"  # guard called, verdict stored and published
    DUPLICATE = "duplicate"  # a verdict was already stored: re-published, no guard call
    DEAD_LETTERED = "dead_lettered"  # bad input or a guard failure: sent to the DLQ with a reason
    RETRY_SCHEDULED = "retry_scheduled"  # transient failures outlasted the retries: sent to a retry topic
    PARKED = "parked"  # guard outage under a fallback policy: provisional verdict given, parked for later


@dataclass
class Delivery:
    """One delivery of one record, and what every step of its handling needs: read once, at the start."""

    record: ConsumerRecord
    span: Span
    started: float  # monotonic time the handling began
    hops: int  # retry steps taken: 0 on the input topic, k on the k-th retry topic
    carried: int  # guard calls made for it on earlier hops
    force: str | None  # the token of a forced replay (`guardq dlq replay --force`), if it carries one
    message_id: str | None = None  # once the value parsed

    @property
    def where(self) -> str:
        return f"{self.record.topic}/{self.record.partition}@{self.record.offset}"
