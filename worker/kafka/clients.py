"""Kafka clients built from settings: connection/security options, producer, consumer, topic creation.

Broker facts that shape these choices (tansu, and Kafka in general):
- the idempotent producer and transactions are not available on every broker: guardq's guarantees rest on
  at-least-once delivery with idempotent results; the idempotent producer is used where it is granted
  (GUARDQ_KAFKA_IDEMPOTENCE, ``worker.kafka.connection``);
- ``end_offsets``/``seek_to_end`` are unreliable on tansu: use ``highwater`` after a fetch instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from worker.config.settings import Settings
from worker.kafka.connection import connection_options as connection_options
from worker.kafka.connection import idempotence

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno
MAX_PARTITION_FETCH_BYTES = 1024 * 1024


async def producer_for(settings: Settings, *, linger_ms: int = 5) -> AIOKafkaProducer:
    """``make_producer`` with GUARDQ_KAFKA_IDEMPOTENCE resolved against the broker."""
    return make_producer(settings, linger_ms=linger_ms, idempotent=await idempotence(settings))


def make_producer(settings: Settings, *, linger_ms: int = 5, idempotent: bool = False) -> AIOKafkaProducer:
    """A producer whose sends complete only when every in-sync replica has the record (acks=all),
    compressing with GUARDQ_KAFKA_COMPRESSION; a record over GUARDQ_KAFKA_MAX_MESSAGE_BYTES is refused
    before it is sent (``MessageSizeTooLargeError``), as the broker would refuse it. ``idempotent``
    (a broker that grants producer ids) keeps a resent batch from being written twice."""
    return AIOKafkaProducer(
        **connection_options(settings),
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=settings.kafka_max_message_bytes,
        request_timeout_ms=30_000,
        compression_type=settings.kafka_compression,
    )


def make_consumer(settings: Settings, *, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with manual commits; a dead member's partitions move within session timeout + ~4 s."""
    session_ms = int(settings.session_timeout_s * 1000)
    options: dict[str, Any] = {
        **connection_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(100, session_ms // 10),
        "max_poll_interval_ms": 300_000,
        # Left unset, it would equal the session timeout: too short for a commit at revoke in a slow cluster.
        "rebalance_timeout_ms": max(60_000, 3 * session_ms),
        "fetch_max_wait_ms": 100,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


def worker_topics(settings: Settings) -> list[str]:
    """Every topic guardq reads or writes."""
    return [
        settings.input_topic,
        settings.verdict_topic,
        settings.dlq_topic,
        *settings.retry_topics,
        settings.parked_topic,
    ]


# A retry topic keeps a record for its delay plus this long: a week to recover from an outage of the workers.
RETRY_RETENTION_MARGIN_S = 7 * 24 * 3600


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The configs guardq gives each topic it creates: every topic takes records as large as guardq sends
    (GUARDQ_KAFKA_MAX_MESSAGE_BYTES); the dead-letter and parked topics keep theirs for GUARDQ_DLQ_RETENTION
    (forever by default: no dead letter expires unseen); a retry topic keeps a record for its delay plus a
    week. The input and verdict topics keep the broker's retention: that is the producers' choice."""
    size = {"max.message.bytes": str(settings.kafka_max_message_bytes)}
    kept = size | {"retention.ms": str(settings.dlq_retention_ms), "cleanup.policy": "delete"}
    configs = dict.fromkeys([settings.input_topic, settings.verdict_topic], size)
    configs |= dict.fromkeys([settings.dlq_topic, settings.parked_topic], kept)
    for topic, delay_s in zip(settings.retry_topics, settings.retry_delays_s, strict=True):
        configs[topic] = size | {"retention.ms": str(int((delay_s + RETRY_RETENTION_MARGIN_S) * 1000))}
    return configs


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create missing guardq topics (with ``topic_configs``) and return their names. Retry and parked topics
    get the input topic's partition count; the replication factor is GUARDQ_TOPIC_REPLICATION, or
    min(3, brokers) when it is ``auto``."""
    admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = worker_topics(settings)
        if all(name in existing for name in names):
            return []  # the usual start: one metadata request, nothing described
        input_partitions = settings.topic_partitions
        if settings.input_topic in existing:
            described = await admin.describe_topics([settings.input_topic])
            input_partitions = len(described[0]["partitions"]) or settings.topic_partitions
        wanted = dict.fromkeys(
            [settings.input_topic, settings.verdict_topic, settings.dlq_topic], settings.topic_partitions
        )
        wanted |= dict.fromkeys([*settings.retry_topics, settings.parked_topic], input_partitions)
        replication = settings.topic_replication or min(3, len((await admin.describe_cluster())["brokers"]))
        configs = topic_configs(settings)
        missing = [
            NewTopic(name, count, replication, topic_configs=configs[name])
            for name, count in wanted.items()
            if name not in existing
        ]
        response = await admin.create_topics(missing)
        created = []
        for topic, code, *message in response.topic_errors:
            if code == TOPIC_ALREADY_EXISTS:
                continue  # another worker won the race
            if code != 0:
                detail = message[0] if message and message[0] else f"error code {code}"
                raise RuntimeError(f"could not create topic {topic}: {detail}")
            created.append(topic)
        return created
    finally:
        await admin.close()


async def wait_for_broker(settings: Settings, *, timeout_s: float) -> None:
    """Wait until the bootstrap servers answer metadata requests, or raise ``TimeoutError``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        admin = AIOKafkaAdminClient(**connection_options(settings), request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # any connection failure means "not yet"
            last = exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
    raise TimeoutError(f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout_s:.0f} s: {last}")
