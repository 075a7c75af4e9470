"""What the chaos soak (``bench.chaos``) observed and what it concludes: the ids seen on the verdict and
dead-letter topics, the final verdicts in Redis, the group's committed offsets, and the figures written to
bench/results/chaos.json."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.config.settings import Settings
from worker.kafka import clients as kafka
from worker.store.keys import RedisKeys


@dataclass
class Observed:
    """What the soak has seen on the verdict and dead-letter topics so far."""

    processed_at: dict[str, set[str]] = field(default_factory=dict)  # final verdict id -> distinct documents
    provisional: set[str] = field(default_factory=set)  # ids given a provisional verdict
    verdict_records: int = 0
    dead_reasons: dict[str, list[str]] = field(default_factory=dict)  # dead-lettered id -> reasons
    dead_records: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    # Verdict records after each event, so republished verdicts can be traced to the fault behind them.
    phase: str = "start"
    records_by_phase: Counter[str] = field(default_factory=Counter)
    retry_records: Counter[str] = field(default_factory=Counter)  # retry topic -> records

    def finished(self) -> int:
        """Ids with a verdict or a dead letter."""
        return len(self.processed_at.keys() | self.dead_reasons.keys())


async def committed_offsets(settings: Settings, partition_count: int) -> int:
    """The group's committed offsets on the input topic, summed over partitions: at a kill, how much
    finished work the next worker will not be handed again."""
    admin = AIOKafkaAdminClient(**kafka.connection_options(settings))
    await admin.start()
    try:
        partitions = [TopicPartition(settings.input_topic, p) for p in range(partition_count)]
        offsets = await admin.list_consumer_group_offsets(settings.group_id, partitions=partitions)
        return sum(max(0, meta.offset) for meta in offsets.values())
    finally:
        await admin.close()


async def stored_ids(redis_url: str, prefix: str, ids: list[str]) -> set[str]:
    """The ids among ``ids`` that have a final verdict in Redis (a provisional one does not count)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        found: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            values = await client.mget([RedisKeys(prefix).verdict(i) for i in chunk])
            found.update(
                i
                for i, value in zip(chunk, values, strict=True)
                if value is not None and not json.loads(value).get("provisional")
            )
        return found
    finally:
        await client.aclose()


def summarize(
    published: list[str], stored: set[str], observed: Observed, guard: dict[str, Any], elapsed_s: float
) -> dict[str, Any]:
    """The soak's figures, as written to bench/results/chaos.json."""
    dead = set(observed.dead_reasons)
    reasons = Counter(reason for found in observed.dead_reasons.values() for reason in found)
    on_topic = set(observed.processed_at)
    count = max(1, len(published))
    return {
        "published": len(published),
        "verdict_ids_in_redis": len(stored),
        "verdict_ids_on_topic": len(on_topic),
        "verdict_records_on_topic": observed.verdict_records,
        "verdict_records_after_event": dict(observed.records_by_phase),
        "retry_topic_records": dict(observed.retry_records),
        "lost": len(set(published) - stored - dead),
        "lost_sample": sorted(set(published) - stored - dead)[:20],
        "stored_but_not_on_topic": len(stored - on_topic),
        "duplicate_verdicts": sum(1 for found in observed.processed_at.values() if len(found) > 1),
        "dead_letters": len(dead),
        "dead_letter_records": observed.dead_records,
        "dead_letters_by_reason": dict(reasons),
        "verdict_and_dead_letter": len(dead & stored),
        "provisional_verdicts": len(observed.provisional),
        "provisional_without_final": len(observed.provisional - on_topic - dead),
        "success_rate": round(len(stored) / count, 5),
        "guard_calls": guard.get("requests", 0),
        "guard_calls_per_published": round(guard.get("requests", 0) / count, 3),
        "guard_faults": guard.get("faults", {}),
        "elapsed_s": round(elapsed_s, 1),
        "events": observed.events,
    }


def print_summary(result: dict[str, Any]) -> None:
    """The figures as a short table."""
    rows = [
        ("published", result["published"]),
        ("verdict ids in Redis", result["verdict_ids_in_redis"]),
        (
            "verdict ids on topic",
            f"{result['verdict_ids_on_topic']} ({result['verdict_records_on_topic']} records)",
        ),
        ("retry topic records", result["retry_topic_records"] or 0),
        ("lost", result["lost"]),
        ("stored, not on topic", result["stored_but_not_on_topic"]),
        ("duplicate verdicts", result["duplicate_verdicts"]),
        (
            "provisional verdicts",
            f"{result['provisional_verdicts']} ({result['provisional_without_final']} without a final one)",
        ),
        ("dead letters", f"{result['dead_letters']} {result['dead_letters_by_reason'] or ''}"),
        ("success rate", f"{result['success_rate']:.4f}"),
        ("guard calls", f"{result['guard_calls']} ({result['guard_calls_per_published']} per published)"),
        ("guard faults", result["guard_faults"]),
        ("elapsed", f"{result['elapsed_s']} s"),
    ]
    for name, value in rows:
        print(f"{name:<24}{value}")
