"""A worker SIGKILLed while messages wait in a retry topic: after a restart they still complete, at their
due time (not earlier), with attempts counted across the kill, and nothing is dead-lettered."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    collect,
    publish,
    spawn_worker,
    stored_verdicts,
    wait_for_verdicts,
    wait_until,
)
from worker.config.settings import Settings
from worker.failures.envelope import DeadLetterEnvelope
from worker.kafka import clients as kafka

pytestmark = pytest.mark.integration

DELAY_S = 8.0


async def committed_offsets(settings: Settings, topic: str, partitions: list[int]) -> dict[int, int]:
    """The consumer group's committed offsets of ``topic`` (tansu needs the partitions named)."""
    admin = AIOKafkaAdminClient(**kafka.connection_options(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            settings.group_id, partitions=[TopicPartition(topic, p) for p in partitions]
        )
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def test_worker_killed_while_messages_wait_in_retry_topic_completes_them_after_restart(
    make_settings: SettingsFactory, guard_sim: GuardSim, tmp_path: Path
) -> None:
    # Each fails twice (the whole in-process budget), then succeeds: exactly one retry hop. Their 16
    # failures in a row, over 8 texts, would open the default breaker (5) and pause instead: a tolerant
    # one keeps this test about the retry topic.
    settings = make_settings(guard_attempts=2, retry_schedule=f"{DELAY_S:g}s", breaker_failures=50)
    documents = [{"id": f"w{i}", "text": f"waits in the retry topic {i} [[sim:503x2]]"} for i in range(8)]
    ids = [d["id"] for d in documents]
    await kafka.ensure_topics(settings)
    log = str(tmp_path / "worker.log")
    first = spawn_worker(settings, log)
    try:
        sent = await publish(settings, documents)
        hops = await collect(settings, settings.retry_topics[0], count=len(ids), timeout_s=60)
        assert len(hops) == len(ids), Path(log).read_text()[-2000:]
        # Kill only once the input offsets are committed: the messages now live in the retry topic alone.
        ends = {}
        for published in sent:
            ends[published.partition] = max(ends.get(published.partition, 0), published.offset + 1)

        async def input_committed() -> bool:
            committed = await committed_offsets(settings, settings.input_topic, list(ends))
            return all(committed.get(partition, -1) >= end for partition, end in ends.items())

        await wait_until(input_committed, timeout_s=20, what="the input offsets to be committed")
        killed_at = time.time()
    finally:
        first.kill()
        first.wait(timeout=10)
    due = {r.key.decode(): DeadLetterEnvelope.from_headers(r.headers).due_at for r in hops}
    due_s = {
        key: time.mktime(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        for key, value in due.items()
        if value
    }
    assert len(due_s) == len(ids)
    assert await stored_verdicts(settings, ids) == {}

    second = spawn_worker(settings, log)
    try:
        stored = await wait_for_verdicts(settings, ids, timeout_s=60)
        finished_at = time.time()

        async def all_published() -> bool:
            return len(await collect(settings, settings.verdict_topic, count=len(ids), timeout_s=5)) >= len(
                ids
            )

        await wait_until(all_published, timeout_s=30, what="every verdict on the verdict topic")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, Path(log).read_text()[-2000:]
    assert set(stored) == set(ids)
    for message_id, verdict in stored.items():
        assert verdict["attempts"] == 3, message_id  # 2 before the kill (carried in headers), 1 after
        processed = (
            time.mktime(time.strptime(verdict["processed_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        )
        assert processed >= due_s[message_id] - 1  # never before its due time (1 s: whole-second parsing)
    # "On time": due times lie DELAY_S after the first failures; the restart costs a group rejoin at most.
    assert finished_at - max(due_s.values()) < settings.session_timeout_s + 10
    assert finished_at - killed_at < DELAY_S + settings.session_timeout_s + 10
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=1) == []
